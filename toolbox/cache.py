"""The user's cache directory and content-keyed, lock-guarded cache entries.

Root: ``$TOOLBOX_CACHE``, else ``$XDG_CACHE_HOME/invertune-toolbox``, else
``~/.cache/invertune-toolbox``. An entry's key is a hash of everything that determines
its content; entries are built in a temporary directory and renamed into place, under a
file lock, so concurrent processes never see half an entry.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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


NOT_HASHED = frozenset({"toolbox", "torch"})  # the host (its version stands for it) and torch, too large to scan


def stamp_code(entry: Path, code: Any, result: Path | None, adopted: bool = False) -> None:
    """``ENTRY.code.json`` beside a cache entry (its maker owns the entry): the code that made it and the
    sha256 of ``result``, what it made; None while it is being made, which matches nothing, so a build
    killed between its result and its stamp is made again."""
    from . import atomic

    made = hashlib.sha256(result.read_bytes()).hexdigest() if result is not None else None
    stamp = {"code": code, "result_sha256": made, **({"adopted": True} if adopted else {})}
    atomic.write_json(Path(f"{entry}.code.json"), stamp)


def made_by(entry: Path, code: Any, result: Path) -> bool:
    """Whether ``result`` in ``entry`` was made by ``code``, as its stamp says. An entry made before
    stamps were written is taken as this code's, once, and stamped so: a later edit makes it again."""
    saved = Path(f"{entry}.code.json")
    if not saved.is_file():
        log.warning("%s records no code: taken as this code's from now on", entry)
        stamp_code(entry, code, result, adopted=True)
        return True
    try:
        stamp = json.loads(saved.read_text())
        made = hashlib.sha256(result.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False  # unreadable: made again rather than trusted
    if not isinstance(stamp, dict) or stamp.get("code") != code or stamp.get("result_sha256") != made:
        log.info("%s was not made by this code; making it again", entry)
        return False
    return True


def carry_result(src: Path, dst: Path) -> bool:
    """Copy a finished entry's ``result.json`` and code stamp from ``src`` to ``dst``: to a folder kept in
    git, or from one into this machine's cache, so the next machine resumes a long grid. Only a result its
    stamp vouches for travels (not pending, not damaged, not adopted: adoption holds on one machine,
    once), and only the result, not the run's other files."""
    from . import atomic

    try:
        stamp = Path(f"{src}.code.json").read_bytes()
        data = (src / "result.json").read_bytes()
        saved = json.loads(stamp)
        vouched = saved.get("result_sha256") == hashlib.sha256(data).hexdigest() and not saved.get("adopted")
    except (OSError, ValueError, AttributeError):
        return False
    target, target_stamp = dst / "result.json", Path(f"{dst}.code.json")
    same = target.is_file() and target_stamp.is_file()
    same = same and (target.read_bytes(), target_stamp.read_bytes()) == (data, stamp)
    if not vouched or same:
        return False
    dst.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(target_stamp, stamp)  # the stamp first: killed before the result, they disagree
    atomic.write_bytes(target, data)
    return True


def recorded_code(path: Path, record: dict[str, Any], field: str, code: str | None, what: str) -> dict[str, Any] | None:
    """``record`` (the JSON at ``path``) when its ``field`` says attack code ``code`` built it, else None:
    build it again. One built before codes were recorded is taken as this code's, once, and stamped so
    (``FIELD_adopted``): a later edit rebuilds it. ``code`` None: nothing to record (no attack trained it)."""
    from . import atomic

    if field not in record:
        if code is None:
            return record
        log.warning("%s %s records no attack code: taken as this code's build from now on", what, path.parent.name)
        record = {**record, field: code, f"{field}_adopted": True}
        atomic.write_json(path, record)
        return record
    if record[field] != code:
        log.info("%s %s: its attack's code changed since; building it again", what, path.parent.name)
        return None
    return record


def module_fingerprint(obj: Any) -> str:
    """The code of one class among independent siblings (an attack of the attacks package): the
    module defining ``obj``, and those of the classes it inherits from outside the host, the standard
    library and torch, each with the modules of its own top-level package it imports, transitively,
    read from the source; and the host's version (a host edit that changes results bumps it, or
    ``CACHE_FORMAT``). Editing or adding a sibling it does not import leaves it as it was (a
    whole-package hash would rebuild every cached attack for one). Not for a package that registers
    its parts dynamically (a defense's detectors): :func:`code_fingerprint` there."""
    from . import __version__

    roots: list[tuple[str, str, str]] = []
    for cls in obj.__mro__ if isinstance(obj, type) else (obj,):
        module = inspect.getmodule(cls)
        top = (module.__name__ if module else "").partition(".")[0]
        if module and getattr(module, "__file__", None) and top not in sys.stdlib_module_names | NOT_HASHED:
            roots.append((module.__name__, str(module.__file__), module.__package__ or ""))
    if not roots:  # made at run time: no source to read, so it is named, not hashed
        return f"{__version__}-{getattr(obj, '__qualname__', obj)}"
    return _module_fingerprint(tuple(dict.fromkeys(roots)))


@functools.cache
def _module_fingerprint(roots: tuple[tuple[str, str, str], ...]) -> str:
    from . import __version__

    files: dict[str, Path] = {}
    for name, path, package in roots:
        files |= _import_closure(name, Path(path), package)
    digest = hashlib.sha256()
    for module, source in sorted(files.items()):
        digest.update(module.encode() + b"\0" + source.read_bytes() + b"\0")
    return f"{__version__}-{digest.hexdigest()[:16]}"


def _import_closure(name: str, path: Path, package: str) -> dict[str, Path]:
    """Module ``name`` (source ``path``, in ``package``) and the modules of its top-level package it
    imports, transitively: module name -> source file. Imports are read, not run."""
    top = name.partition(".")[0] if name != "__main__" else ""
    found, packages = {name: path}, set()
    todo = collections.deque(_imported(path, package, top))
    while todo:
        current, guessed = todo.popleft()
        if current in found or (guessed and current.rpartition(".")[0] not in packages):
            continue  # ``from m import Name``: Name is a submodule only if m is a package
        try:
            spec = importlib.util.find_spec(current)  # imports its parent packages, not the module
        except Exception:  # noqa: BLE001  (a name that is no module, or a broken parent: not code we hash)
            continue
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        found[current] = Path(spec.origin)  # type: ignore[arg-type]
        is_package = spec.submodule_search_locations is not None
        if is_package:
            packages.add(current)
        todo += _imported(found[current], current if is_package else current.rpartition(".")[0], top)
    return found


def _imported(path: Path, package: str, top: str) -> list[tuple[str, bool]]:
    """The modules of package ``top`` that the source at ``path`` imports (anywhere in it), each with
    whether it is only a guess (``from m import Name``, Name perhaps a submodule)."""
    out: list[tuple[str, bool]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, False) for a in node.names if top and a.name.partition(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            try:
                base = importlib.util.resolve_name(relative, package) if node.level else relative
            except (ImportError, ValueError):  # beyond the top-level package
                continue
            if top and base.partition(".")[0] == top:
                out += [(base, False)] + [(f"{base}.{a.name}", True) for a in node.names]
    return out


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
