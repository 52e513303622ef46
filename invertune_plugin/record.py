"""What a run of InverTune records about its detection (result.json's ``detection``): the verdict,
the trigger, every detector's findings, the statistics a clean null calibrates and the key they hold
for (toolbox/null.py)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

from toolbox.api import config_values
from toolbox.null import CleanNull

from .cascade import CascadeResult, gate_score, statistics
from .identify import Identification

if TYPE_CHECKING:
    from .defense import InverTuneConfig

TUNING_PREFIXES = ("rounds", "tune_", "round_check")  # stage-3-only detector settings: left out of null_key
SPEED_ONLY = ("race_batch_classes",)  # identify settings that change speed, not a statistic: left out too
STATISTICS_VERSION = 2  # 2: each finding's strength (uncapped margins past its gates); 1 was gate ratios
CALIBRATED_SCORE_DEFINITION = (
    "-log10(k * smallest tail) under the clean null (detection.null.rule), not capped at 0 so it ranks every model; "
    "backdoored when detection.null.score (the same, capped at 1) <= alpha"
)
SCORE_DEFINITION = (
    "largest gate ratio of any finding of the cascade: per finding, the smallest of its detector's "
    "statistic / gate ratios (a mask fraction: gate / statistic); >= 1 where every gate passed"
)


def detection_record(
    ident: Identification | None,
    result: CascadeResult,
    key: dict[str, Any],
    null: CleanNull | None,
    cfg: InverTuneConfig,
) -> dict[str, Any]:
    """``detection`` in result.json: the verdict, the trigger, every detector's findings and, for a
    clean null, their statistics and the key they hold for (toolbox/null.py)."""
    finding = result.finding
    doc: dict[str, Any] = {
        "backdoored": result.verdict.backdoored,
        "verdict": result.verdict.value,
        "target": finding.target,
        "target_given": ident is None,
        "inverted_trigger": {**finding.trigger.evidence(), "source": result.detector.label},
    }
    if result.score is not None:
        doc["score"] = round(result.score, 4)
        doc["score_definition"] = SCORE_DEFINITION
    if ident is not None:
        doc["ranking_top5"] = [{"class": c, "shift": round(v, 4)} for c, v in ident.ranking[:5]]
        doc["stage1"] = ident.evidence()
        doc["cascade"] = result.steps
        doc["statistics"] = stats = statistics(result.steps, cfg.min_differential)
        # no detector left out by an early stop (one skipped for want of the race never runs): a null's reference
        doc["statistics_complete"] = len(result.steps) == len(cfg.cascade)
        doc["score"] = round(gate_score(result.steps, cfg.min_differential), 4)
        doc["null_key"] = key
        doc["null"] = {"calibrated": False}
        if null is not None:
            assessed = null.assess({k: v["value"] for k, v in stats.items()}, cfg.alpha)
            doc["null"] = assessed
            doc["score"] = calibrated_score(assessed["bound"])
            doc["score_definition"] = CALIBRATED_SCORE_DEFINITION
    return doc


def calibrated_score(bound: float) -> float:
    """``detection.score`` under a clean null: -log10 of k * smallest tail, uncapped so it ranks every model."""
    return round(-math.log10(max(bound, 1e-300)), 6)


def null_key(
    cfg: InverTuneConfig, model: Any, classnames: list[str], templates: list[str], n_images: int
) -> dict[str, Any]:
    """What the detection statistics hold for: a clean null measured with another key does not apply."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    settings = config_values(cfg)
    detection = {k: settings[k] for k in ("cascade", "identify", "invert", "precision")}
    detection["identify"] = {k: v for k, v in detection["identify"].items() if k not in SPEED_ONLY}
    # each detector's search and gates; how stage 3 tunes against its trigger changes no statistic
    detection["detectors"] = {
        name: {k: v for k, v in values.items() if not k.startswith(TUNING_PREFIXES)}
        for name, values in settings["detectors"].items()
    }
    return {
        "architecture": digest([list(p.shape) for p in model.parameters()]),  # the shapes of every parameter
        "image_size": int(model.image_size),
        "classes": len(classnames),
        "vocabulary": digest(classnames),
        "templates": digest(templates),
        "n_images": n_images,
        "statistics_version": STATISTICS_VERSION,
        **flat(detection, "detection"),  # each setting its own field, so a refusal names the one that differs
    }


def flat(settings: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Nested settings as ``prefix.a.b`` -> a scalar (a list joined by commas): a null file's key stays flat."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}.{k}"))
        else:
            out[f"{prefix}.{k}"] = ",".join(map(str, v)) if isinstance(v, list | tuple) else v
    return out
