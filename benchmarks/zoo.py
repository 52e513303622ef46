"""Detection and purification judged over populations of models (issue 21): both zoo splits.

    python benchmarks/zoo.py                                   # dev and test: none, invertune, invertune paper
    python benchmarks/zoo.py --splits dev --defenses invertune # one split, one defense
    python benchmarks/zoo.py --root ZOOS --executor slurm      # members and evaluations as Slurm job arrays

Builds each split's zoo (``zoo/SPLIT.yaml``; resumable, members cached by config) under
``ROOT/SPLIT``, evaluates every defense on it blind, and prints the scorer's summary table per
(split, defense). The detection threshold is chosen on the dev split (TPR at FPR <= 5 %) and
applied as given to the test split: the test split is evaluated to report, never to tune.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from toolbox.grid import add_grid_args, grid_config_from
from toolbox.zoo.build import build_zoo
from toolbox.zoo.evaluate import eval_zoo, not_implanted_rows
from toolbox.zoo.score import markdown_summary, score_population, write_report
from toolbox.zoo.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = {"none": {}, "invertune": {}, "invertune-paper": {"profile": "paper"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--defenses", default=",".join(DEFENSES), help=f"of {', '.join(DEFENSES)}")
    ap.add_argument("--root", type=Path, default=Path("results/zoos"), help="where the zoos are built")
    ap.add_argument("--limit", type=int, help="only the first N members of each split (a quick look)")
    add_grid_args(ap)
    args = ap.parse_args()
    grid = grid_config_from(args)
    thresholds: dict[str, float | None] = {}
    for split in args.splits.split(","):
        spec = load_spec(ROOT / "zoo" / f"{split}.yaml")
        start = time.perf_counter()
        records = build_zoo(spec, args.root / split, grid, limit=args.limit)
        labels = [r["label"] for r in records]
        print(f"# {split}: {len(records)} members ({labels.count('clean')} clean, {labels.count('backdoored')} "
              f"backdoored, {labels.count('not_implanted')} not implanted; not implanted: "
              f"{[r['id'] for r in records if r['label'] == 'not_implanted']}), "
              f"built or reused in {time.perf_counter() - start:.0f} s, "
              f"member build time {sum(r['build_seconds'] for r in records):.0f} s in all\n")
        for name in args.defenses.split(","):
            defense, params = name.split("-")[0], DEFENSES[name]
            rows, out = eval_zoo(args.root / split, defense, params, grid=grid)
            rows += not_implanted_rows(args.root / split)
            given = thresholds.get(name) if split != "dev" else None
            summary = score_population(rows, threshold=given)
            if split == "dev" and summary.get("detection") and summary["detection"].get("tpr_at_fpr"):
                thresholds[name] = summary["detection"]["tpr_at_fpr"]["threshold"]
            title = f"{name} on the {split} split" + (f" (threshold {given} from dev)" if given is not None else "")
            write_report(summary, rows, out, title)
            print(markdown_summary(summary, title))
            print(f"\nreport: {out}\n")
    print(json.dumps({"dev_thresholds": thresholds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
