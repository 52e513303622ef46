"""The user's cache directory and content-keyed, lock-guarded cache entries.

Root: ``$TOOLBOX_CACHE``, else ``$XDG_CACHE_HOME/invertune-toolbox``, else
``~/.cache/invertune-toolbox``. An entry's key is a hash of everything that determines
its content; entries are built in a temporary directory and renamed into place, under a
file lock, so concurrent processes never see half an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1  # bump when a cached recipe (world drawing, training) changes, so entries rebuild


def cache_root() -> Path:
    if os.environ.get("TOOLBOX_CACHE"):
        return Path(os.environ["TOOLBOX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "invertune-toolbox"


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses via ``asdict`` first)."""
    text = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """Exclusive lock for building ``entry`` (a sibling ``.lock`` file)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
