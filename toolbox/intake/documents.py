"""Result documents read from disk: the one reader of ``result.json`` (and of the JSON documents made
of one, such as submissions) when it comes from outside: a folder a leaderboard ranks, the file
``toolbox submit`` is given, a cache entry a comparison would reuse; and of a calibration file
(``toolbox.null/1``, a clean null a run is given with ``--calibration``).

The rules, in the order they apply; each broken one is an :class:`~toolbox.errors.InputError` of one
line naming the file and, where there is one, the key path (``metrics.after.ca``):

- only a regular file is opened: a FIFO, socket, device, directory or dangling link is refused from
  its ``stat``, never opened (the open is non-blocking and checked again), and at most
  :data:`MAX_DOCUMENT_BYTES` of it is read;
- strict JSON in UTF-8 (a leading BOM is allowed): no ``NaN`` / ``Infinity`` tokens, no number that
  overflows to infinity, no integer over :data:`MAX_INT_DIGITS` digits, no key twice in one object,
  no lone surrogate, nesting at most :data:`MAX_DEPTH` deep;
- a result validates against ``toolbox.result/1`` (toolbox/schema/result.schema.json), and every
  number under ``metrics`` is finite, the built-in ones (``ca``, ``asr``, ``ra``, ``retrieval_*``)
  fractions in [0, 1], before anything scores, ranks or submits it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..escape import shown
from .files import kind_of

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 4 * 2**20  # a run's result.json is a few KiB; a long detection record fits many times over
MAX_DEPTH = 100  # a result nests about 6 deep; deeper is an attack on the parser, not a record
MAX_INT_DIGITS = 64  # a seed or a count has at most 20 digits; a 4000-digit integer costs seconds to parse
BUILTIN_METRIC = re.compile(r"^(ca|asr|ra)(_|$)|^retrieval_")  # fractions in [0, 1] (the schema's metric_set)
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_bytes(path: Path | str, limit: int = MAX_DOCUMENT_BYTES, what: str = "result document") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; anything else is refused unopened."""
    where = shown(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        gone = "is a dangling symbolic link" if os.path.islink(path) else "does not exist"
        raise InputError(f"{where} {gone}") from None
    except (OSError, ValueError) as err:  # a symlink loop, a name too long, a NUL in the name
        raise InputError(f"{where} cannot be read: {shown(getattr(err, 'strerror', None) or err)}") from None
    _check_regular(where, st, limit, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)  # a swapped-in FIFO cannot block
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise InputError(f"{where} cannot be read: {err.strerror}") from None
    try:
        _check_regular(where, os.fstat(fd), limit, what)  # the file opened is the file checked
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, min(2**20, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    except OSError as err:
        raise InputError(f"{where} cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(f"{where} grew past {limit} bytes, the most a {what} may hold, while it was read")
    return bytes(data)


def _check_regular(where: str, st: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where} is {kind_of(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise InputError(f"{where} is {st.st_size} bytes, over the {limit} bytes a {what} may hold")


class _Bad:
    """What the parser found where a value should be (the walk names its key path)."""

    def __init__(self, what: str) -> None:
        self.what = what


def _pairs(pairs: list[tuple[str, Any]]) -> Any:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # readers disagree on which copy wins: the schema would check one, a table show the other
            return _Bad(f"holds the key {shown(json.dumps(key), 60)} twice")
        out[key] = value
    return out


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Bad(f"is {shown(text, 30)}, which overflows to infinity")


def _int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    return (
        int(text) if digits <= MAX_INT_DIGITS else _Bad(f"is an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    )


def parse(raw: bytes, where: Path | str) -> Any:
    """``raw`` as strict JSON (the module's rules), every value checked; an InputError names the key path."""
    place = shown(where)
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{place} is not UTF-8 text (byte {err.start} is {raw[err.start]:#04x})") from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_float,
            parse_int=_int,
            parse_constant=lambda token: _Bad(f"is {token}, which JSON does not allow"),
        )
    except json.JSONDecodeError as err:
        raise InputError(f"{place} is not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise InputError(f"{place} is not JSON this reader accepts: it nests too deep to parse") from None
    _check_tree(doc, place)
    return doc


def _check_tree(node: Any, place: str, keys: list[Any] | None = None) -> None:
    """Depth first, in document order: the first bad value, over-deep node or lone surrogate is named.
    Recursive on containers only, at most MAX_DEPTH deep, so it holds just the current key path."""
    keys = [] if keys is None else keys
    if isinstance(node, _Bad):
        raise InputError(f"{place}: {key_path(keys)} {node.what}")
    if isinstance(node, str):
        if _SURROGATE.search(node):
            raise InputError(f"{place}: {key_path(keys)} holds a lone UTF-16 surrogate, which is not text")
        return
    if not isinstance(node, (dict, list)):
        return
    if len(keys) >= MAX_DEPTH:
        raise InputError(f"{place}: {key_path(keys[:8])}... nests deeper than {MAX_DEPTH} levels")
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        if isinstance(key, str) and _SURROGATE.search(key):
            raise InputError(f"{place}: a key in {key_path(keys)} holds a lone UTF-16 surrogate, which is not text")
        if isinstance(value, (dict, list, str, _Bad)):
            keys.append(key)
            _check_tree(value, place, keys)
            keys.pop()


def key_path(keys: Iterable[Any]) -> str:
    """``("metrics", "after", "ca")`` -> ``metrics.after.ca``; list indices in brackets, odd keys quoted."""
    text = ""
    for key in keys:
        if isinstance(key, int):
            text += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z0-9_@-]+", key):
            text += f".{key}" if text else key
        else:
            text += f"[{json.dumps(key)}]"
    return shown(text, 120) if text else "the document"


def validated(doc: Any, validate: Callable[[Any], None], where: Path | str, what: str) -> dict[str, Any]:
    """``doc`` when ``validate`` (a jsonschema check) passes; otherwise an InputError naming the key path."""
    import jsonschema

    if not isinstance(doc, dict):
        raise InputError(f"{shown(where)} is not a valid {what}: it is a JSON {type(doc).__name__}, not an object")
    try:
        validate(doc)
    except jsonschema.ValidationError as err:
        raise InputError(
            f"{shown(where)} is not a valid {what}: {key_path(err.absolute_path)}: {shown(err.message, 160)}"
        ) from None
    return doc


def check_metrics(metrics: Any, where: Path | str) -> None:
    """Every number under ``metrics`` finite and the built-in ones fractions, before it is scored or ranked."""
    if not isinstance(metrics, Mapping):
        raise InputError(f"{shown(where)}: metrics is not an object")
    for set_name, values in metrics.items():
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            path = key_path(("metrics", set_name, key))
            if not math.isfinite(value):
                raise InputError(f"{shown(where)}: {path} is {value}, not a finite number")
            if BUILTIN_METRIC.search(key) and not 0.0 <= value <= 1.0:
                raise InputError(f"{shown(where)}: {path} is {value}, not a fraction in [0, 1]")


def check_result(doc: Any, where: Path | str) -> dict[str, Any]:
    """A parsed document as a valid ``toolbox.result/1`` result with finite metrics (else an InputError)."""
    from .. import results

    checked = validated(doc, results.validate, where, f"{results.SCHEMA_ID} result")
    check_metrics(checked["metrics"], where)
    return checked


def read_result(path: Path | str) -> dict[str, Any]:
    """The result document at ``path``, read and checked by the module's rules."""
    return check_result(parse(read_bytes(path), path), path)


def read_calibration(path: Path | str) -> tuple[dict[str, Any], str]:
    """A calibration file (``toolbox.null/1``, toolbox/null.py) at ``path``, read and validated by these
    rules, and the sha256 of the bytes read (the file is read once)."""
    import hashlib

    import jsonschema

    from ..null import SCHEMA_ID, null_schema

    raw = read_bytes(path, what="calibration file")
    doc = validated(
        parse(raw, path),
        lambda doc: jsonschema.validate(instance=doc, schema=null_schema()),
        path,
        f"{SCHEMA_ID} calibration file",
    )
    return doc, hashlib.sha256(raw).hexdigest()


def reusable_result(path: Path) -> dict[str, Any] | None:
    """A cached result to reuse: the document when ``path`` passes :func:`read_result`, None when it is
    absent or unusable (said on the log, so the caller runs it again instead of trusting it)."""
    if not os.path.lexists(path):
        return None
    try:
        return read_result(path)
    except InputError as err:
        log.warning("not reusing %s, running it again: %s", shown(path), err)
        return None
