"""``toolbox zoo calibrate``: a defense's clean null from the clean members of one or more zoos.

Each clean member of the chosen preset is a reference: the defense runs on it as in ``zoo eval``
but in reference mode (every statistic measured, nothing purified), resumable member by member,
and the statistics its results report become a ``toolbox.null/1`` file (toolbox/null.py). A
leave-one-out pass says what false-positive rate the null gives its own references.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..grid import GridConfig
from ..intake.documents import read_result
from ..null import CleanNull, from_results, leave_one_out
from ..results import provenance
from .build import read_manifest
from .evaluate import eval_zoo, saved_result

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    null: CleanNull
    leave_one_out: list[dict[str, Any]]  # per reference: its score under the null of the others
    reused: int = 0  # references measured by an earlier plain evaluation (every detector ran)


def clean_references(records: Sequence[dict[str, Any]], preset: str) -> list[dict[str, Any]]:
    """The zoo's clean members built on ``preset``."""
    return [r for r in records if r["label"] == "clean" and r["preset"] == preset]


def calibrate(
    zoos: Sequence[Path],
    defense: str,
    params: dict[str, str],
    preset: str,
    seed: int = 0,
    grid: GridConfig | None = None,
    command: list[str] | None = None,
    alpha: float = 0.05,
    keep: Path | None = None,
) -> Calibration:
    """Run the reference measurements (reusing those already made, here or in ``keep``) and build the null."""
    results: list[tuple[str, dict[str, Any]]] = []
    reused = 0
    for zoo in zoos:
        members = clean_references(read_manifest(zoo), preset)
        if not members:
            log.warning("%s has no clean member built on preset %s", zoo, preset)
            continue
        ids = [r["id"] for r in members]
        found: dict[str, dict[str, Any]] = {}
        for record in members:  # a plain `zoo eval` in which every detector ran measured the reference already
            doc = saved_result(zoo, record, defense, params, seed)
            if doc is not None and (doc.get("detection") or {}).get("statistics_complete"):
                found[record["id"]] = doc["detection"]
        rest = [m for m in ids if m not in found]
        reused += len(found)
        log.info("%s: %d references from its evaluation, %d measured now", zoo, len(found), len(rest))
        if rest:
            _, out = eval_zoo(zoo, defense, params, seed, grid, None, rest, reference=True, keep=keep)
            for member in rest:
                found[member] = read_result(out / member / "run" / "result.json").get("detection") or {}
        results += [(f"{Path(zoo).name}/{member}", found[member]) for member in ids]
    if not results:
        raise InputError(f"no clean member built on preset {preset!r} in {', '.join(map(str, zoos))}")
    prov = provenance(command)
    null = from_results(
        defense,
        results,
        {"created": prov["date"], "command": " ".join(command or []), "commit": prov["commit"]},
    )
    return Calibration(null, leave_one_out(null, alpha), reused)
