"""``toolbox scan-data --retrain``: the clean model trained again on the purified set (the flagged
samples removed) with the attack's own recipe, measured beside the attacked model."""

from __future__ import annotations

from typing import Any

import torch

from .api import ImageData, InMemoryImages
from .evaluation import EvalInputs, MetricConfig, evaluate
from .runner import StageTimer
from .zeroshot import loader_workers


def subset(data: ImageData, keep: torch.Tensor, what: str) -> ImageData:
    """The samples at ``keep`` of a captioned set (a labelled one would lose its labels here)."""
    if data.kind != "captioned":
        raise ValueError(f"a purified subset is taken of captioned data; {data.source} is {data.kind}")
    return ImageData(
        InMemoryImages(data.uint8(keep)),
        data.kind,
        f"{data.source} ({what})",
        classnames=data.classnames,
        captions=None if data.captions is None else [data.captions[i] for i in keep.tolist()],
    )


def retrain(
    attack: Any,
    clean: Any,
    suspect: Any,
    data: ImageData,
    flagged: torch.Tensor,
    eval_data: ImageData,
    classnames: list[str],
    templates: list[str],
    req: Any,
    registry: Any,
    device: torch.device,
    timer: StageTimer,
) -> dict[str, Any]:
    """The clean model trained on the unflagged samples with the attack's recipe, beside the suspect."""
    src = req.sources
    mcfg = MetricConfig(
        asr_exclude_target=not src.asr_include_target,
        batch_size=src.eval_batch_size,
        workers=loader_workers(src.workers, device),
    )
    inputs = EvalInputs(
        eval_data=eval_data,
        classnames=classnames,
        templates=templates,
        trigger=attack.apply_trigger,
        target=attack.target_label(),
        trigger_source="real",
    )
    keep = torch.nonzero(~flagged).flatten()
    with timer.stage("evaluate"):
        before = _ca_asr(evaluate(suspect, inputs, mcfg, registry, device))
    doc: dict[str, Any] = {"n_train": len(keep), "poisoned_set": before}
    if len(keep) == 0:
        return {**doc, "purified_set": None, "note": "every sample was flagged: nothing left to train on"}
    if len(keep) == len(flagged):  # the same set, seed and recipe: the attacked model itself
        return {**doc, "purified_set": before, "note": "nothing was flagged: the purified set is the poisoned set"}
    with timer.stage("retrain"):
        retrained = attack.train_on(clean, subset(data, keep, f"purified by {req.defense}"), src.seed)
    with timer.stage("evaluate_retrained"):
        doc["purified_set"] = _ca_asr(evaluate(retrained, inputs, mcfg, registry, device))
    return doc


def _ca_asr(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("ca", "asr", "asr_untriggered")}
