"""Text from result files quoted in documents: one escaping rule for Markdown cells, CSV cells and
one-line messages, so a name holding ``|``, a newline or ``=cmd()`` stays text wherever it lands."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Line breaks and other control characters (C0, DEL, C1, U+2028/2029): a cell or a message stays one line.
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A spreadsheet evaluates a cell that starts with one of these as a formula (OWASP's CSV injection list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def markdown_cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell: ``\\``, ``|`` and ``<`` escaped, breaks as spaces."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return _printable(_BREAKS.sub(" ", text))


def csv_cell(value: Any) -> Any:
    """A CSV value a spreadsheet shows as text: a text cell starting with a formula prefix gets a ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every text cell of a ``csv.DictWriter`` row through :func:`csv_cell`; numbers stay numbers."""
    return {k: csv_cell(v) for k, v in row.items()}


def shown(value: Any, limit: int = 200) -> str:
    """Outside text (a path, a key) inside a one-line message: control characters as escapes, length capped."""
    text = _BREAKS.sub(lambda m: repr(m.group())[1:-1], str(value))
    text = _printable(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _printable(text: str) -> str:
    """A lone surrogate (JSON's ``"\\ud800"``) cannot be encoded to print or write: show it escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
