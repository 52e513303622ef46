"""The journaled commit of a command's outputs into ``--out``: a ``kill -9`` at any instant loses nothing.

Before its first rename a commit writes ``OUT/.toolbox-commit.json`` (atomically, fsync'd): the
staging folder, the holding folder (``OUT/replaced-<time>/``, visible), the names it moves and
its phase. The earlier outputs in the way move into the holding folder, then the new ones into
``OUT``; the manifest is written and the journal records which earlier outputs the manifest
vouches for (those are deleted; the rest, a user's file among them, stay in the holding folder).
The next command on that ``OUT`` (it holds OUT's lock, so the journal's owner is gone) finds the
journal of a killed commit and completes it when the new outputs were all in place, else puts
every earlier output back (:func:`recover`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic
from .errors import InputError, one_line

log = logging.getLogger(__name__)

# In the order they are moved into place: the main document last, so its presence means "complete".
RUN_OUTPUTS = ("model", "artifacts", "result.csv", "result.json")
SCAN_OUTPUTS = ("scores.csv", "scan-artifacts", "scan.json")  # toolbox scan-data's, scan.json last
COMPARE_OUTPUTS = ("compare_scatter.png", "compare.csv", "compare.json", "compare.md")  # toolbox compare's
KNOWN_OUTPUTS = RUN_OUTPUTS + SCAN_OUTPUTS + COMPARE_OUTPUTS
MANIFEST = ".toolbox-outputs.json"
JOURNAL = ".toolbox-commit.json"
STAGING_MARK = ".run-"
STAGING_TAG = ".toolbox-staging.json"  # pid and host of the run that owns a staging folder
REPLACED, UNPLACED = "replaced-", "unplaced-"  # folders a user finds in OUT: set-aside earlier files, unplaced new ones
KILL_ENV, WAIT_ENV = "TOOLBOX_TEST_KILL_AT", "TOOLBOX_TEST_WAIT_AT"


class CommitError(RuntimeError):
    """The outputs could not be moved into place; the message says where everything is."""


def checkpoint(step: str) -> None:
    """Test hook (tests/test_commit_recovery.py): ``TOOLBOX_TEST_KILL_AT=STEP`` kills this process
    (SIGKILL) right after STEP; ``TOOLBOX_TEST_WAIT_AT=STEP:FILE`` waits there (60 s at most) for FILE."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, until = os.environ.get(WAIT_ENV, "").partition(":")
    deadline = time.monotonic() + 60
    while at == step and not os.path.exists(until) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_json(path: Path, limit: int = 16 << 20) -> Any:
    """A JSON file of this toolbox's (manifest, journal, tag) or None when absent; read only when it
    is a regular file (a FIFO in its place must not block), else ValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"{path} cannot be opened ({err.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is over {limit} bytes")
    return json.loads(data.decode("utf-8"))


def present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def files(path: Path) -> dict[str, list[int]]:
    """``relative path -> [size, mtime_ns, is_link]`` of every file at or under ``path`` (links not followed)."""
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


def read_manifest(out: Path) -> dict[str, dict[str, list[int]]]:
    """What the manifest in ``out`` vouches for; an unreadable one vouches for nothing (all is kept)."""
    try:
        owned = read_json(out / MANIFEST)["outputs"]
        return {k: v for k, v in owned.items() if k in KNOWN_OUTPUTS and isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def new_folder(out: Path, prefix: str = REPLACED) -> Path:
    """A fresh, visible ``OUT/<prefix><time>[-n]/`` (the umask's mode)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for i in range(1000):
        path = out / f"{prefix}{stamp}{'' if i == 0 else f'-{i}'}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OSError(f"cannot create a {prefix}* folder in {out}")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _plain(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


@dataclass
class Journal:
    """One commit's record in ``OUT/.toolbox-commit.json``; folders by name, so a renamed OUT still recovers."""

    out: Path
    staging: str  # a folder's name, beside OUT (``beside``) or inside it
    beside: bool
    holding: str | None  # ``replaced-<time>`` inside OUT; None when nothing was in the way
    names: list[str]  # every output the command writes
    held: list[str]  # earlier outputs in the way, moved into the holding folder first
    incoming: list[str]  # the new outputs, moved into OUT after
    owned: dict[str, Any]  # the earlier manifest: what it vouched for
    phase: str = "moving"  # "placed": the new outputs are in place and ``drop`` is decided
    drop: list[str] = field(default_factory=list)  # earlier outputs the manifest vouches for: deleted

    @property
    def staging_dir(self) -> Path:
        return (self.out.parent if self.beside else self.out) / self.staging

    @property
    def holding_dir(self) -> Path | None:
        return None if self.holding is None else self.out / self.holding

    def save(self) -> None:
        doc = {k: v for k, v in vars(self).items() if k != "out"}
        atomic.write_json(self.out / JOURNAL, {"journal": "toolbox.commit/1", "pid": os.getpid(), **doc})
        atomic.fsync_dir(self.out)

    @classmethod
    def load(cls, out: Path) -> Journal | None:
        """The journal in ``out``, checked: it moves only this toolbox's outputs between OUT and its own folders."""
        where = out / JOURNAL
        try:
            doc = read_json(where)
            if doc is None:
                return None
            j = cls(out=out, **{k: doc[k] for k in cls.__dataclass_fields__ if k != "out"})
            ok = _plain(j.staging) and j.staging.startswith(".") and STAGING_MARK in j.staging
            ok &= j.holding is None or (_plain(j.holding) and j.holding.startswith(REPLACED))
            ok &= set(j.names) <= set(KNOWN_OUTPUTS) and set(j.held + j.incoming + j.drop) <= set(j.names)
            ok &= isinstance(j.owned, dict) and set(j.owned) <= set(KNOWN_OUTPUTS)
            ok &= j.phase in ("moving", "placed") and isinstance(j.beside, bool)
            ok &= all(isinstance(x, list) for x in (j.names, j.held, j.incoming, j.drop))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{where} is not a commit journal of this toolbox ({err}); move it out of {out}") from None
        if not ok:
            raise InputError(f"{where} names folders or outputs this toolbox never writes; move it out of {out}")
        return j


def journal_folders(out: Path) -> set[str]:
    """The staging folder a journal in ``out`` still names (never swept while it does)."""
    try:
        j = Journal.load(out)
    except InputError:
        return {p.name for p in out.parent.iterdir()} | {p.name for p in out.iterdir()}  # unknown: keep all
    return set() if j is None else {j.staging}


def commit(out: Path, staging: Path, names: tuple[str, ...]) -> Path | None:
    """Move ``staging``'s outputs into ``out`` under a journal; return the folder where earlier outputs
    in the way were kept (None: nothing kept). On failure, raise :class:`CommitError` saying where all is."""
    held = [n for n in names if present(out / n)]
    j = Journal(
        out=out,
        staging=staging.name,
        beside=staging.parent != out,
        holding=None,
        names=list(names),
        held=held,
        incoming=[n for n in names if present(staging / n)],
        owned=read_manifest(out),
    )
    try:
        j.holding = new_folder(out).name if held else None
        j.save()
        checkpoint("journal")
        for name in j.held:
            os.replace(out / name, out / str(j.holding) / name)
            checkpoint(f"held:{name}")
        for name in j.incoming:
            os.replace(staging / name, out / name)
            checkpoint(f"placed:{name}")
        atomic.fsync_dir(out)
        return finish(j)
    except Exception as err:
        raise CommitError(_undo(j, err)) from err


def _complete(j: Journal) -> bool:
    """The new outputs are all in OUT and every earlier one left it."""
    holding = j.holding_dir
    return all(holding is not None and present(holding / n) for n in j.held) and all(
        present(j.out / n) and not present(j.staging_dir / n) for n in j.incoming
    )


def _undo(j: Journal, err: Exception) -> str:
    """After a failed move: all back as it was (the new outputs kept, visibly), or the journal left for the next run.
    The message says where things are first: the CLI shortens long lines at their end."""
    why = f"could not move them into place: {one_line(err)}"
    if (j.out / JOURNAL).exists() and j.phase == "moving" and not _complete(j):
        try:
            roll_back(j)
        except OSError as again:
            return (
                f"the earlier outputs are in {j.holding_dir}, and the next toolbox run into {j.out} puts them back "
                f"(this run's, in {j.staging_dir}, are then dropped) ({why}; nor put back: {one_line(again)})"
            )
    elif (j.out / JOURNAL).exists():
        return f"this run's outputs are in {j.out}, the earlier ones in {j.holding_dir}; the next run tidies up ({why})"
    elif j.holding_dir is not None and j.holding_dir.is_dir() and not any(j.holding_dir.iterdir()):
        j.holding_dir.rmdir()  # made before the journal could be written: nothing was moved
    kept = j.staging_dir
    try:  # the new outputs survive the next run: untagged (never swept), under a visible name in OUT
        (kept / STAGING_TAG).unlink(missing_ok=True)
        kept = new_folder(j.out, UNPLACED)
        os.replace(j.staging_dir, kept)
    except OSError:
        kept = j.staging_dir if j.staging_dir.exists() else kept
    return f"{j.out} is as it was and this run's outputs are in {kept} ({why})"


def roll_back(j: Journal) -> None:
    """Each new output back into staging, each earlier one back where it was; then the journal goes."""
    holding, staging = j.holding_dir, j.staging_dir
    for name in reversed(j.incoming):
        moved_away = name not in j.held or (holding is not None and present(holding / name))
        if not present(staging / name) and moved_away and present(j.out / name):
            staging.mkdir(exist_ok=True)
            os.replace(j.out / name, staging / name)
    for name in reversed(j.held):
        if holding is not None and present(holding / name) and not present(j.out / name):
            os.replace(holding / name, j.out / name)
    if holding is not None and holding.is_dir() and not any(holding.iterdir()):
        holding.rmdir()
    atomic.fsync_dir(j.out)
    (j.out / JOURNAL).unlink()
    atomic.fsync_dir(j.out)


def finish(j: Journal) -> Path | None:
    """The manifest, then the earlier outputs it vouches for deleted and the rest kept; then the journal goes."""
    holding = j.holding_dir
    if j.phase == "moving":
        manifest = {  # another command's outputs in the same folder stay vouched for
            n: f for n, f in j.owned.items() if n not in j.names and present(j.out / n) and files(j.out / n) == f
        }
        manifest.update({n: files(j.out / n) for n in j.names if present(j.out / n)})
        atomic.write_json(j.out / MANIFEST, {"written_by": "toolbox", "outputs": manifest})
        checkpoint("manifest")
        j.drop = [n for n in j.held if holding is not None and j.owned.get(n) == files(holding / n)]
        j.phase = "placed"
        j.save()
        checkpoint("decided")
    for name in j.drop:
        assert holding is not None
        try:
            if present(holding / name):
                remove(holding / name)
        except OSError as err:  # not deleted is not lost: it stays in the holding folder
            log.warning("could not delete the earlier %s (%s); it stays in %s", name, one_line(err), holding)
        checkpoint(f"dropped:{name}")
    kept = holding if holding is not None and holding.is_dir() and any(holding.iterdir()) else None
    if holding is not None and kept is None and holding.is_dir():
        holding.rmdir()
    (j.out / JOURNAL).unlink()
    atomic.fsync_dir(j.out)
    checkpoint("done")
    if kept is not None:
        log.warning("outputs in the way that no earlier run of this toolbox left unchanged were moved to %s", kept)
    return kept


def recover(out: Path) -> Path | None:
    """Complete or undo a commit into ``out`` that was killed (the caller holds OUT's lock, so no commit
    is running); return the folder where earlier outputs were kept, if any."""
    _reveal_previous(out)
    j = Journal.load(out)
    if j is None:
        return None
    if j.phase == "moving" and not _complete(j):
        roll_back(j)
        log.warning("a toolbox run into %s was killed while moving its outputs: the earlier outputs are back", out)
        return None
    log.warning("a toolbox run into %s was killed while committing its outputs: its commit is now complete", out)
    return finish(j)


def _reveal_previous(out: Path) -> None:
    """Hidden ``.toolbox-previous-*`` folders of older versions killed mid-commit become visible ``replaced-*``."""
    for path in sorted(out.glob(".toolbox-previous-*")):
        if path.is_dir() and not path.is_symlink():
            dest = new_folder(out)
            os.replace(path, dest)  # onto the empty folder just made
            atomic.honour_umask(dest, directory=True)
            log.warning("earlier outputs an older toolbox left hidden in %s are in %s", path, dest)


def tag(staging: Path) -> None:
    """Mark ``staging`` with its owner, so a later run sweeps it only once that process is gone."""
    (staging / STAGING_TAG).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    )
