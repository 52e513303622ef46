"""``toolbox zoo build``, ``eval`` and ``calibrate``: a population of suspect models, a defense judged
over it, and a defense's clean null drawn from its clean members."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..commit import read_json
from ..errors import EXIT_OK, InputError
from ..escape import shown
from ..grid import add_grid_args
from ..outputs import out_arg, set_aside
from .options import parse_kv, seed_type, share_loudness


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from ..grid import grid_config_from
    from ..zoo.build import build_zoo
    from ..zoo.spec import load_spec

    spec = load_spec(args.spec, members=args.members)
    records = build_zoo(spec, args.out, grid_config_from(args), limit=args.limit)
    print(f"{'member':<40}{'label':<15}{'CA':>8}{'ASR':>8}{'untrig.':>9}{'s':>7}")
    for r in records:
        m = r["measured"]
        cells = [f"{100 * m[k]:.1f}" if m.get(k) is not None else "-" for k in ("ca", "asr", "asr_untriggered")]
        print(f"{r['id']:<40}{r['label']:<15}{cells[0]:>8}{cells[1]:>8}{cells[2]:>9}{r['build_seconds']:>7.0f}")
    labels = [r["label"] for r in records]
    print(
        f"\n{len(records)} members in {args.out}: "
        + ", ".join(f"{labels.count(k)} {k}" for k in ("clean", "backdoored", "not_implanted"))
    )
    return EXIT_OK


def cmd_zoo_eval(args: argparse.Namespace) -> int:
    from ..cache import config_hash
    from ..grid import grid_config_from
    from ..zoo.evaluate import eval_zoo, not_implanted_rows
    from ..zoo.score import markdown_summary, score_population, write_report

    only = None if args.only is None else [m.strip() for m in args.only.split(",") if m.strip()]
    if only == []:
        raise InputError("--only names no member")
    if args.rebound_steps < 0:
        raise InputError(f"--rebound-steps must be >= 0, got {args.rebound_steps}")
    rows, out = eval_zoo(
        args.directory,
        args.defense,
        parse_kv(args.param),
        args.seed,
        grid_config_from(args),
        args.out,
        only,
        rebound_steps=args.rebound_steps,
        calibration=tuple(args.calibration),
        references=tuple(args.reference),
        keep=args.keep_outcomes,
    )
    title = f"{args.defense} on {args.directory}" + (f" (only {', '.join(only)})" if only else "")
    rows += not_implanted_rows(args.directory, only)  # listed apart by the scorer, never evaluated
    summary = score_population(rows, threshold=args.threshold)
    report = out / f"only-{config_hash(*sorted(only))[:10]}" if only else out  # a subset never replaces the full report
    set_aside(report, REPORT_FILES, lambda _: _our_report(report))  # a user's file of the same name is kept
    write_report(summary, rows, report, title)
    print(markdown_summary(summary, title))
    print(f"\nreport: {report}/zoo_summary.md, zoo_summary.json, zoo_members.csv, zoo_roc.png")
    return EXIT_OK


def check_null_out(path: Path) -> None:
    """--out of `zoo calibrate`: a new file in an existing folder, or an earlier calibration file (replaced)."""
    from ..intake.documents import read_calibration

    if not path.parent.is_dir():
        raise InputError(f"--out {shown(path)}: its folder does not exist")
    if os.path.lexists(path):
        try:
            read_calibration(path)
        except InputError:
            raise InputError(f"--out {shown(path)} exists and is not a calibration file; it is left as it is") from None


def cmd_zoo_calibrate(args: argparse.Namespace) -> int:
    from ..grid import grid_config_from
    from ..zoo.calibrate import calibrate

    if not 0 < args.alpha < 1:
        raise InputError(f"--alpha is a false-positive rate in (0, 1); got {args.alpha}")
    check_null_out(args.out)
    made = calibrate(
        args.directory,
        args.defense,
        parse_kv(args.param),
        args.preset,
        args.seed,
        grid_config_from(args),
        ["toolbox", *args.argv],
        args.alpha,
        args.keep_outcomes,
    )
    made.null.write(args.out)
    print(f"{'statistic':<16}{'scale':>7}{'n':>5}{'min':>10}{'median':>10}{'max':>10}")
    for name, stat in made.null.statistics.items():
        v = sorted(stat.values)
        print(f"{name:<16}{stat.scale:>7}{len(v):>5}{v[0]:>10.4g}{v[len(v) // 2]:>10.4g}{v[-1]:>10.4g}")
    called = [row["reference"] for row in made.leave_one_out if row["called"]]
    print(
        f"\nleave one out at alpha {args.alpha:g}: {len(called)} of {len(made.leave_one_out)} references called "
        f"backdoored{' (' + ', '.join(called) + ')' if called else ''}"
    )
    n = len(made.null.references)
    print(
        f"null: {shown(args.out)} ({n} references: {made.reused} from earlier evaluations, "
        f"{n - made.reused} measured now{' or taken from --keep-outcomes' if args.keep_outcomes else ''})"
    )
    return EXIT_OK


REPORT_FILES = ("zoo_summary.json", "zoo_members.csv", "zoo_roc.png", "zoo_summary.md")  # zoo/report.py's


def _our_report(folder: Path) -> bool:
    """The report files in ``folder`` are an earlier ``zoo eval``'s (its zoo_summary.json says so)."""
    try:
        doc = read_json(folder / REPORT_FILES[0])
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"title", "summary", "rows"} <= doc.keys()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo",
        help="build a population of suspect models and judge a defense over it",
        description="A zoo: suspect models drawn from a spec (clean, backdoored, with ground truth), "
        "and a defense judged over them by ROC-AUC, TPR at FPR <= 5 %, target accuracy "
        "and purification success.",
    )
    zoo = p.add_subparsers(dest="zoo_command", required=True)
    share_loudness(zoo)  # -v / -q after `zoo build` / `zoo eval` too
    z = zoo.add_parser(
        "build",
        help="build (or resume building) every member of a spec",
        description="Draw the members of SPEC (a YAML file, e.g. zoo/dev.yaml) with its seed and "
        "build the missing ones under OUT; cached by config, resumable.",
    )
    z.add_argument("spec", type=Path)
    z.add_argument("--out", type=out_arg, required=True, help="the zoo's folder")
    z.add_argument("--members", type=int, help="the spec's size, overridden (the same spec at another scale)")
    z.add_argument("--limit", type=int, help="build only the first N members drawn")
    add_grid_args(z)
    z.set_defaults(func=cmd_zoo_build)
    add_eval_parser(zoo)
    z = zoo.add_parser(
        "calibrate",
        help="a defense's clean null from the clean members of one or more zoos",
        description="Run DEFENSE on each clean member of PRESET in the zoos given, measuring every "
        "statistic and purifying nothing (resumable), and write their statistics as a clean null "
        "(toolbox.null/1) that `toolbox run --calibration FILE` and `zoo eval --calibration FILE` take.",
    )
    z.add_argument("directory", type=Path, nargs="+", help="zoo folders (e.g. the dev split's)")
    z.add_argument("--defense", required=True)
    z.add_argument("--preset", required=True, help="the base preset whose clean members are the references")
    z.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="defense parameter override")
    z.add_argument("--seed", type=seed_type, default=0)
    z.add_argument("--alpha", type=float, default=0.05, help="false-positive rate for the leave-one-out check")
    z.add_argument("--out", type=Path, required=True, help="the calibration file to write (JSON)")
    add_keep_outcomes(z, "reference")
    add_grid_args(z)
    z.set_defaults(func=cmd_zoo_calibrate)


def add_keep_outcomes(z: argparse.ArgumentParser, whose: str) -> None:
    z.add_argument(
        "--keep-outcomes",
        type=out_arg,
        metavar="DIR",
        help=f"also keep each {whose}'s outcome and result.json in DIR/ZOO/CONFIGURATION/ (e.g. tracked in git) and "
        "take them from there: an evaluation longer than one machine's life resumes on the next",
    )


def add_eval_parser(zoo: argparse._SubParsersAction) -> None:
    z = zoo.add_parser(
        "eval",
        help="run a defense on every member, blind, and score the population",
        description="Run DEFENSE on every member of the zoo in DIRECTORY with the model, the "
        "defender's clean images and the vocabulary only; score detection, target and "
        "purification against the ground truth; write JSON, CSV, ROC PNG and Markdown.",
    )
    z.add_argument("directory", type=Path)
    z.add_argument("--defense", required=True)
    z.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="defense parameter override")
    z.add_argument("--seed", type=seed_type, default=0)
    z.add_argument(
        "--rebound-steps",
        type=int,
        default=0,
        help="also score the real trigger after this many steps of clean fine-tuning (default 0: off)",
    )
    z.add_argument("--threshold", type=float, help="detection threshold chosen elsewhere (e.g. on the dev split)")
    z.add_argument("--out", type=out_arg, help="report folder (default: DIRECTORY/evals/DEFENSE-HASH)")
    z.add_argument(
        "--only",
        metavar="ID,ID",
        help="these members alone (a quick look: the report says so; their outcomes are reused by a full evaluation)",
    )
    z.add_argument(
        "--calibration",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a clean null (`toolbox zoo calibrate`; repeatable, one per architecture) for the defense's verdict",
    )
    z.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="MODEL",
        help="a clean model every member is compared with (repeatable), or 'base': each member's own base "
        "preset, the model it was fine-tuned from",
    )
    add_keep_outcomes(z, "member")
    add_grid_args(z)
    z.set_defaults(func=cmd_zoo_eval)
