"""The CLI's exit codes and the error that means "bad input": one place, mirrored in the README."""

from __future__ import annotations

EXIT_OK = 0
# Usage, unknown names, bad parameters, unreadable / hostile / inconsistent input, an --out that
# overlaps an input. Nothing was written.
EXIT_BAD_INPUT = 2
# The run failed for another reason (a plugin raised, out of memory, a full disk). Nothing was
# written either; -v shows the traceback.
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), the shell's 128 + 2
EXIT_TERMINATED = 143  # SIGTERM, 128 + 15


class InputError(ValueError):
    """Input the run cannot use: the CLI prints it as one line and exits with EXIT_BAD_INPUT."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (torch's size-mismatch messages run to pages)."""
    message = " ".join(str(err).split())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."
