"""Stage 1 at real vocabulary size: what ranking the classes costs, and where the target lands, as
the vocabulary grows from the world's classes to every usable emoji name and to 1,000 names.

    python benchmarks/stage1.py --zoo ~/.cache/invertune-toolbox/zoos/dev               # 4 members
    python benchmarks/stage1.py --zoo ZOO --members 6 --sizes 200,all,1000 --docs docs

Members are the zoo's first backdoored and clean members of the preset (ViT by default), read from
its manifest. A vocabulary of size N is the world's own classes (the target among them), then the
other usable emoji names of the world's catalogue (``all``: every one), then ImageNet-1K names
(open_clip's) up to N: names the model never saw are distractors, as a user's long class list is.
Stage 1 runs with the default settings (the untargeted screen, then the race on its top
``max_race_classes``); the table gives its seconds and the true target's rank. Timings taken while
anything else runs on the machine are not timings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import toolbox
from invertune_plugin.identify import IdentifyConfig, identify
from toolbox.results import provenance, write_page
from toolbox.zeroshot import ZeroShotHead
from toolbox.zoo.build import read_manifest, world_of
from toolbox.zoo.spec import DEFAULT_WORLD


def extra_names(have: list[str]) -> tuple[list[str], list[str]]:
    """Names beyond the world's classes: the rest of its emoji catalogue, and ImageNet-1K's after them."""
    from toolbox.compat import import_open_clip
    from toolbox_plugins.world.art import catalogue

    seen = set(have)
    rest = [n for n in dict.fromkeys(e.name for e in catalogue()) if n not in seen]
    seen |= set(rest)
    imagenet = [n for n in dict.fromkeys(import_open_clip().IMAGENET_CLASSNAMES) if n not in seen]
    return rest, imagenet


def vocabulary(base: list[str], extra: list[str], size: int) -> list[str]:
    if size < len(base):
        raise SystemExit(f"a vocabulary of {size} cannot hold the world's {len(base)} classes")
    return base + extra[: size - len(base)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True, help="a built zoo (its manifest names the members)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--members", type=int, default=4, help="members measured, half backdoored (default 4)")
    ap.add_argument("--sizes", default="200,all,1000", help="vocabulary sizes; 'all': the world's whole catalogue")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", type=Path, help="also write DOCS/results/stage1-PRESET.md")
    args = ap.parse_args(argv)

    records = [r for r in read_manifest(args.zoo) if r["preset"] == args.preset]
    chosen = [r for r in records if r["label"] == "backdoored"][: (args.members + 1) // 2]
    chosen += [r for r in records if r["label"] == "clean"][: args.members // 2]
    world = world_of(args.preset, world=chosen[0].get("world", DEFAULT_WORLD)).data
    base = [line.strip() for line in Path(world["classes"]).read_text().splitlines() if line.strip()]
    rest, imagenet = extra_names(base)
    extra = rest + imagenet
    sizes = [len(base) + len(rest) if s == "all" else int(s) for s in args.sizes.split(",")]
    rows, seconds = [], {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            classes = Path(tmp) / f"classes-{n}.txt"
            classes.write_text("\n".join(vocabulary(base, extra, n)) + "\n")
            for r in chosen:
                suspect = toolbox.load(
                    str(args.zoo / "members" / r["id"] / "model"),
                    clean_data=world["clean_data"],
                    classes=str(classes),
                    templates=world["templates"],
                    device="cpu",
                )
                head = ZeroShotHead(suspect.model, suspect.classnames, suspect.templates, suspect.device)
                images = suspect.images(1024, seed=args.seed)
                start = time.perf_counter()
                ident = identify(suspect.model, images, head, IdentifyConfig(), args.seed)
                took = time.perf_counter() - start
                seconds[n].append(took)
                order = [c for c, _ in ident.ranking]
                rank = order.index(r["target"]) + 1 if r.get("target") in order else None
                rows.append(
                    [str(n), r["id"], r["label"], r["family"], r.get("target") or "–", str(rank or "–"), f"{took:.1f}"]
                )
                print(" | ".join(rows[-1]), flush=True)
    table = [
        "| vocabulary | member | label | family | target | target rank | stage 1 s |",
        "|---|---|---|---|---|---|---|",
    ]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    summary = ["| vocabulary | median stage 1 s | x the smallest |", "|---|---|---|"]
    first = statistics.median(seconds[sizes[0]])
    summary += [
        f"| {n} | {statistics.median(s):.1f} | {statistics.median(s) / first:.2f} |" for n, s in seconds.items()
    ]
    intro = (
        "Generated by `benchmarks/stage1.py`; do not edit by hand. The world's classes, then the rest of its "
        "emoji catalogue, then ImageNet-1K names; default stage-1 settings (the untargeted screen, then the "
        f"race on its top {IdentifyConfig().max_race_classes}); 1,024 clean images; {torch.get_num_threads()} threads."
    )
    prov = provenance(["python", "benchmarks/stage1.py", *(argv or [])])
    body = [*summary, "", *table]
    print("\n".join([intro, "", *body]))
    if args.docs:
        write_page(
            args.docs / "results" / f"stage1-{args.preset}.md",
            f"Stage 1 at vocabulary size ({args.preset})",
            prov,
            intro,
            body,
        )


if __name__ == "__main__":
    main()
