"""The result document of one run (``toolbox/schema``): its keys, in the order it is written."""

from __future__ import annotations

from typing import Any

from .. import results
from ..api import config_values
from .plan import Findings, Plan, RunInputs


def result_document(plan: Plan, got: RunInputs, found: Findings) -> dict[str, Any]:
    """The document ``result.json`` holds; ``created`` is stamped now, when the run is done."""
    req, src, loaded = plan.req, plan.req.sources, got.loaded
    return {
        "schema": results.SCHEMA_ID,
        "created": results.now_iso(),
        "command": req.command,
        "versions": results.runtime_versions(plan.host.loaded_versions()),
        "model": {
            "id": src.model_source,
            "arch": loaded.arch,
            "format": loaded.format,
            "sha256": loaded.sha256,
            "attacked_sha256": found.attacked_sha,
            "purified_sha256": found.purified_sha,
            "world": loaded.world or None,
        },
        "attack": found.attack_doc,
        "defense": {
            "name": req.defense,
            "params": config_values(plan.defense.config),
            "plugin": plan.dreg.plugin,
            **calibration_doc(plan, got),
        },
        "metric_config": found.metric_doc,
        "metrics": found.metrics,
        "detection": found.outcome.detection,
        "defense_info": found.outcome.info,
        "timings_s": plan.timer.timings,
        "seed": src.seed,
        "device": str(plan.device),
        "device_requested": src.device,
        "artifacts": found.artifacts,
        "data": {
            k: None
            if v is None
            else {"source": v.source, "kind": v.kind, "n": len(v.dataset), "skipped_unreadable": list(v.skipped)}
            for k, v in got.data.items()
        },
    }


def calibration_doc(plan: Plan, got: RunInputs) -> dict[str, Any]:
    """What the verdict was calibrated and compared with: the clean null's file, the reference models."""
    doc: dict[str, Any] = {}
    if plan.nulls:
        doc["calibration"] = [
            {"file": n.source, "sha256": n.sha256, "references": len(n.references)} for n in plan.nulls
        ]
    if got.references:
        doc["references"] = [{"source": r.source, "sha256": r.sha256} for r in got.references]
    return doc
