"""``toolbox submit``: a result validated and its leaderboard submission file written."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_OK, InputError


def cmd_submit(args: argparse.Namespace) -> int:
    from ..leaderboard import LeaderboardError, submit

    try:
        path = submit(args.result, args.out)
    except LeaderboardError as err:
        raise InputError(str(err)) from err
    print(f"submission: {path}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="validate a result and write its leaderboard submission file",
        description="Validate RESULT against the result schema and write a submission JSON with the "
        "metric config, model hashes, versions and seed (default: beside RESULT).",
    )
    p.add_argument("result", type=Path)
    p.add_argument("--out", type=Path, help="submission file to write (default: RESULT's folder/submission.json)")
    p.set_defaults(func=cmd_submit)
