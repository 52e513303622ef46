"""A zoo member's outcome record and the Markdown table the zoo's pages are written with.

Public (in ``toolbox.PUBLIC_MODULES``): a plugin that reports over a zoo (InverTune's calibration
page) reads these records and writes its tables the same way; the scoring itself is the host's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import numpy as np

from ..escape import markdown_cell

LABELS = ("clean", "backdoored", "not_implanted")
SCORED_LABELS = ("clean", "backdoored")
_FRACTION_FIELDS = ("ca_before", "ca_after", "asr_before", "asr_after", "localisation", "asr_rebound")


@dataclass
class MemberOutcome:
    """One zoo member after a defense ran on it: ground truth (the defense never saw it) + what the defense said."""

    member_id: str
    label: str  # "clean" | "backdoored" | "not_implanted"
    family: str  # trigger family, e.g. "badnet", "patch-random", "clean-finetune", "clean-scratch"
    arch: str  # e.g. "vit", "resnet"
    true_target: str | None
    score: float | None  # the defense's continuous detection score (detection.score); None if it gives none
    verdict: bool | None  # the defense's own call: True backdoored, False clean, None not assessed / no detection
    predicted_target: str | None
    ca_before: float | None  # fractions in [0, 1]
    ca_after: float | None
    asr_before: float | None  # real-trigger ASR@1, backdoored members only
    asr_after: float | None
    seconds: float
    localisation: float | None = None  # fraction of inverted-mask mass inside the true patch (patch families)
    asr_rebound: float | None = None  # real-trigger ASR@1 after clean fine-tuning of the defended model (rebound.py)

    def __post_init__(self) -> None:
        """Reject what would silently corrupt the scores: unknown labels and percentages passed as fractions."""
        if self.label not in LABELS:
            raise ValueError(f"{self.member_id}: label {self.label!r} is not one of {LABELS}")
        if self.verdict is not None and not isinstance(self.verdict, bool):
            raise ValueError(f"{self.member_id}: verdict must be True, False or None, got {self.verdict!r}")
        for name in _FRACTION_FIELDS:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{self.member_id}: {name}={value!r} is not a fraction in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; a non-finite score becomes None because JSON has no NaN."""
        return {f.name: json_float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberOutcome:
        """Strict about keys, so a misspelt column fails loudly instead of reading as None."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in d]
        if unknown or missing:
            raise ValueError(f"MemberOutcome.from_dict: unknown keys {unknown}, missing keys {missing}")
        return cls(**{n: d[n] for n in names if n in d})


def json_float(value: Any) -> Any:
    """Floats that JSON can hold: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def markdown_table(header: list[str], body: list[list[Any]]) -> list[str]:
    """A Markdown table's lines, every cell escaped (a ``|`` or a newline in a value cannot break the row)."""
    lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in body]
