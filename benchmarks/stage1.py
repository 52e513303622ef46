"""Stage 1 at real vocabulary size: what ranking the classes costs, and where the target lands, as
the vocabulary grows from the world's classes to every usable emoji name and to 1,000 names.

    python benchmarks/stage1.py --zoo ~/.cache/invertune-toolbox/zoos/dev               # 4 members
    python benchmarks/stage1.py --zoo ZOO --members 6 --sizes 200,all,1000 --docs docs
    python benchmarks/stage1.py --zoo ZOO --ids dev-007,dev-011 --sizes 200 --screens untargeted,groups,both

Members are the zoo's first backdoored and clean members of the preset (ViT by default), read from
its manifest. A vocabulary of size N is the world's own classes (the target among them), then the
other usable emoji names of the world's catalogue (``all``: every one), then ImageNet-1K names
(open_clip's) up to N: names the model never saw are distractors, as a user's long class list is.
Stage 1 runs with the default settings but for ``--screens`` (which screen picks the
``max_race_classes`` raced classes: identify.screen); the table gives its seconds, whether the true
target was raced, and its final rank. Timings taken while anything else runs on the machine are not timings.
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


def members(args: argparse.Namespace) -> list[dict]:
    """The manifest records measured: ``--ids`` (one preset's; ``args.preset`` follows them), or the
    preset's first backdoored and clean members."""
    if not args.ids:
        records = [r for r in read_manifest(args.zoo) if r["preset"] == args.preset]
        chosen = [r for r in records if r["label"] == "backdoored"][: (args.members + 1) // 2]
        return chosen + [r for r in records if r["label"] == "clean"][: args.members // 2]
    by_id = {r["id"]: r for r in read_manifest(args.zoo)}
    missing = [i for i in args.ids.split(",") if i not in by_id]
    if missing:
        raise SystemExit(f"not in {args.zoo}'s manifest: {', '.join(missing)}")
    chosen = [by_id[i] for i in args.ids.split(",")]
    if len({r["preset"] for r in chosen}) > 1:
        raise SystemExit("--ids: members of one preset at a time (their world's vocabulary differs)")
    args.preset = chosen[0]["preset"]
    return chosen


def measure(
    suspect: toolbox.Suspect, head: ZeroShotHead, images: torch.Tensor, r: dict, cfg: IdentifyConfig, seed: int
) -> tuple[list[str], float, bool, int | None]:
    """One stage-1 run: its table row (from the member on), seconds, whether the target raced, its rank."""
    start = time.perf_counter()
    ident = identify(suspect.model, images, head, cfg, seed)
    took = time.perf_counter() - start
    order = [c for c, _ in ident.ranking]
    rank = order.index(r["target"]) + 1 if r.get("target") in order else None
    in_race = False
    if rank is not None:  # a raced class has a race rate; the others stay NaN
        rates = ident.uaps[0].rates
        in_race = rates is not None and not bool(rates[ident.classnames.index(r["target"])].isnan())
    shown = ("yes" if in_race else "no") if rank is not None else "–"
    row = [r["id"], r["label"], r["family"], r.get("target") or "–", shown, str(rank or "–"), f"{took:.1f}"]
    return row, took, in_race, rank


def report(
    rows: list[list[str]],
    seconds: dict[tuple[int, str], list[float]],
    raced: dict[tuple[int, str], list[bool]],
    top1: dict[tuple[int, str], list[bool]],
    sizes: list[int],
) -> list[str]:
    """The summary (per vocabulary size and screen) above the per-member table."""
    table = [
        "| vocabulary | screen | member | label | family | target | target raced | target rank | stage 1 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    summary = [
        "| vocabulary | screen | median stage 1 s | x the smallest | targets raced | targets ranked first |",
        "|---|---|---|---|---|---|",
    ]
    for (n, screen), took in seconds.items():
        first = statistics.median(seconds[sizes[0], screen])
        hits, tops = raced[n, screen], top1[n, screen]
        summary.append(
            f"| {n} | {screen} | {statistics.median(took):.1f} | {statistics.median(took) / first:.2f} "
            f"| {sum(hits)} of {len(hits)} | {sum(tops)} of {len(tops)} |"
        )
    return [*summary, "", *table]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True, help="a built zoo (its manifest names the members)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--members", type=int, default=4, help="members measured, half backdoored (default 4)")
    ap.add_argument("--sizes", default="200,all,1000", help="vocabulary sizes; 'all': the world's whole catalogue")
    ap.add_argument("--ids", help="comma-separated member ids instead of --members (any preset's)")
    ap.add_argument("--screens", default=IdentifyConfig().screen, help="identify.screen values to compare (comma list)")
    ap.add_argument(
        "--max-race-classes",
        type=int,
        default=IdentifyConfig().max_race_classes,
        help="identify.max_race_classes: how many screened classes race",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", type=Path, help="also write DOCS/results/stage1-PRESET.md")
    args = ap.parse_args(argv)

    chosen = members(args)
    if args.ids and args.docs:
        raise SystemExit("--docs writes the preset's page: measure --members, not a hand-picked --ids")
    try:
        configs = {s: IdentifyConfig(screen=s, max_race_classes=args.max_race_classes) for s in args.screens.split(",")}
    except ValueError as e:
        raise SystemExit(str(e)) from None
    world = world_of(args.preset, world=chosen[0].get("world", DEFAULT_WORLD)).data
    base = [line.strip() for line in Path(world["classes"]).read_text().splitlines() if line.strip()]
    rest, imagenet = extra_names(base)
    extra = rest + imagenet
    sizes = [len(base) + len(rest) if s == "all" else int(s) for s in args.sizes.split(",")]
    rows: list[list[str]] = []
    seconds: dict[tuple[int, str], list[float]] = {(n, s): [] for n in sizes for s in configs}
    raced: dict[tuple[int, str], list[bool]] = {(n, s): [] for n in sizes for s in configs}
    top1: dict[tuple[int, str], list[bool]] = {(n, s): [] for n in sizes for s in configs}
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
                for screen, cfg in configs.items():
                    row, took, in_race, rank = measure(suspect, head, images, r, cfg, args.seed)
                    seconds[n, screen].append(took)
                    if r.get("target"):
                        raced[n, screen].append(in_race)
                        top1[n, screen].append(rank == 1)
                    rows.append([str(n), screen, *row])
                    print(" | ".join(rows[-1]), flush=True)
    body = report(rows, seconds, raced, top1, sizes)
    intro = (
        "Generated by `benchmarks/stage1.py`; do not edit by hand. The world's classes, then the rest of its "
        "emoji catalogue, then ImageNet-1K names; default stage-1 settings but for the screen (identify.screen: "
        f"{', '.join(configs)}), then the race on its top {args.max_race_classes}; 1,024 clean images; "
        f"{torch.get_num_threads()} threads."
    )
    prov = provenance(["python", "benchmarks/stage1.py", *(argv or [])])
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
