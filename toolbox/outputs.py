"""Transactional run outputs: nothing is lost, whatever the run, its input or a ``kill -9`` do.

A command writes into a staging folder beside ``--out`` (inside it when ``--out`` is on another
filesystem than its parent) and moves its outputs into place only when it has succeeded, so a
failed or interrupted run leaves ``--out`` as it was. The move is journaled (:mod:`toolbox.commit`):
a commit killed at any instant is completed or undone by the next command on that ``--out``, and a
killed run's staging folder is removed by it. ``OUT/.toolbox-lock`` (``flock``) is held from
before the first write until after the commit: a second command on the same ``--out`` is refused
at once, and the kernel releases the lock of a killed one. ``--out`` may not overlap an input: it
is refused when it equals or lies inside an input, and when an input lies where the command would
write (``OUT/model``, ``OUT/artifacts``, ...). An output in the way is deleted only when the
manifest of the toolbox run that wrote it (``OUT/.toolbox-outputs.json``) shows it unchanged
since; anything else (a user's file, an older version's result) is moved to ``OUT/replaced-<time>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from . import atomic, commit
from .commit import COMPARE_OUTPUTS as COMPARE_OUTPUTS
from .commit import JOURNAL as JOURNAL
from .commit import MANIFEST as MANIFEST
from .commit import RUN_OUTPUTS as RUN_OUTPUTS
from .commit import SCAN_OUTPUTS as SCAN_OUTPUTS
from .commit import STAGING_MARK as STAGING_MARK
from .commit import STAGING_TAG as STAGING_TAG
from .errors import InputError

log = logging.getLogger(__name__)

LOCK = ".toolbox-lock"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def out_arg(text: str) -> Path:
    """``--out``'s argparse type: an empty name would write into the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty, which would write into the current directory: name a folder")
    return Path(text)


def check_out_dir(out: Path, inputs: Iterable[Path], outputs: tuple[str, ...] | None = RUN_OUTPUTS) -> None:
    """Refuse (before anything is read or written) an ``--out`` that is not a folder, overlaps an input,
    or holds an input where the command writes (``outputs``; None: names that depend on the data, so
    an input anywhere in ``--out`` is refused)."""
    out_r = _resolved(out)
    if Path(out).is_symlink() and not out_r.exists():
        raise InputError(f"--out {out} is a link to {os.readlink(out)}, which does not exist")
    if out_r.exists() and not out_r.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out_r.is_dir() and not os.access(out_r, os.W_OK | os.X_OK):
        raise InputError(f"--out {out} is not writable")
    written = [out_r] if outputs is None else [out_r / name for name in (*outputs, commit.MANIFEST)]
    for inp in inputs:
        inp_r = _resolved(inp)
        if _within(out_r, inp_r):
            raise InputError(
                f"--out {out} is {'the input' if out_r == inp_r else 'inside the input'} {inp}; "
                f"a run never writes into its inputs: choose an --out outside it"
            )
        clash = next((w for w in written if _within(inp_r, w)), None)
        if clash is not None and outputs is None:
            raise InputError(f"the input {inp} lies in --out {out}, where this command writes: choose another --out")
        if clash is not None:
            raise InputError(
                f"the input {inp} lies in {clash}, which this run would replace: copy the input "
                f"elsewhere or choose another --out"
            )
    for name in outputs or ():  # a read-only folder could not be moved aside at the commit (unless root)
        path = out_r / name
        if path.is_dir() and not path.is_symlink() and not os.access(path, os.W_OK):
            raise InputError(
                f"{path} is read-only, so this command could not replace it: make it writable (chmod u+w) "
                f"or choose another --out"
            )


def kept_folders(out: Path) -> set[str]:
    """The ``replaced-*`` / ``unplaced-*`` folders in ``out`` (a summary prints the ones a run added)."""
    if not Path(out).is_dir():
        return set()
    return {p.name for p in Path(out).iterdir() if p.name.startswith((commit.REPLACED, commit.UNPLACED))}


def set_aside(out: Path, names: Iterable[str], ours: Callable[[Path], bool]) -> Path | None:
    """Move each of ``names`` in ``out`` that ``ours`` does not recognise (a user's file where a command
    writes a fixed name) to ``OUT/replaced-<time>/``; return that folder."""
    aside = None
    for name in names:
        path = Path(out) / name
        if commit.present(path) and not ours(path):
            aside = aside or commit.new_folder(Path(out))
            os.replace(path, aside / name)
    if aside is not None:
        log.warning("files in the way that this toolbox did not write were moved to %s", aside)
    return aside


def holder(fd: int, tries: int = 20) -> str:
    """Who holds the lock on ``fd``, as " (pid P on HOST)"; the holder writes it just after locking,
    so an empty file is read again for up to 0.2 s ("" when it never says)."""
    for attempt in range(tries):
        try:
            held = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            return f" (pid {int(held['pid'])} on {str(held['host'])[:100]})"
        except (ValueError, KeyError, TypeError):
            if attempt < tries - 1:
                time.sleep(0.01)
    return ""


class OutLock:
    """An exclusive ``flock`` on ``OUT/.toolbox-lock`` for one command: a second command on the same
    OUT is refused; the kernel drops the lock when its holder dies, so a killed run never leaves it stuck."""

    def __init__(self, out: Path) -> None:
        self.out, self.path = out, out / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        for _ in range(100):  # another holder may remove the file between our open and our lock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
            except OSError as err:
                raise InputError(f"--out {self.out}: cannot open its lock {self.path} ({err.strerror})") from None
            try:
                self._take(fd)
            except BaseException:
                os.close(fd)
                raise
            if self.fd is not None:
                return
            os.close(fd)
        raise InputError(f"--out {self.out}: its lock {self.path} keeps changing; is another toolbox run starting?")

    def _take(self, fd: int) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{self.path} is not a regular file: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"--out {self.out} is in use by another toolbox run{holder(fd)}: wait for it to finish or "
                "choose another --out"
            ) from None
        if self._same(fd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
            self.fd = fd

    def _same(self, fd: int) -> bool:
        try:
            st, at = os.fstat(fd), os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (at.st_dev, at.st_ino)

    def release(self) -> None:
        """Remove the lock file while still holding it (a waiting opener then retries on a fresh one)."""
        if self.fd is None:
            return
        if self._same(self.fd):
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


class Staging:
    """``with Staging(out) as stage: ... write under stage.dir ...; stage.commit()``.

    Entering locks OUT, completes or undoes a commit a killed run left, and sweeps killed runs'
    staging folders. Leaving the block without ``commit`` (an error, Ctrl-C, SIGTERM) removes the
    staging folder, which only this run wrote, and leaves ``--out`` as it was. The staging folder
    sits beside ``--out`` when both are on one filesystem (the final moves are then renames), else inside it.
    """

    def __init__(self, out: Path, outputs: tuple[str, ...] = RUN_OUTPUTS, main: str = "result.json") -> None:
        self.out = _resolved(out)
        self.outputs, self.main = outputs, main  # the names this command writes; commit returns OUT/main
        self.path: Path | None = None
        self.kept: Path | None = None  # where earlier outputs in the way were moved, if anywhere
        self._created_out = False
        self._keep = False
        self._lock = OutLock(self.out)

    @property
    def dir(self) -> Path:
        assert self.path is not None, "enter the Staging block first"
        return self.path

    def __enter__(self) -> Staging:
        out = self.out
        self._created_out = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create --out {out}: {err.strerror or err}") from err
        try:
            if not os.access(out, os.W_OK | os.X_OK):
                raise InputError(f"--out {out} is not writable")
            self._lock.acquire()
            commit.checkpoint("locked")
            self.kept = commit.recover(out)
            beside = out.parent.stat().st_dev == out.stat().st_dev and os.access(out.parent, os.W_OK | os.X_OK)
            where = out.parent if beside else out
            sweep_stale(where, out.name, commit.journal_folders(out))
            self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_MARK}", dir=where))
            atomic.honour_umask(self.path, directory=True)
            commit.tag(self.path)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self.path.exists() and not self._keep:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()
        if self._created_out and not (self.out / MANIFEST).exists():
            with contextlib.suppress(OSError):  # only if still empty: this run created it and wrote nothing
                self.out.rmdir()

    def commit(self) -> Path:
        """Move the staged outputs into ``--out`` under a journal; return ``OUT/<main>``.

        SIGINT and SIGTERM wait for the commit; a kill -9 during it is repaired by the next command on OUT.
        """
        with _signals_deferred():
            try:
                kept = commit.commit(self.out, self.dir, self.outputs)
            except commit.CommitError:
                self._keep = True  # what is left in staging is named in the message (or in the journal)
                raise
        self.kept = kept or self.kept
        return self.out / self.main


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


def sweep_stale(where: Path, name: str, keep: Collection[str] = ()) -> None:
    """Remove staging folders of runs that were killed (SIGKILL, out of memory, a cluster's time limit):
    only folders of ``--out`` ``name`` carrying this toolbox's tag, from this host, whose process is
    gone, and none a commit journal still names (``keep``). Names are compared, never globbed (``o[1]``)."""
    prefix = f".{name}{STAGING_MARK}"
    for path in Path(where).iterdir():
        if not path.name.startswith(prefix) or path.name in keep or path.is_symlink() or not path.is_dir():
            continue
        try:
            tag = commit.read_json(path / STAGING_TAG)
            if tag.get("host") != socket.gethostname() or _alive(int(tag["pid"])):
                continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
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
