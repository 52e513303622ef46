"""``toolbox leaderboard``: the result files under a directory, ranked."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import EXIT_OK, InputError

log = logging.getLogger("toolbox")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ..leaderboard import LeaderboardError, leaderboard

    try:
        text, skipped = leaderboard(args.directory, strict=args.strict)
    except LeaderboardError as err:
        raise InputError(str(err)) from err
    for line in skipped:
        log.warning("skipped %s", line)
    print(text, end="")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="ranked table of the result files under a directory",
        description="Collect result.json and submission files under DIR and rank them by DER, "
        "one table per metric config (results measured differently are never mixed).",
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) when the metric configs differ")
    p.set_defaults(func=cmd_leaderboard)
