"""The detector cascade: how InverTune decides whether a model is backdoored, and what trigger
stage 3 tunes against.

Stage 1 ranks the classes (:mod:`invertune_plugin.identify`). Then each detector named in
``InverTuneConfig.cascade``, in order, searches for a trigger toward the suspected classes; the
first finding that passes its detector's gate is the trigger, and the cascade stops. A detector is
one class in one module of :mod:`invertune_plugin.detectors`, registered through the host's
``register_detectors`` hook (a third party's from its own plugin the same way) and named in the
cascade list; it owns its whole config (search budget, gate, tuning rule).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from torch import Tensor

from toolbox.api import ClipModel
from toolbox.lookup import registered
from toolbox.zeroshot import ZeroShotHead

from .adversary import Adversary
from .identify import Identification, IdentifyConfig
from .invert import InvertConfig, InvertedTrigger, invert, patch_trigger  # noqa: F401 (patch_trigger: for detectors)


class Verdict(str, Enum):
    BACKDOORED = "backdoored"
    NO_BACKDOOR_FOUND = "no backdoor found"
    NOT_ASSESSED = "not assessed (target given)"

    @property
    def backdoored(self) -> bool | None:
        """The result's ``detection.backdoored``: True, False, or None when not assessed."""
        return {Verdict.BACKDOORED: True, Verdict.NO_BACKDOOR_FOUND: False}.get(self)


@dataclass(frozen=True)
class DetectorConfig:
    """What every detector's config holds: its tuning rule (stage 3 against its trigger)."""

    rounds: int = 1  # purification rounds; a later round re-inverts on the tuned model (paper: 1)
    tune_steps: int | None = None  # round 1's steps against this detector's trigger; None: tune.steps

    def __post_init__(self) -> None:
        if self.rounds < 1 or (self.tune_steps is not None and self.tune_steps < 1):
            raise ValueError(f"rounds must be >= 1 and tune_steps >= 1 or None; got {self.rounds}, {self.tune_steps}")


@dataclass
class Finding:
    """One candidate trigger a detector found toward one class, with the evidence to judge it."""

    detector: str
    target: str
    trigger: InvertedTrigger  # what the result shows and the artifacts draw
    passed: bool  # every gate of the detector passed: this is a trigger
    gate_ratio: float  # the smallest statistic / gate ratio (>= 1 where the gates pass): the raw score
    evidence: dict[str, Any]  # the detector's statistics, as recorded in the result
    tune_with: Callable[[Tensor], Tensor] | None = None  # stage 3's round-1 trigger, when not the adversary
    # the trigger as stage 3 may re-optimise it as it tunes (tune.refresh_every); else ``trigger`` is tuned against
    adversary: Adversary | None = None
    location: str | None = None  # a patch trigger's place (a later round checks it is gone)
    accepted: bool | None = None  # the run's own rule (a clean null, references) where it is not the gates
    # how far past its gates, uncapped (rate_margin / size_margin; 0 at the gates): what a clean null calibrates
    strength: float | None = None
    # the trigger's effect on a model, for reference models (differential.py); None: the share sent to the target
    effect: Callable[[ClipModel, ZeroShotHead, Tensor], float] | None = None

    def __post_init__(self) -> None:
        if self.strength is None:  # a detector that gives none: its gate ratio on the same log scale (capped)
            self.strength = math.log(max(self.gate_ratio, 1e-6))

    def record(self) -> dict[str, Any]:
        assert self.strength is not None
        doc = {
            **self.evidence,
            "passed": self.passed,
            "gate_ratio": round(self.gate_ratio, 4),
            "strength": round(self.strength, 4),
        }
        return doc if self.accepted is None else {**doc, "accepted": self.accepted}


def ratio(stat: float, gate: float) -> float:
    """stat / gate; a gate set to 0 passes everything: a large finite ratio."""
    return stat / max(gate, 1e-6)


RATE_CLAMP = 0.005  # a held-out rate of 0 or 1 has a finite log-odds (about one image in 200 either side)


def _logit(p: float) -> float:
    p = min(max(p, RATE_CLAMP), 1 - RATE_CLAMP)
    return math.log(p / (1 - p))


def rate_margin(rate: float, gate: float) -> float:
    """A rate's log-odds past its gate (> 0: above it). Unlike ``rate / gate`` it does not stop at
    1 / gate: a backdoor's 100 % stands as far from a clean model's 30 % as the data allows."""
    return _logit(rate) - _logit(gate)


def size_margin(size: float, gate: float) -> float:
    """log(gate / size) for a statistic that is suspicious when small (a mask fraction): > 0 below the gate."""
    return math.log(max(gate, 1e-6) / max(size, 1e-6))


@dataclass
class SearchContext:
    """What a detector searches with: the suspect model, the defender's images, stage 1's ranking."""

    model: ClipModel
    images: Tensor  # uint8 [N, 3, H, W]
    head: ZeroShotHead
    ident: Identification | None
    seed: int
    identify: IdentifyConfig  # stage 1's optimiser settings, shared by the refinements
    invert_cfg: InvertConfig
    timings: dict[str, float] = field(default_factory=dict)
    inversions: dict[str, InvertedTrigger] = field(default_factory=dict)  # stage-2 inversions by class

    def inversion(self, target: str, timing: str = "invert") -> InvertedTrigger:
        """Stage 2 toward ``target`` (run once per class; later asks reuse it)."""
        if target not in self.inversions:
            start = time.perf_counter()
            self.inversions[target] = invert(self.model, self.images, self.head, target, self.invert_cfg, self.seed)
            self.timings[timing] = self.timings.get(timing, 0.0) + time.perf_counter() - start
        return self.inversions[target]


class Detector:
    """One trigger search: ``search`` returns findings, the first passing one is the trigger."""

    name: ClassVar[str]
    label: ClassVar[str]  # detection.inverted_trigger.source
    summary: ClassVar[str] = ""  # one line for `toolbox list`
    reference: ClassVar[str] = ""
    Config: ClassVar[type] = DetectorConfig
    needs_race: ClassVar[bool] = True  # reads stage 1's targeted race (skipped after the untargeted ranking)

    def __init__(self, config: Any) -> None:
        self.config = config

    def search(self, ctx: SearchContext) -> list[Finding]:
        raise NotImplementedError

    def round_check(self, model: ClipModel, ctx: SearchContext, finding: Finding, r: int) -> dict[str, Any] | None:
        """Before purification round ``r`` (>= 1): evidence that the trigger is still there, with
        ``passed``; None: no check of this detector's own (the re-inversion decides)."""
        return None


def detector_class(name: str) -> type[Detector]:
    """A detector registered through the ``register_detectors`` hook (ours and any plugin's)."""
    known = registered("detector")
    if name not in known:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


@dataclass
class CascadeResult:
    verdict: Verdict
    finding: Finding  # the passing finding, or (none passed) the first one: what the artifacts show
    detector: Detector  # whose finding it is (its tuning rule applies)
    steps: list[dict[str, Any]]  # per detector: its findings and time, or why it was skipped
    score: float | None  # the largest gate ratio of any finding (None when not assessed)


def run_cascade(
    detectors: list[Detector],
    ctx: SearchContext,
    passes: Callable[[Finding], bool] | None = None,
    full: bool = False,
    rank: Callable[[Finding], float] | None = None,
) -> CascadeResult:
    """The detectors in order until a finding ``passes`` (default: its detector's gates; with a clean
    null, its calibrated tail), or every detector when ``full`` (a clean reference: every statistic).
    With ``rank`` every detector runs and the trigger is the passing finding it ranks lowest (ties: the
    earlier one): a clean null's smallest tail, so a natural attractor one detector finds does not
    stand in for a stronger trigger a later one finds."""
    steps: list[dict[str, Any]] = []
    first: tuple[Finding, Detector] | None = None
    winner: tuple[Finding, Detector] | None = None
    ratios: list[float] = []
    passed: list[tuple[Finding, Detector]] = []
    for det in detectors:
        if det.needs_race and (ctx.ident is None or ctx.ident.method != "targeted"):
            steps.append({"detector": det.name, "skipped": "needs stage 1's targeted race (identify.method)"})
            continue
        start = time.perf_counter()
        found = det.search(ctx)
        seconds = time.perf_counter() - start
        ctx.timings[f"detect.{det.name}"] = seconds
        passing = [f for f in found if (passes(f) if passes else f.passed)]  # may add evidence: before recording
        for f in found if passes else ():
            f.accepted = any(f is p for p in passing)
        steps.append({"detector": det.name, "seconds": round(seconds, 2), "findings": [f.record() for f in found]})
        ratios += [f.gate_ratio for f in found]
        if found and first is None:
            first = (found[0], det)
        if passing and winner is None:
            winner = (passing[0], det)
        passed += [(f, det) for f in passing]
        if winner is not None and not full and rank is None:
            break
    if rank is not None and passed:
        winner = min(passed, key=lambda found: rank(found[0]))
    if winner is not None:
        return CascadeResult(Verdict.BACKDOORED, winner[0], winner[1], steps, max(ratios))
    if first is None:
        raise ValueError("no detector of the cascade ran; it needs one that runs without the race (inversion)")
    return CascadeResult(Verdict.NO_BACKDOOR_FOUND, first[0], first[1], steps, max(ratios, default=0.0))


def effective_ratio(gate_ratio: float, differential: dict[str, Any] | None, min_differential: float) -> float:
    """A finding's gate ratio, capped by its margin over the reference models (margin / min_differential)
    where it was compared with them: >= 1 exactly when every gate passed and the margin did."""
    if differential is None:
        return gate_ratio
    return min(gate_ratio, max(differential["margin"], 0.0) / max(min_differential, 1e-6))


def vetoed(differential: dict[str, Any] | None, min_differential: float) -> bool:
    """A reference model moved as much (margin below ``min_differential``): a natural feature, not a trigger."""
    return differential is not None and differential["margin"] < min_differential


NOTHING_FOUND = -20.0  # the strength of a detector that ran and found no candidate: below any finding's


def statistics(steps: list[dict[str, Any]], min_differential: float = 0.5) -> dict[str, dict[str, Any]]:
    """Per detector that ran: the largest strength of its findings, as recorded (rounded): the
    statistic a clean null calibrates. Reference models only veto a finding (a margin below
    ``min_differential``), never scale one, so a null measured without them still bounds the
    false-positive rate of a run with them."""
    return {
        step["detector"]: {
            "value": max(
                (f["strength"] for f in step["findings"] if not vetoed(f.get("differential"), min_differential)),
                default=NOTHING_FOUND,
            ),
            "scale": "linear",
        }
        for step in steps
        if "findings" in step
    }


def gate_score(steps: list[dict[str, Any]], min_differential: float = 0.5) -> float:
    """The uncalibrated score: the largest effective ratio of any finding (0 without findings)."""
    return max(
        (
            effective_ratio(f["gate_ratio"], f.get("differential"), min_differential)
            for step in steps
            for f in step.get("findings", [])
        ),
        default=0.0,
    )
