"""The user's cache directory and content-keyed, lock-guarded cache entries.

Root: ``$TOOLBOX_CACHE``, else ``$XDG_CACHE_HOME/invertune-toolbox``, else
``~/.cache/invertune-toolbox``. An entry's key is a hash of everything that determines
its content; entries are built in a temporary directory and renamed into place, under a
file lock, so concurrent processes never see half an entry.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import inspect
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


def code_fingerprint(obj: Any) -> str:
    """The code an outcome was measured with: a hash of the source of the package that holds the
    module defining ``obj`` (a defense; the module itself when it is top-level) and the host's
    version (its measurement protocol). One plugin's package, not a namespace of several: editing
    one plugin does not invalidate another's outcomes. Taken once per process, when this process
    first asks, which is when it loaded the code: files edited during a long evaluation do not
    count, and a cluster job stamps the code it ran."""
    module = inspect.getmodule(obj)
    if module is None:
        raise ValueError(f"cannot tell which module defines {obj!r}")
    is_package = hasattr(module, "__path__")
    return _package_fingerprint(
        module.__name__ if is_package else module.__name__.rpartition(".")[0] or module.__name__
    )


@functools.cache
def _package_fingerprint(package_name: str) -> str:
    from . import __version__

    return f"{__version__}-{source_hash(importlib.import_module(package_name))}"


def module_fingerprint(obj: Any) -> str:
    """The code of one class among independent siblings (an attack of the attacks package): the
    module defining ``obj`` and, transitively, the modules of its own package it imports, read from
    the source; and the host's version. Editing or adding a sibling it does not import leaves it as
    it was (a whole-package hash would rebuild every cached attack for one). Not for a package that
    registers its parts dynamically (a defense's detectors): :func:`code_fingerprint` there."""
    module = inspect.getmodule(obj)
    if module is None or not getattr(module, "__file__", None):  # made at run time: no source to read
        from . import __version__

        return f"{__version__}-{getattr(obj, '__qualname__', obj)}"
    return _module_fingerprint(module.__name__)


@functools.cache
def _module_fingerprint(name: str) -> str:
    from . import __version__

    digest = hashlib.sha256()
    for module, path in sorted(_import_closure(name).items()):
        digest.update(module.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{__version__}-{digest.hexdigest()[:16]}"


def _import_closure(name: str) -> dict[str, Path]:
    """``name`` and the modules of its top-level package it imports, transitively: name -> source file."""
    top = name.partition(".")[0]
    found: dict[str, Path] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        try:
            spec = None if current in found else importlib.util.find_spec(current)
        except (ImportError, ValueError):  # ``from .m import Name``: Name is no module
            spec = None
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        found[current] = Path(spec.origin)  # type: ignore[arg-type]
        package = current if spec.submodule_search_locations is not None else current.rpartition(".")[0]
        for node in ast.walk(ast.parse(found[current].read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.partition(".")[0] == top]
            elif isinstance(node, ast.ImportFrom):
                relative = "." * node.level + (node.module or "")
                base = importlib.util.resolve_name(relative, package) if node.level else relative
                if base.partition(".")[0] == top:
                    todo += [base] + [f"{base}.{a.name}" for a in node.names]  # a name may be a submodule
    return found


def source_hash(package: Any) -> str:
    """A hash of every ``.py`` file of ``package`` (its one file for a single-module plugin)."""
    where = getattr(package, "__file__", None)
    paths = list(getattr(package, "__path__", []))
    if paths:  # a package, regular or namespace
        files = sorted((f, Path(root)) for root in paths for f in Path(root).rglob("*.py"))
    elif where:
        files = [(Path(where), Path(where).parent)]
    else:
        raise ValueError(f"{package!r} has no source files to fingerprint")
    digest = hashlib.sha256()
    for f, root in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
