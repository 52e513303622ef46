"""Numbers from outside (settings, environment, options, config files): finite and within a stated range.

Every refusal is an :class:`~toolbox.errors.InputError` that names the number's source and states
the bound it broke, e.g. ``invert.steps must be <= 10000000 (...), got 1000000000000``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from ..errors import InputError

# A count, a step number or a size in a setting: 10^7 steps is days of work for the smallest
# model, and no dataset a run reads holds 10^7 images per pass. A field may state its own bound.
MAX_COUNT = 10**7
# A real-valued setting beyond this magnitude is a typo (a learning rate of 1e12 trains to NaN).
MAX_MAGNITUDE = 1e9
# Seeds reach random.seed, numpy (< 2^32) and torch.manual_seed (< 2^64) after plugins derive
# streams as seed * 1_000_003 + offset; 2^32 - 1 keeps every derived stream in torch's range.
SEED_MIN, SEED_MAX = 0, 2**32 - 1
SEED_WHY = "seeds are integers in [0, 2^32 - 1], the range every generator accepts"
_MAX_DIGITS = 4000  # longer digit strings are refused by length (Python's int() stops at 4300)
_INT_TEXT = re.compile(r"[+-]?[0-9](?:_?[0-9])*", re.ASCII)


def _range(lo: float | None, hi: float | None) -> str:
    """The range of a message: in [lo, hi], >= lo, <= hi, or nothing."""
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    return f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else ""


def show(value: Any) -> str:
    """``value`` for a message: an integer of thousands of digits is described, a long text cut."""
    if isinstance(value, Integral) and not isinstance(value, bool) and int(value).bit_length() > 128:
        return f"an integer of about {int(int(value).bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _within(value: float, name: str, lo: float | None, hi: float | None, why: str = "") -> None:
    note = f" ({why})" if why else ""
    if lo is not None and value < lo:
        raise InputError(f"{name} must be >= {lo}{note}, got {show(value)}")
    if hi is not None and value > hi:
        raise InputError(f"{name} must be <= {hi}{note}, got {show(value)}")


def bounded_int(value: Any, name: str, lo: int | None, hi: int | None, why: str = "") -> int:
    """``value`` as an int within [lo, hi] (either may be None); booleans and fractions are refused."""
    if isinstance(value, bool) or not isinstance(value, (Integral, Real)):
        raise InputError(f"{name} must be an integer{_range(lo, hi)}, got {show(value)}")
    if not isinstance(value, Integral):
        number = float(value)
        if not math.isfinite(number) or not number.is_integer():
            raise InputError(f"{name} must be an integer{_range(lo, hi)}, got {show(value)}")
        value = int(number)
    _within(int(value), name, lo, hi, why)
    return int(value)


def finite_float(value: Any, name: str, lo: float | None = None, hi: float | None = None, why: str = "") -> float:
    """``value`` as a finite float within [lo, hi] (either may be None); booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{name} must be a number{_range(lo, hi)}, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past 1.8e308
        raise InputError(f"{name} must be a finite number{_range(lo, hi)}, got {show(value)}") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value}")
    _within(number, name, lo, hi, why)
    return number


def parse_int(text: str, name: str, lo: int | None = None, hi: int | None = None, why: str = "") -> int:
    """An integer written in ASCII digits (``_`` separators allowed, as in Python), within [lo, hi]."""
    raw = text.strip()
    if not _INT_TEXT.fullmatch(raw):
        raise InputError(f"{name} must be an integer{_range(lo, hi)}, got {show(text)}")
    if len(raw.replace("_", "").lstrip("+-")) > _MAX_DIGITS:
        raise InputError(f"{name}: an integer of {len(raw)} digits is out of any range{_range(lo, hi)}")
    return bounded_int(int(raw), name, lo, hi, why)


def parse_float(text: str, name: str, lo: float | None = None, hi: float | None = None, why: str = "") -> float:
    """A finite number written in ASCII (``1e-3``, ``.5``; not ``nan``, ``inf`` or ``1e309``), within [lo, hi]."""
    raw = text.strip()
    if not raw.isascii() or len(raw) > 100:
        raise InputError(f"{name} must be a number{_range(lo, hi)}, got {show(text)}")
    try:
        number = float(raw)
    except ValueError:
        raise InputError(f"{name} must be a number{_range(lo, hi)}, got {show(text)}") from None
    return finite_float(number, name, lo, hi, why)


def seed(value: Any, name: str = "--seed") -> int:
    """A seed every generator accepts: an integer in [0, 2^32 - 1]."""
    if isinstance(value, str):
        return parse_int(value, name, SEED_MIN, SEED_MAX, SEED_WHY)
    return bounded_int(value, name, SEED_MIN, SEED_MAX, SEED_WHY)


def env_number(
    var: str, default: float, lo: float, hi: float, *, integer: bool = True, env: Mapping[str, str] | None = None
) -> float:
    """Environment variable ``var`` as a number in [lo, hi] (``3e9`` allowed for an integer that is
    whole); unset or empty gives ``default``. A bad value names the variable, never the caller's input."""
    raw = (os.environ if env is None else env).get(var)
    if raw is None or not raw.strip():
        return default
    number = parse_float(raw, var)
    if integer and not number.is_integer():
        raise InputError(f"{var} must be a whole number in [{lo:g}, {hi:g}], got {show(raw)}")
    value = int(number) if integer else number
    _within(value, var, lo, hi, "set in the environment")
    return value
