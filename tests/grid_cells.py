"""Cell functions for tests/test_grid.py, in a module of their own so a spawned or submitit child
imports only this (not pytest, not torch) to unpickle them. tests/ is on sys.path (pytest's
rootdir-based import, as for planted.py); test_grid.py puts it on PYTHONPATH for submitit's jobs."""

from __future__ import annotations

import os
from pathlib import Path


def square(x: int, out_dir: str) -> dict:
    """An idempotent cell: writes marker ``x`` once, and says whether it found one already."""
    marker = Path(out_dir) / f"{x}.done"
    if marker.exists():
        return {"value": x * x, "cached": True, "pid": os.getpid()}
    marker.write_text(str(x * x))
    return {"value": x * x, "cached": False, "pid": os.getpid()}


def fail(x: int) -> int:
    """A cell that always fails, with a recognisable error."""
    raise ValueError(f"cell {x} is broken")


def refuse(x: int) -> int:
    """A cell that finds its input bad (exit code 2, not a failed run)."""
    from toolbox.errors import InputError

    raise InputError(f"input {x} is bad")
