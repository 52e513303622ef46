"""Transactional run outputs: nothing is lost, whatever the run and its input do.

A run writes into a staging folder beside ``--out`` (inside it when ``--out`` is on another
filesystem than its parent) and moves its outputs into place only when it has succeeded, so a
failed or interrupted run leaves ``--out`` as it was; a killed run's staging folder is removed by
the next run into the same place. ``--out`` may not
overlap an input: it is refused when it equals or lies inside an input, and when an input lies
where the run would write (``OUT/model``, ``OUT/artifacts``, ...). An output in the way is
deleted only when the manifest of the toolbox run that wrote it (``OUT/.toolbox-outputs.json``)
shows it unchanged since; anything else (a user's file, an older version's result) is moved to
``OUT/replaced-<time>/`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import atomic
from .errors import InputError

log = logging.getLogger(__name__)

# In the order they are moved into place: result.json last, so its presence means "complete".
RUN_OUTPUTS = ("model", "artifacts", "result.csv", "result.json")
SCAN_OUTPUTS = ("scores.csv", "scan-artifacts", "scan.json")  # toolbox scan-data's, scan.json last
MANIFEST = ".toolbox-outputs.json"
STAGING_MARK = ".run-"
STAGING_TAG = ".toolbox-staging.json"  # pid and host of the run that owns a staging folder


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out_dir(out: Path, inputs: Iterable[Path], outputs: tuple[str, ...] = RUN_OUTPUTS) -> None:
    """Refuse (before anything is read or written) an ``--out`` that overlaps an input, or an input
    where the command writes (``outputs``)."""
    out_r = _resolved(out)
    if out_r.exists() and not out_r.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    written = [out_r / name for name in (*outputs, MANIFEST)]
    for inp in inputs:
        inp_r = _resolved(inp)
        if _within(out_r, inp_r):
            raise InputError(
                f"--out {out} is {'the input' if out_r == inp_r else 'inside the input'} {inp}; "
                f"a run never writes into its inputs: choose an --out outside it"
            )
        clash = next((w for w in written if _within(inp_r, w)), None)
        if clash is not None:
            raise InputError(
                f"the input {inp} lies in {clash}, which this run would replace: copy the input "
                f"elsewhere or choose another --out"
            )


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
        return {k: v for k, v in owned.items() if k in RUN_OUTPUTS + SCAN_OUTPUTS and isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class Staging:
    """``with Staging(out) as stage: ... write under stage.path ...; stage.commit()``.

    Leaving the block without ``commit`` (an error, Ctrl-C, SIGTERM) removes the staging folder,
    which only this run wrote, and leaves ``--out`` as it was. The staging folder sits beside
    ``--out`` when both are on one filesystem (the final moves are then renames), else inside it.
    """

    def __init__(self, out: Path, outputs: tuple[str, ...] = RUN_OUTPUTS, main: str = "result.json") -> None:
        self.out = _resolved(out)
        self.outputs, self.main = outputs, main  # the names this command writes; commit returns OUT/main
        self.path: Path | None = None
        self._created_out = False
        self._keep = False

    def __enter__(self) -> Staging:
        out = self.out
        self._created_out = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create --out {out}: {err.strerror or err}") from err
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"--out {out} is not writable")
        beside = out.parent.stat().st_dev == out.stat().st_dev and os.access(out.parent, os.W_OK | os.X_OK)
        where = out.parent if beside else out
        sweep_stale(where, out.name)
        self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_MARK}", dir=where))
        atomic.honour_umask(self.path, directory=True)
        (self.path / STAGING_TAG).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self.path.exists() and not self._keep:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._created_out and self.path is not None and not (self.out / MANIFEST).exists():
            with contextlib.suppress(OSError):  # only if still empty: this run created it and wrote nothing
                self.out.rmdir()

    def commit(self) -> Path:
        """Move the staged outputs into ``--out``; return ``OUT/<main>`` (``result.json`` for a run).

        Renames only until the new outputs are in place (Ctrl-C and SIGTERM wait for them);
        then the earlier outputs are deleted where the manifest vouches for them, else set aside.
        """
        assert self.path is not None
        out, owned = self.out, _read_manifest(self.out)
        holding = Path(tempfile.mkdtemp(prefix=".toolbox-previous-", dir=out))
        previous: list[str] = []
        with _signals_deferred():
            try:
                for name in self.outputs:
                    if (out / name).exists() or (out / name).is_symlink():
                        os.replace(out / name, holding / name)
                        previous.append(name)
                for name in self.outputs:
                    if (self.path / name).exists():
                        os.replace(self.path / name, out / name)
                # another command's outputs in the same folder stay vouched for
                manifest = {
                    name: files
                    for name, files in owned.items()
                    if name not in self.outputs and (out / name).exists() and _files(out / name) == files
                }
                manifest.update({name: _files(out / name) for name in self.outputs if (out / name).exists()})
                atomic.write_json(out / MANIFEST, {"written_by": "toolbox", "outputs": manifest})
            except BaseException:
                self._keep = True  # nothing is deleted: the new outputs are in staging or OUT, the old in holding
                log.error(
                    "could not move this run's outputs into %s; what is not there is in %s, the earlier "
                    "outputs are in %s",
                    out,
                    self.path,
                    holding,
                )
                raise
        aside: Path | None = None
        for name in previous:
            if owned.get(name) == _files(holding / name):
                _remove(holding / name)
            else:
                aside = aside or self._aside_dir()
                os.replace(holding / name, aside / name)
        holding.rmdir()
        if aside is not None:
            log.warning("outputs in the way that no earlier run of this toolbox left unchanged were moved to %s", aside)
        return out / self.main

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


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def sweep_stale(where: Path, name: str) -> None:
    """Remove staging folders of runs that were killed (SIGKILL, out of memory, a cluster's time limit):
    only folders carrying this toolbox's tag, from this host, whose process is gone."""
    for path in where.glob(f".{name}{STAGING_MARK}*"):
        try:
            tag = json.loads((path / STAGING_TAG).read_text(encoding="utf-8"))
            if tag.get("host") != socket.gethostname() or _alive(int(tag["pid"])):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        log.info("removing %s, left by a run that was killed", path)
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
