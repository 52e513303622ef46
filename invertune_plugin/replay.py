"""A plain run's calibrated verdict, replayed offline from its ``result.json``: what the same run
with ``--calibration`` would have said, without running it again.

A run with a clean null walks the same cascade with the same seeds (``InverTune.rule``); a plain
run stops at the first finding past its gates. Every finding a plain run records carries the
strength the null calibrates, so the record answers for the calibrated run as far as it goes: the
verdict wherever the null calls a recorded finding or the plain run measured every detector; the
score and the trigger taken only where the plain run measured every detector the calibrated run
would have (``exact``). A calibrated score from fewer statistics is a lower bound of the real one.
The other way, a calibrated run records every detector, so its record answers exactly for the
gates (:func:`replay_gates`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from toolbox.null import CleanNull

from .cascade import effective_ratio, gate_score, statistics, vetoed
from .record import calibrated_score


@dataclass(frozen=True)
class Replayed:
    backdoored: bool
    score: float  # as the replayed rule's run records detection.score (under a null: a lower bound unless exact)
    target: str | None  # the class of the finding taken (or, none passing, of the first)
    exact: bool  # the record held every detector the replayed run would have run
    as_plain: bool  # exact, and the recorded run's finding (or none in both): its purification holds too


def findings(steps: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    """Every recorded finding as (step index, index in its step, its record), in cascade order."""
    return [(i, j, f) for i, step in enumerate(steps) for j, f in enumerate(step.get("findings", []))]


def replay(
    detection: Mapping[str, Any],
    null: CleanNull,
    alpha: float,
    pick: str = "strongest",
    min_differential: float = 0.5,
) -> Replayed | None:
    """The calibrated verdict of a plain run's ``detection`` under ``null`` at ``alpha``, taking the
    trigger as ``InverTuneConfig.calibrated_pick`` says; None where the record cannot tell the verdict."""
    steps = detection.get("cascade")
    if steps is None:  # a target was given: nothing was assessed, calibrated or not
        return None
    found = findings(steps)

    def tail(i: int, f: Mapping[str, Any]) -> float:
        if vetoed(f.get("differential"), min_differential):
            return math.inf
        return null.adjusted(steps[i]["detector"], f["strength"])

    tails = {(i, j): tail(i, f) for i, j, f in found}
    called = [ij for ij, t in tails.items() if t <= alpha]
    complete = bool(detection.get("statistics_complete"))
    if not called and not complete:
        return None  # the gates stopped the cascade before the null would have
    ran, exact = steps, complete
    if called and pick == "first":
        ran, exact = steps[: called[0][0] + 1], True
    if not called:
        taken = found[0][:2] if found else None
    elif pick == "first":
        taken = called[0]
    else:
        taken = min(called, key=tails.__getitem__)
    assessed = null.assess({k: v["value"] for k, v in statistics(ran, min_differential).items()}, alpha)
    plain = next(((i, j) for i, j, f in found if f.get("passed") is True), None)
    return Replayed(
        backdoored=bool(called),
        score=calibrated_score(assessed["bound"]),
        target=steps[taken[0]]["findings"][taken[1]].get("class") if taken else None,
        exact=exact,
        as_plain=exact and (taken == plain if called else plain is None),
    )


def replay_gates(detection: Mapping[str, Any], min_differential: float = 0.5) -> Replayed | None:
    """The gates' verdict (no null) of a run's ``detection``; None where the record stopped before they
    would have. Its purification is the record's only where neither found a trigger."""
    steps = detection.get("cascade")
    if steps is None:
        return None
    found = findings(steps)
    called = next(
        ((i, j) for i, j, f in found if effective_ratio(f["gate_ratio"], f.get("differential"), min_differential) >= 1),
        None,
    )
    if called is None and not detection.get("statistics_complete"):
        return None
    taken = called or (found[0][:2] if found else None)
    return Replayed(
        backdoored=called is not None,
        score=round(gate_score(steps if called is None else steps[: called[0] + 1], min_differential), 4),
        target=steps[taken[0]]["findings"][taken[1]].get("class") if taken else None,
        exact=True,
        as_plain=called is None and detection.get("backdoored") is False,
    )
