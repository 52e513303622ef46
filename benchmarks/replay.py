"""The calibrated verdict of a plain zoo evaluation, replayed offline from its kept outcomes (issue 42):
what ``invertune-null`` would have said, in seconds instead of a re-run; or the gates' verdict of a
calibrated evaluation (``--rule gates``).

    python benchmarks/replay.py docs/results/outcomes/dev/invertune-2013f5e017533143 \\
        --calibration docs/results/nulls/invertune-default.json \\
        --calibration docs/results/nulls/invertune-default-resnet.json
    python benchmarks/replay.py KEPT_CALIBRATED_EVALUATION --rule gates [--threshold T_FROM_DEV]

Reads every member folder (``ID/outcome.json`` and ``ID/run/result.json``, as ``--keep-outcomes``
keeps them), replays each cascade under its architecture's null (:mod:`invertune_plugin.replay`)
and scores the population at the null's alpha, as ``benchmarks/zoo.py`` scores ``invertune-null``.
A member whose gates stopped the cascade before the null would have is listed apart (its record
cannot tell); purification is carried over only where the calibrated run would have tuned against
the same finding (or left the model as it was), otherwise it is counted as not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from invertune_plugin.defense import InverTuneConfig
from invertune_plugin.replay import replay, replay_gates
from toolbox.errors import InputError
from toolbox.null import read_null, select
from toolbox.zoo.report import markdown_members, markdown_summary
from toolbox.zoo.score import MemberOutcome, score_population


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: not a readable JSON file ({exc.__class__.__name__})") from None


def member_rows(
    folder: Path, nulls: list, alpha: float, pick: str, rule: str
) -> tuple[list[MemberOutcome], list[str], list[str], set[str]]:
    """Each kept member replayed: the rescored rows, the members the replay cannot tell, those whose
    score and trigger it bounds only, and the code versions the outcomes came from."""
    rows, undetermined, bounded, codes = [], [], [], set()
    min_differential = InverTuneConfig().min_differential
    for outcome_file in sorted(folder.glob("*/outcome.json")):
        kept, result = read_json(outcome_file), read_json(outcome_file.parent / "run" / "result.json")
        try:
            row = MemberOutcome.from_dict(kept["outcome"])
            detection = result.get("detection") or {}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"{outcome_file.parent}: not a kept outcome ({exc})") from None
        codes.add(str(kept.get("code")))
        if rule == "gates":
            got = replay_gates(detection, min_differential)
        else:
            try:
                null = select(nulls, detection.get("null_key") or {}, "invertune")
            except InputError as exc:
                raise SystemExit(f"{row.member_id}: {exc}") from None
            got = replay(detection, null, alpha, pick, min_differential)
        if got is None:
            undetermined.append(row.member_id)
            continue
        if not got.exact:
            bounded.append(row.member_id)
        if not got.as_plain:  # the calibrated run kept the model as it was, or tuned against another finding
            unchanged = got.exact and not got.backdoored
            after = {
                "ca_after": row.ca_before if unchanged else None,
                "asr_after": row.asr_before if unchanged else None,
                "asr_rebound": None,
                "localisation": None,
            }
            row = replace(row, **after)
        rows.append(replace(row, score=got.score, verdict=got.backdoored, predicted_target=got.target))
    return rows, undetermined, bounded, codes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outcomes", type=Path, help="a kept evaluation: DIR/ZOO/CONFIGURATION of --keep-outcomes")
    ap.add_argument("--rule", choices=("null", "gates"), default="null", help="the verdict to replay")
    ap.add_argument("--calibration", type=Path, action="append", default=[], help="a clean null (repeatable)")
    ap.add_argument("--threshold", type=float, help="with --rule gates: a score cut chosen on dev")
    ap.add_argument("--alpha", type=float, default=InverTuneConfig().alpha)
    ap.add_argument("--pick", choices=("strongest", "first"), default=InverTuneConfig().calibrated_pick)
    args = ap.parse_args()
    if not args.outcomes.is_dir():
        ap.error(f"{args.outcomes} is not a folder of kept outcomes")
    if not 0 < args.alpha < 1:
        ap.error(f"--alpha is a false-positive rate in (0, 1); got {args.alpha}")
    if args.rule == "null" and not args.calibration:
        ap.error("--rule null needs --calibration FILE (one per architecture)")
    try:
        nulls = [read_null(p) for p in args.calibration]
    except InputError as exc:
        ap.error(str(exc))
    rows, undetermined, bounded, codes = member_rows(args.outcomes, nulls, args.alpha, args.pick, args.rule)
    if not rows:
        ap.error(f"{args.outcomes}: no member the replay can tell (ID/outcome.json and ID/run/result.json)")
    if args.rule == "gates":
        title, threshold = f"{args.outcomes.name}, replayed under the gates", args.threshold
    else:
        title = f"{args.outcomes.name}, replayed under the clean null at alpha {args.alpha:g} (pick: {args.pick})"
        threshold = -math.log10(args.alpha)
    print(markdown_summary(score_population(rows, threshold=threshold), title))
    print("\n## Members\n\n" + markdown_members(rows))
    print(f"\nReplayed from outcomes of code {', '.join(sorted(codes))}; {len(rows)} members.")
    print(
        f"Undetermined (the record stopped before the replayed rule would have): {', '.join(undetermined) or 'none'}."
    )
    if args.rule == "null":
        print(
            "Bounded (the gates stopped before every detector ran: score a lower bound, trigger among those "
            f"recorded, purification not measured): {', '.join(bounded) or 'none'}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
