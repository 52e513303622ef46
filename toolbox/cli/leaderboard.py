"""``toolbox leaderboard``: the result files under a directory, ranked."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import EXIT_OK, InputError

log = logging.getLogger("toolbox")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ..leaderboard import LeaderboardError, leaderboard

    if not args.directory:
        raise InputError("DIR is empty: name the folder of results to rank")
    try:
        text, skipped = leaderboard(Path(args.directory), strict=args.strict)
    except LeaderboardError as err:
        raise InputError(str(err)) from err
    for line in skipped:
        log.warning("skipped: %s", line)
    print(text, end="")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="ranked table of the result files under a directory",
        description="Collect result.json and submission files under DIR and rank them by DER, "
        "one table per metric config (results measured differently are never mixed). A *.json that "
        "cannot be read as one (not a regular file, not strict JSON, invalid, non-finite metrics) is "
        "named on stderr and skipped.",
    )
    p.add_argument("directory")  # a str: Path("") would be ".", and an empty DIR must be refused
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) when the metric configs differ or a file cannot be ranked "
        "(without it such a file is named and skipped)",
    )
    p.set_defaults(func=cmd_leaderboard)
