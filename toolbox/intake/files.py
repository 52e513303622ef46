"""Files from outside: only regular files are opened, and reads are bounded.

A FIFO, socket, device or directory where a file is expected is refused from ``os.stat`` alone,
before anything opens it (opening a FIFO blocks until a writer comes; reading ``/dev/zero`` never
ends). The open itself is non-blocking and checked again with ``fstat``, so a file swapped for a
FIFO between the two checks cannot hang the reader either. Libraries that open a path themselves
(safetensors, ``torch.load``, open_clip) get the path only after :func:`regular_file` passed it.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..errors import InputError

MAX_TEXT_BYTES = 16 << 20  # class names, templates, configs, specs: ImageNet-21k's names are 1 MB
MAX_TABLE_BYTES = 4 << 30  # dataset tables (captions CSV, COCO JSON): CC12M's CSV is about 2 GB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a regular file", "a FIFO (named pipe)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def regular_file(path: str | os.PathLike[str], what: str = "file", limit: int | None = None) -> Path:
    """``path`` if it is (a link to) a regular file of at most ``limit`` bytes; else an InputError
    that names it and says what it is. Never opens it."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {p}") from None
    except OSError as err:  # a loop of links, a name too long, a folder we may not enter
        raise InputError(f"cannot read {what} {p}: {err.strerror or err}") from None
    return _checked(p, st, what, limit)


def _checked(p: Path, st: os.stat_result, what: str, limit: int | None) -> Path:
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {p} is {kind_of(st.st_mode)}, not a regular file")
    if limit is not None and st.st_size > limit:
        raise InputError(f"{what} {p} is {_size(st.st_size)}, over the limit of {_size(limit)} for such a file")
    return p


def is_regular(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is (a link to) a regular file: for format detection, which must never block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_special(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a directory (else None)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else kind_of(mode)


def refuse_special(folder: str | os.PathLike[str], what: str = "folder") -> None:
    """Refuse a folder holding a FIFO, socket or device: a library that globs it (open_clip picks
    any ``*.bin``, transformers any ``*.safetensors``) would open it and block."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError as err:
        raise InputError(f"cannot read {what} {folder}: {err.strerror or err}") from None
    for entry in entries:
        kind = is_special(entry)
        if kind:
            raise InputError(
                f"{what} {folder} holds {entry.name}, which is {kind}; only files and folders may be there"
            )


@contextmanager
def open_binary(path: str | os.PathLike[str], what: str = "file", limit: int | None = None) -> Iterator[IO[bytes]]:
    """A regular file opened for reading (non-blocking open, checked by ``fstat`` once open)."""
    p = regular_file(path, what, limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as err:
        raise InputError(f"cannot read {what} {p}: {err.strerror or err}") from None
    try:
        _checked(p, os.fstat(fd), what, limit)  # the name may have been swapped since the stat
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_bytes(path: str | os.PathLike[str], what: str = "file", limit: int = MAX_TEXT_BYTES) -> bytes:
    """All of a regular file, refused when it holds more than ``limit`` bytes (it may grow while read)."""
    with open_binary(path, what, limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{what} {path} grew past the limit of {_size(limit)} while it was read")
    return data


def decode(data: bytes, path: str | os.PathLike[str], what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text (UnicodeDecodeError: {err})") from None


def read_text(path: str | os.PathLike[str], what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """A regular file's UTF-8 text (a BOM is kept, as ``Path.read_text`` keeps it)."""
    return decode(read_bytes(path, what, limit), path, what)


@contextmanager
def open_text(path: str | os.PathLike[str], what: str = "file", limit: int = MAX_TABLE_BYTES) -> Iterator[IO[str]]:
    """A regular file as a UTF-8 text stream with ``newline=""`` (what the csv module wants)."""
    with open_binary(path, what, limit) as fh:
        yield io.TextIOWrapper(fh, encoding="utf-8", newline="")


def _first_nonfinite(doc: Any, where: str = "") -> str | None:
    """The key path (``preprocess_cfg.std[0]``) of the first NaN or infinite number in ``doc``."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return where or "the document"
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found:
            return found
    return None


def read_json(path: str | os.PathLike[str], what: str = "file", limit: int = MAX_TEXT_BYTES) -> Any:
    """A regular file's strict JSON: NaN, Infinity and numbers past 1.8e308 (which Python's json
    turns into floats silently) are refused, naming the key that holds one."""
    text = read_text(path, what, limit)
    odd: list[str] = []

    def number(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            odd.append(literal)
        return value

    try:
        doc = json.loads(text, parse_float=number, parse_constant=number)
    except ValueError as err:  # JSONDecodeError is a ValueError; so is an integer of 5,000 digits
        raise InputError(f"{what} {path} is not valid JSON: {err}") from None
    except RecursionError:
        raise InputError(f"{what} {path} nests too deeply to be read") from None
    if odd:
        try:
            where = str(_first_nonfinite(doc))
            where = where if len(where) <= 80 else where[:80] + "..."
        except RecursionError:
            where = "a value nested deep inside"
        raise InputError(f"{what} {path}: {where} is {odd[0]}, not a finite number")
    return doc
