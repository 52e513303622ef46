"""``toolbox submit``: a result validated and its leaderboard submission file written."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_OK, InputError


def cmd_submit(args: argparse.Namespace) -> int:
    from ..leaderboard import LeaderboardError, submit

    if not args.result:
        raise InputError("RESULT is empty: name the result.json to submit")
    try:
        path = submit(Path(args.result), args.out)
    except LeaderboardError as err:
        raise InputError(str(err)) from err
    print(f"submission: {path}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="validate a result and write its leaderboard submission file",
        description="Validate RESULT against the result schema and write a submission JSON with the "
        "metric config, model hashes, versions and seed (default: beside RESULT). An existing file is "
        'replaced only when it is a submission (its "schema" is toolbox.submission/1), never RESULT itself.',
    )
    # strs, not Paths: Path("") is ".", and an empty name must be refused, not read as the current folder
    p.add_argument("result")
    p.add_argument("--out", help="submission file to write (default: RESULT's folder/submission.json)")
    p.set_defaults(func=cmd_submit)
