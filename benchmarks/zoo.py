"""Detection and purification judged over populations of models (issue 21): both zoo splits.

    python benchmarks/zoo.py                                   # dev and test: none, invertune, invertune paper
    python benchmarks/zoo.py --splits dev --defenses invertune # one split, one defense
    python benchmarks/zoo.py --root ZOOS --executor slurm      # members and evaluations as Slurm job arrays
    python benchmarks/zoo.py --defenses invertune,invertune-null --calibration null-vit.json --calibration null-rn.json
    python benchmarks/zoo.py --defenses invertune-refs          # each member beside its base preset (--reference)
    python benchmarks/zoo.py --keep-outcomes docs/results/outcomes   # evaluations resumable on the next machine
    python benchmarks/zoo.py --rebound-steps 100               # and each purified model's rebound ASR

Builds each split's zoo (``zoo/SPLIT.yaml``; resumable, members cached by config) under
``ROOT/SPLIT``, evaluates every defense on it blind, and prints the scorer's summary table per
(split, defense). The detection threshold is chosen on the dev split (TPR at FPR <= 5 %) and
applied as given to the test split: the test split is evaluated to report, never to tune. The
calibrated variant (``invertune-null``, given the clean nulls of ``toolbox zoo calibrate``) takes no
threshold from dev either: its verdict is the null's tail at alpha, fixed before any suspect is seen.

Writes the generated pages ``DOCS/results/zoo.md`` (every table, every member) and, when InverTune's
default profile ran on dev, ``DOCS/calibration.md`` (each detector's statistic on dev, the threshold,
the test outcome): into the repository's ``docs/`` after a complete run (both splits, every
defense, no ``--limit``), into ``--docs DIR`` whenever it is given, never otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from invertune_plugin.calibration import EvaluatedMember, calibration_page
from toolbox import atomic
from toolbox.grid import add_grid_args, grid_config_from
from toolbox.null import read_null
from toolbox.results import provenance, provenance_markdown, write_page
from toolbox.zoo.build import build_zoo
from toolbox.zoo.evaluate import eval_zoo, not_implanted_rows, run_result
from toolbox.zoo.score import MemberOutcome, markdown_members, markdown_summary, score_population, write_report
from toolbox.zoo.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = {"none": {}, "invertune": {}, "invertune-paper": {"profile": "paper"}}
VARIANTS = {"invertune-null": {}, "invertune-refs": {}}  # InverTune's default with --calibration / --reference base
ALPHA = 0.05  # InverTune's default false-positive rate on the clean null


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--defenses", default=",".join(DEFENSES), help=f"of {', '.join([*DEFENSES, *VARIANTS])}")
    ap.add_argument(
        "--calibration",
        type=Path,
        action="append",
        default=[],
        help="a clean null for invertune-null (repeatable: one per architecture)",
    )
    ap.add_argument("--root", type=Path, default=Path("results/zoos"), help="where the zoos are built")
    ap.add_argument("--limit", type=int, help="only the first N members of each split (a quick look)")
    ap.add_argument(
        "--keep-outcomes",
        type=Path,
        metavar="DIR",
        help="keep the evaluations' outcomes in DIR/SPLIT/CONFIGURATION, taken from there (resumes on another machine)",
    )
    ap.add_argument(
        "--rebound-steps",
        type=int,
        default=0,
        help="also the real trigger's ASR after this many clean fine-tuning steps of each defended model",
    )
    ap.add_argument(
        "--docs",
        type=Path,
        help="write the generated pages here (default: the repository's docs/, after a complete run only)",
    )
    add_grid_args(ap)
    return ap


def main() -> int:
    ap = build_parser()
    args = ap.parse_args()
    if "invertune-null" in args.defenses.split(",") and not args.calibration:
        ap.error("invertune-null needs --calibration FILE (toolbox zoo calibrate)")
    if args.rebound_steps < 0:
        ap.error(f"--rebound-steps must be >= 0, got {args.rebound_steps}")
    grid = grid_config_from(args)
    prov = provenance(["python", "benchmarks/zoo.py", *sys.argv[1:]])
    thresholds: dict[str, float | None] = {}
    page: list[str] = []
    evaluated: dict[tuple[str, str], tuple[list[MemberOutcome], Path]] = {}
    for split in args.splits.split(","):
        spec = load_spec(ROOT / "zoo" / f"{split}.yaml")
        start = time.perf_counter()
        records = build_zoo(spec, args.root / split, grid, limit=args.limit)
        labels = [r["label"] for r in records]
        members = (
            f"{len(records)} members ({labels.count('clean')} clean, {labels.count('backdoored')} "
            f"backdoored, {labels.count('not_implanted')} not implanted: "
            f"{', '.join(r['id'] for r in records if r['label'] == 'not_implanted') or 'none'}); "
            f"member build time {sum(r['build_seconds'] for r in records):.0f} s in all"
        )
        print(f"# {split}: {members}, built or reused in {time.perf_counter() - start:.0f} s\n")
        page += [f"## The {split} split", "", f"`zoo/{split}.yaml`: {members}.", ""]
        for name in args.defenses.split(","):
            defense, params = name.split("-")[0], {**DEFENSES, **VARIANTS}[name]
            rows, out = eval_zoo(
                args.root / split,
                defense,
                params,
                grid=grid,
                calibration=tuple(args.calibration) if name == "invertune-null" else (),
                references=("base",) if name == "invertune-refs" else (),
                keep=args.keep_outcomes,
                rebound_steps=args.rebound_steps,
            )
            rows += not_implanted_rows(args.root / split)
            given = thresholds.get(name) if split != "dev" else None
            if name == "invertune-null":  # the null's threshold, on both splits: -log10(alpha)
                given = -math.log10(ALPHA)
            summary = score_population(rows, threshold=given)
            if split == "dev" and name != "invertune-null" and (summary.get("detection") or {}).get("tpr_at_fpr"):
                thresholds[name] = summary["detection"]["tpr_at_fpr"]["threshold"]
            source = "the clean null's alpha" if name == "invertune-null" else "dev"
            title = f"{name} on the {split} split" + (
                f" (threshold {given:.4g} from {source})" if given is not None else ""
            )
            write_report(summary, rows, out, title)
            print(markdown_summary(summary, title))
            print(f"\nreport: {out}\n")
            evaluated[(split, name)] = (rows, out)
            page += [demote(markdown_summary(summary, title), 2), "#### Members", "", markdown_members(rows)]
    print(json.dumps({"dev_thresholds": thresholds}))
    complete = (
        args.limit is None
        and set(args.splits.split(",")) == {"dev", "test"}
        and set(args.defenses.split(",")) == set(DEFENSES)
    )
    if args.docs is not None or complete:
        write_pages(args.docs or ROOT / "docs", prov, page, evaluated, thresholds.get("invertune"), args.calibration)
    return 0


def demote(markdown: str, levels: int) -> str:
    """Headings ``levels`` deeper, so a summary page nests under the split's heading."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines()) + "\n"


def write_pages(
    docs: Path, prov: dict, page: list[str], evaluated: dict, dev_threshold: float | None, nulls: list[Path]
) -> None:
    write_page(
        docs / "results" / "zoo.md",
        "Zoo results",
        prov,
        "Generated by `benchmarks/zoo.py`; do not edit by hand. What each number means: "
        "`toolbox/zoo/metrics.py`. The test split is evaluated at the thresholds chosen on dev.",
        page,
    )
    print(f"wrote {docs / 'results' / 'zoo.md'}")
    if ("dev", "invertune") not in evaluated:
        return
    splits: dict[str, list[EvaluatedMember]] = {}
    missing: list[str] = []
    params: dict = {}
    for (split, name), (rows, out) in evaluated.items():
        if name != "invertune":
            continue
        splits[split] = []
        for r in rows:
            doc = run_result(out, r.member_id) if r.label != "not_implanted" else None
            if doc is not None and doc.get("detection"):
                splits[split].append(EvaluatedMember(r, doc["detection"]))
                params = params or (doc["defense"].get("params", {}) if split == "dev" else {})
            elif r.label != "not_implanted":
                missing.append(r.member_id)
    atomic.write_text(
        docs / "calibration.md",
        calibration_page(
            splits["dev"],
            splits.get("test"),
            dev_threshold,
            params,
            provenance_markdown(prov),
            missing,
            [read_null(p) for p in nulls],
            calibrated_rows(evaluated),
        ),
    )
    print(f"wrote {docs / 'calibration.md'}")


def calibrated_rows(evaluated: dict) -> dict[str, list[MemberOutcome]]:
    """Per split, the calibrated variant's scored rows (clean and backdoored), where it ran."""
    return {
        split: [r for r in rows if r.label in ("clean", "backdoored")]
        for (split, name), (rows, _) in evaluated.items()
        if name == "invertune-null"
    }


if __name__ == "__main__":
    sys.exit(main())
