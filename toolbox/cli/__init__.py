"""``toolbox``: list what is registered, show plugins, run a cell, compare defenses, rank and submit results.

One module per subcommand, each with its ``add_parser(subparsers)`` and its handler; this one assembles
the parser, sets up logging and turns what a handler raises into an exit code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, EXIT_TERMINATED, InputError, one_line
from ..plugins import UnknownNameError
from . import compare, leaderboard, listing, run, scan_data, submit, zoo
from .compare import cmd_compare
from .leaderboard import cmd_leaderboard
from .listing import cmd_list, cmd_plugins
from .options import PRESET_HELP, add_loudness, add_source_args, parse_kv, share_loudness, sources_from
from .run import cmd_run, summary
from .scan_data import cmd_scan_data
from .submit import cmd_submit
from .zoo import cmd_zoo_build, cmd_zoo_calibrate, cmd_zoo_eval

# Tests, benchmarks and docs import the handlers and helpers from ``toolbox.cli``, as before the split.
__all__ = [
    "EPILOG",
    "OWN_LOGGERS",
    "PRESET_HELP",
    "Terminated",
    "add_loudness",
    "add_source_args",
    "build_parser",
    "cmd_compare",
    "cmd_leaderboard",
    "cmd_list",
    "cmd_plugins",
    "cmd_run",
    "cmd_scan_data",
    "cmd_submit",
    "cmd_zoo_build",
    "cmd_zoo_calibrate",
    "cmd_zoo_eval",
    "main",
    "parse_kv",
    "setup_logging",
    "share_loudness",
    "sources_from",
    "summary",
]

log = logging.getLogger("toolbox")
# Loggers of this distribution; the CLI's -v / -q set their level (third-party libraries stay at WARNING).
OWN_LOGGERS = ("toolbox", "adapters", "invertune_plugin")
# In the order `toolbox --help` lists them.
SUBCOMMANDS = (listing, run, compare, zoo, scan_data, leaderboard, submit)

EPILOG = (
    f"exit codes: {EXIT_OK} ok; {EXIT_BAD_INPUT} bad input or usage (nothing written); {EXIT_RUN_FAILED} the "
    f"run failed for another reason (nothing written; -v for the traceback); {EXIT_INTERRUPTED} / "
    f"{EXIT_TERMINATED} interrupted (SIGINT / SIGTERM)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolbox",
        description="Backdoor toolbox for CLIP-style models (InverTune reference implementation).",
        epilog=EPILOG,
    )
    add_loudness(parser, argparse.SUPPRESS)
    parser.set_defaults(verbose=False, quiet=False)
    sub = parser.add_subparsers(dest="command", required=True)
    share_loudness(sub)  # -v / -q also after the subcommand
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def setup_logging(verbose: bool, quiet: bool) -> list[tuple[logging.Logger, list, int, bool]]:
    """Our loggers to stderr at the chosen level; returns what they were, for :func:`main` to restore."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    saved = []
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers, logger.level, logger.propagate))
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False  # a library's logging.info() gives the root a handler: no second copy there
    return saved


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirected stream)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"toolbox: {level}{record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else ""
        )


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so staged outputs are cleaned up on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, argparse's own convention
    args.argv = argv
    saved_logging = setup_logging(args.verbose, args.quiet)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        return int(args.func(args))
    except (InputError, UnknownNameError, argparse.ArgumentTypeError) as err:
        log.debug("bad input", exc_info=True)
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("interrupted: --out is as it was (a grid keeps its finished cells)")
        return EXIT_INTERRUPTED
    except Terminated:
        log.error("terminated: --out is as it was (a grid keeps its finished cells)")
        return EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - one line, not a traceback; -v shows it
        log.debug("the run failed", exc_info=True)
        log.error("the run failed: %s%s", one_line(err), "" if args.verbose else " (rerun with -v for the traceback)")
        return EXIT_RUN_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for logger, handlers, level, propagate in saved_logging:  # main() leaves no global state behind
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
