"""Transactional run outputs: nothing is lost, whatever the run and its input do.

A run writes into a staging folder beside ``--out`` and moves its outputs into place only when
it has succeeded, so a failed or interrupted run leaves ``--out`` as it was. ``--out`` may not
overlap an input: it is refused when it equals or lies inside an input, and when an input lies
where the run would write (``OUT/model``, ``OUT/artifacts``, ...). An output in the way is
deleted only when the manifest of the toolbox run that wrote it (``OUT/.toolbox-outputs.json``)
shows it unchanged since; anything else (a user's file, an older version's result) is moved to
``OUT/replaced-<time>/`` instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from . import atomic
from .errors import InputError

log = logging.getLogger(__name__)

# In the order they are moved into place: result.json last, so its presence means "complete".
RUN_OUTPUTS = ("model", "artifacts", "result.csv", "result.json")
MANIFEST = ".toolbox-outputs.json"
STAGING_MARK = ".run-"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out_dir(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse (before anything is read or written) an ``--out`` that overlaps an input."""
    out_r = _resolved(out)
    if out_r.exists() and not out_r.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    written = [out_r / name for name in (*RUN_OUTPUTS, MANIFEST)]
    for inp in inputs:
        inp_r = _resolved(inp)
        if _within(out_r, inp_r):
            raise InputError(f"--out {out} is {'the input' if out_r == inp_r else 'inside the input'} {inp}; "
                             f"a run never writes into its inputs: choose an --out outside it")
        clash = next((w for w in written if _within(inp_r, w)), None)
        if clash is not None:
            raise InputError(f"the input {inp} lies in {clash}, which this run would replace: copy the input "
                             f"elsewhere or choose another --out")


def _files(path: Path) -> dict[str, list[int]]:
    """``relative path -> [size, mtime_ns]`` of every file at or under ``path`` (links not followed)."""
    if path.is_symlink() or path.is_file():
        st = path.lstat()
        return {path.name: [st.st_size, st.st_mtime_ns, int(path.is_symlink())]}
    out: dict[str, list[int]] = {}
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            p = Path(root) / name
            if p.is_symlink() or p.is_file():
                st = p.lstat()
                out[str(p.relative_to(path.parent))] = [st.st_size, st.st_mtime_ns, int(p.is_symlink())]
            elif not p.is_dir():
                out[str(p.relative_to(path.parent))] = [-1, -1, -1]  # a fifo or socket is never ours
    return out


def _read_manifest(out: Path) -> dict[str, dict[str, list[int]]]:
    try:
        doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        owned = doc["outputs"]
        return {k: v for k, v in owned.items() if k in RUN_OUTPUTS and isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class Staging:
    """``with Staging(out) as stage: ... write under stage.path ...; stage.commit()``.

    Leaving the block without ``commit`` (an error, Ctrl-C, SIGTERM) removes the staging folder,
    which only this run wrote, and leaves ``--out`` untouched.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path: Path | None = None

    def __enter__(self) -> "Staging":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}{STAGING_MARK}", dir=self.out.parent))
        atomic.honour_umask(self.path, directory=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> Path:
        """Move the staged outputs into ``--out``; return ``OUT/result.json``."""
        assert self.path is not None
        self.out.mkdir(parents=True, exist_ok=True)
        owned = _read_manifest(self.out)
        aside: Path | None = None
        for name in RUN_OUTPUTS:
            dst = self.out / name
            if dst.exists() or dst.is_symlink():
                if owned.get(name) == _files(dst):
                    _remove(dst)
                else:
                    aside = aside or self._aside_dir()
                    os.replace(dst, aside / name)
            src = self.path / name
            if src.exists():
                os.replace(src, dst)
        if aside is not None:
            log.warning("outputs in the way that no earlier run of this toolbox left unchanged were moved to %s",
                        aside)
        manifest = {name: _files(self.out / name) for name in RUN_OUTPUTS if (self.out / name).exists()}
        atomic.write_json(self.out / MANIFEST, {"written_by": "toolbox run", "outputs": manifest})
        return self.out / "result.json"

    def _aside_dir(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for i in range(1000):
            path = self.out / f"replaced-{stamp}{'' if i == 0 else f'-{i}'}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
        raise OSError(f"cannot create a replaced-* folder in {self.out}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()

