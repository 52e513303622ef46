"""The host's standard evaluation protocol: what CA, ASR and retrieval recall mean in a result.

Feature extraction and zero-shot classifiers are the shared mechanics of
:mod:`toolbox.zeroshot`; the numbers themselves come from the metric classes
that plugins register (``zeroshot_accuracy``, ``attack_success_rate``,
``retrieval_recall``), so a result always names the class that computed it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .api import ClipModel, ImageData, config_defaults
from .errors import InputError, one_line
from .plugins import Registry
from .zeroshot import caption_embeddings, class_embeddings, image_features, mentions_word

Trigger = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MetricConfig:
    """What the CA/ASR numbers of a run mean; recorded verbatim in every result."""

    top_k: tuple[int, ...] = (1, 5, 10)
    # BackdoorBench convention: triggered images whose true class is the target do not count.
    # False gives the BadCLIP/PAR convention (all triggered images count).
    asr_exclude_target: bool = True
    retrieval_k: int = 10
    batch_size: int = 256  # images per forward pass (--eval-batch-size)
    workers: int = 0  # DataLoader processes decoding images (--workers; the runner resolves its default)
    # Registered metrics asked for by name (--metric), each fed (logits, labels) beside the built-ins.
    extra: tuple[str, ...] = ()


# A trigger effect (ASR@1 minus the untriggered target rate) below this: the attack did not implant.
IMPLANT_MARGIN = 0.5


def trigger_effect(metrics: dict[str, Any]) -> float | None:
    """ASR@1 minus the untriggered target rate of one metric set; None when either was not measured."""
    asr, untriggered = metrics.get("asr"), metrics.get("asr_untriggered")
    return None if asr is None or untriggered is None else asr - untriggered


# Keys the built-in measurements write (the schema holds them to [0, 1]); a --metric may not take one.
RESERVED_KEYS = re.compile(r"^(ca|asr|ra)(_|$)|^retrieval_|_triggered$")
EXTRA_DEFINITION = (
    "a registered metric asked for with --metric: update(logits [N, C], labels [N]) on the "
    "clean evaluation images gives NAME; on the images with the real trigger applied (all of "
    "them, true labels) NAME_triggered"
)


@dataclass
class EvalInputs:
    eval_data: ImageData | None
    classnames: list[str]
    templates: list[str]
    retrieval_data: ImageData | None = None
    shift_data: ImageData | None = None  # the same classes in another style (ca_shift)
    trigger: Trigger | None = None
    target: str | None = None
    trigger_source: str | None = None  # "real" (the attack's own) or "inverted"
    # Reconstructed triggers reported beside the real one: name -> (trigger, target class)
    extra_triggers: dict[str, tuple[Trigger, str]] = field(default_factory=dict)


def metric_config_doc(cfg: MetricConfig, inputs: EvalInputs, registry: Registry) -> dict[str, Any]:
    def cls(name: str) -> str | None:
        try:
            return registry.get("metric", name).class_path
        except KeyError:
            return None

    return {
        "ca": {
            "definition": "zero-shot top-k accuracy on the labelled evaluation split; class embedding = "
            "mean of L2-normalised template embeddings, renormalised",
            "top_k": list(cfg.top_k),
            "reported_as_ca": "top-1",
            "n_templates": len(inputs.templates),
            "templates_example": inputs.templates[0] if inputs.templates else None,
            "n_classes": len(inputs.classnames),
            "metric_class": cls("zeroshot_accuracy"),
        },
        "asr": {
            "definition": "fraction of triggered evaluation images whose zero-shot top-k holds the target",
            "top_k": list(cfg.top_k),
            "exclude_target_class": cfg.asr_exclude_target,
            "convention": "BackdoorBench (target-class images excluded)"
            if cfg.asr_exclude_target
            else "BadCLIP/PAR (all images)",
            "target": inputs.target,
            "trigger_source": inputs.trigger_source,
            "metric_class": cls("attack_success_rate"),
            "reconstructed_triggers": "asr_<name>* keys: the same ASR with a trigger a defense reconstructed "
            "(e.g. asr_inverted), aimed at the target the defense identified",
            "untriggered": "asr_untriggered: the same ASR (first top-k) on the untriggered images, i.e. how "
            "often the model predicts the target anyway; the trigger's own effect is "
            "asr - asr_untriggered",
        },
        "ca_shift": None
        if inputs.shift_data is None
        else {
            "definition": "the same zero-shot top-1 accuracy on a second labelled split, the same classes "
            "drawn in another style (--shift-data): a defense's cost under distribution shift",
            "source": inputs.shift_data.source,
        },
        "retrieval": None
        if inputs.retrieval_data is None
        else {
            "definition": "image-to-text recall@k: an image counts once, as a hit if any of its own "
            "captions is among the k nearest captions",
            "k": cfg.retrieval_k,
            "metric_class": cls("retrieval_recall"),
            "asr_definition": "fraction of triggered images whose k nearest captions include one that "
            "mentions the target word (whole-word match); images whose own captions "
            "mention the target are excluded when exclude_target_class is true",
            "asr_metric_class": cls("retrieval_asr"),
        },
        "extra": {name: {"definition": EXTRA_DEFINITION, "metric_class": cls(name)} for name in cfg.extra},
        "settings": asdict(cfg),
    }


def check_extra_metrics(names: Sequence[str], registry: Registry) -> None:
    """Fail fast, before a run trains anything, on a ``--metric`` that cannot be measured."""
    from .metrics import METRICS

    builtin = {cls.name for cls in METRICS}
    for name in names:
        reg = registry.get("metric", name)
        if name in builtin:
            raise InputError(f"--metric {name}: a built-in metric, measured in every run already")
        if RESERVED_KEYS.search(name):
            raise InputError(
                f"--metric {name}: the name would collide with the built-in results "
                f"(ca*, asr*, ra*, retrieval_*, *_triggered); register the metric under another name"
            )
        if names.count(name) > 1:
            raise InputError(f"--metric {name} is given twice")
        build_extra_metric(reg)


def build_extra_metric(reg: Any) -> Any:
    """A ``--metric`` metric built with its Config's defaults (there is no option to set them)."""
    try:
        return reg.obj(**config_defaults(reg.obj))
    except Exception as err:  # noqa: BLE001 - a third-party metric can raise anything
        raise InputError(
            f"metric {reg.name!r} (plugin {reg.plugin!r}) cannot be built from its Config's defaults: {one_line(err)}"
        ) from err


def extra_metric(reg: Any, logits: Tensor, labels: Tensor) -> float | None:
    """One ``--metric`` metric of ``logits``; a plugin that fails is reported by name."""
    metric = build_extra_metric(reg)
    try:
        metric.update(logits, labels)
        value = float(metric.compute())
    except Exception as err:  # noqa: BLE001 - a third-party metric can raise anything
        raise InputError(
            f"metric {reg.name!r} (plugin {reg.plugin!r}) failed: {one_line(err)}; it is updated "
            f"with (logits [N, C], labels [N]) and must compute one number"
        ) from err
    return value if math.isfinite(value) else None  # JSON has no NaN


def extra_metrics(
    logits: Tensor, labels: Tensor, cfg: MetricConfig, registry: Registry, suffix: str = ""
) -> dict[str, float | None]:
    """The ``--metric`` metrics of ``logits``, keyed ``NAME`` + ``suffix``."""
    return {f"{name}{suffix}": extra_metric(registry.get("metric", name), logits, labels) for name in cfg.extra}


def finite(embeddings: Tensor, what: str) -> Tensor:
    """``embeddings`` when every value is finite: a NaN ranks first or last at random, so a CA computed
    from one is a number that means nothing. Raised instead, naming how many rows are hit."""
    bad = ~torch.isfinite(embeddings)
    if bool(bad.any()):
        rows = int(bad.reshape(len(embeddings), -1).any(dim=1).sum())
        raise InputError(
            f"the model being measured gives non-finite (NaN or infinite) {what} for {rows} of "
            f"{len(embeddings)} inputs; no metric is computed from them (its weights, or its "
            f"preprocessing mean/std, overflow)"
        )
    return embeddings


def trigger_metrics(
    model: ClipModel,
    data: ImageData,
    weights: Tensor,
    trigger: Trigger,
    target: int,
    cfg: MetricConfig,
    registry: Registry,
    device: torch.device,
) -> dict[str, float | None]:
    """ASR@k (``asr_topk``, ``asr`` = first k), robust accuracy (``ra``) and the ``--metric`` ones of one trigger."""
    feats, labels = image_features(model, data, cfg.batch_size, device, trigger, cfg.workers)
    logits = finite(feats, "image embeddings of triggered evaluation images") @ weights.T
    out: dict[str, float] = {
        f"asr_top{k}": attack_success_rate(logits, labels, target, k, cfg, registry) for k in cfg.top_k
    }
    out["asr"] = out[f"asr_top{cfg.top_k[0]}"]
    ra = registry.get("metric", "zeroshot_accuracy").obj(top_k=1)
    keep = labels != target
    ra.update(logits[keep], labels[keep])
    out["ra"] = float(ra.compute())
    return out | extra_metrics(logits, labels, cfg, registry, "_triggered")


def attack_success_rate(
    logits: Tensor, labels: Tensor, target: int, k: int, cfg: MetricConfig, registry: Registry
) -> float:
    """ASR@k of ``logits`` by the registered ``attack_success_rate`` metric, under ``cfg``'s convention."""
    metric = registry.get("metric", "attack_success_rate").obj(
        target=target, top_k=k, exclude_target=cfg.asr_exclude_target
    )
    metric.update(logits, labels)
    return float(metric.compute())


def untriggered_rate(logits: Tensor, labels: Tensor, target: int, cfg: MetricConfig, registry: Registry) -> float:
    """The ASR metric (first top-k) on the *untriggered* images: how often the model says the target
    anyway. A trigger's own effect is ``asr - asr_untriggered``; a model that collapsed toward the
    target has a high ASR and no backdoor (default-resnet BadEncoder: 32.6 % triggered, 33.6 % not)."""
    return attack_success_rate(logits, labels, target, cfg.top_k[0], cfg, registry)


def shifted_accuracy(
    model: ClipModel, data: ImageData, weights: Tensor, cfg: MetricConfig, registry: Registry, device: torch.device
) -> float:
    """Zero-shot top-1 accuracy on the other style's split, with the evaluation's class embeddings."""
    feats, labels = image_features(model, data, cfg.batch_size, device, workers=cfg.workers)
    metric = registry.get("metric", "zeroshot_accuracy").obj(top_k=1)
    metric.update(finite(feats, "image embeddings of the shifted split") @ weights.T, labels)
    return float(metric.compute())


def evaluate(
    model: ClipModel, inputs: EvalInputs, cfg: MetricConfig, registry: Registry, device: torch.device
) -> dict[str, float | None]:
    """CA (top-k), ASR (top-k, robust accuracy) and retrieval recall of one model."""
    out: dict[str, float | None] = {"ca": None, "asr": None}
    model_was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    if inputs.eval_data is not None:
        weights = finite(class_embeddings(model, inputs.classnames, inputs.templates, device), "class embeddings")
        feats, labels = image_features(model, inputs.eval_data, cfg.batch_size, device, workers=cfg.workers)
        logits = finite(feats, "image embeddings of evaluation images") @ weights.T
        acc_cls = registry.get("metric", "zeroshot_accuracy").obj
        for k in cfg.top_k:
            metric = acc_cls(top_k=k)
            metric.update(logits, labels)
            out[f"ca_top{k}"] = float(metric.compute())
        out["ca"] = out[f"ca_top{cfg.top_k[0]}"]
        out.update(extra_metrics(logits, labels, cfg, registry))
        if inputs.shift_data is not None:
            out["ca_shift"] = shifted_accuracy(model, inputs.shift_data, weights, cfg, registry, device)
        if inputs.trigger is not None and inputs.target is not None:
            target_index = inputs.classnames.index(inputs.target)
            out.update(
                trigger_metrics(model, inputs.eval_data, weights, inputs.trigger, target_index, cfg, registry, device)
            )
            out["asr_untriggered"] = untriggered_rate(logits, labels, target_index, cfg, registry)
        for name, (trigger, target) in inputs.extra_triggers.items():
            extra = trigger_metrics(
                model,
                inputs.eval_data,
                weights,
                trigger,
                inputs.classnames.index(target),
                replace(cfg, extra=()),
                registry,
                device,
            )
            out.update(
                {f"{key.replace('asr', f'asr_{name}', 1)}": v for key, v in extra.items() if key.startswith("asr")}
            )
    if inputs.retrieval_data is not None and inputs.retrieval_data.captions is not None:
        img, idx = image_features(model, inputs.retrieval_data, cfg.batch_size, device, workers=cfg.workers)
        captions = [inputs.retrieval_data.captions[i] for i in idx.tolist()]
        cap, owner = caption_embeddings(model, captions, device)
        finite(img, "image embeddings of retrieval images")
        finite(cap, "caption embeddings")
        rec = registry.get("metric", "retrieval_recall").obj(k=cfg.retrieval_k)
        rec.update(img, cap, owner)
        out[f"retrieval_recall@{cfg.retrieval_k}"] = float(rec.compute())
        if inputs.trigger is not None and inputs.target is not None:
            t_img, _ = image_features(model, inputs.retrieval_data, cfg.batch_size, device, inputs.trigger, cfg.workers)
            finite(t_img, "image embeddings of triggered retrieval images")
            flat = [c for caps in captions for c in caps]
            mentions = torch.tensor([mentions_word(c, inputs.target) for c in flat])
            own_target = torch.tensor([any(mentions_word(c, inputs.target) for c in caps) for caps in captions])
            keep = ~own_target if cfg.asr_exclude_target else torch.ones_like(own_target)
            rasr = registry.get("metric", "retrieval_asr").obj(k=cfg.retrieval_k)
            rasr.update(t_img, cap, mentions, keep)
            out[f"retrieval_asr@{cfg.retrieval_k}"] = float(rasr.compute())
    if model_was_training and hasattr(model, "train"):
        model.train()
    return out
