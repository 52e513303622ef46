"""SegOracle (Hossain et al., arXiv 2511.13545): a segmentation oracle supervises the suspect CLIP.

Only the paper's abstract is public: an image segmentation oracle supervises the poisoned CLIP's
output; algorithm 1 tells CLIP's knowledge from the oracle's to find potential triggers; algorithm 2
pinpoints the affected labels and the victim samples and curates a compact fine-tuning set; the
model is then rectified by fine-tuning. Every concrete choice below is ours, one line each:

- Threat model: the defender holds the data the suspect was fine-tuned on, which may hold poisoned
  samples (the abstract's victim samples). In the toolbox that is the attack's own poisoned set
  (``Attack.poison(train_data, seed).data``, the set ``backdoor`` trained on); only its images are
  read, never ``.poisoned``, the ground truth the defense must not see. Without an
  attack that poisons data, it is ``--train-data`` as given.
- ``inspect_pool``: ``n_inspect`` images of that set, drawn by a seeded permutation: the oracle's
  cost grows with every image, and a backdoor shows in a few thousand.
- ``oracle_labels``: an image's oracle class is the class with the most softmax mass over its
  foreground pixels (one object per image, as in the world and in classification data); too little
  foreground or a low share of that mass makes it unknown, so the oracle's doubts accuse no one.
- ``clip_labels``: the suspect's zero-shot labels with the run's templates (the host's helpers).
- ``affected_labels``: per class, how many confident disagreements CLIP calls that class; a label
  is affected when its robust z-score (median/MAD across classes, MAD floored at one disagreement)
  passes ``z_threshold`` and it has ``min_disagreements``: a backdoor pulls triggered images of every
  class to one target, so the target collects disagreements that natural confusions spread thinly.
- ``victims``: the disagreeing images CLIP assigns to an affected label.
- ``localise_trigger``: input-gradient saliency of CLIP's target score on the victims, the oracle's
  object region zeroed (the object's own evidence is not the trigger), each victim normalised to
  count once, averaged; its top ``trigger_fraction`` of pixels is the candidate trigger. The mean
  victim pixels there make a stamp the host reports ASR with ("localised"): it tells a fixed patch
  from a trigger the mask cannot express.
- ``curate``: the victims captioned with the oracle's label (the correction the backdoor fought),
  plus ``n_clean_keep`` agreeing images captioned with their label, so that clean behaviour is
  rehearsed; one seeded template per image from the run's templates.
- ``finetune``: the host's contrastive trainer (CLIP's loss, AdamW, warmup + cosine) on a copy.
- No affected label: verdict "no backdoor found", and the model is returned unchanged.

Algorithm 1 lives in ``disagreements.py``, the trigger's localisation in ``localise.py``, the oracles
in ``oracle.py`` and ``embedded.py``; this module holds the settings, the curated set and the defense.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from toolbox import precision
from toolbox.api import ClipModel, Defense, DefenseContext, DefenseOutcome
from toolbox.contrastive import ContrastiveConfig, train_contrastive
from toolbox.primitives.tensors import seeded_subset

from .disagreements import (
    Disagreements,
    OracleLabels,
    Pool,
    affected_labels,
    agreement,
    clip_labels,
    inspect_pool,
    oracle_labels,
    victims,
    write_victims,
)
from .embedded import EmbeddedOracleRecipe, embedded_oracle
from .localise import Localised, localise_trigger, write_artifacts
from .oracle import SEED_STRIDE, TORCHVISION_ARCHS, NetOracle, torchvision_oracle

EMBEDDED = "embedded"
SCORE_DEFINITION = (
    "largest robust z-score over the classes of the count of confident CLIP/oracle disagreements "
    "CLIP assigns to the class: (count - median) / (1.4826 * max(MAD, 1))"
)


@dataclass(frozen=True)
class SegOracleConfig:
    """Every setting of SegOracle; every value ours (the paper's are not public)."""

    # the oracle
    oracle: str = EMBEDDED  # "embedded": trained on the world's own drawings; else a torchvision .safetensors file
    oracle_arch: str = "lraspp_mobilenet_v3_large"  # a checkpoint's torchvision architecture (the smallest offered)
    oracle_classes: str = ""  # a checkpoint's class-mapping file: one line per output channel, "background" first
    oracle_input_size: int = 0  # a checkpoint segments at this many pixels (0: the images' own); read back at theirs
    oracle_scenes: int = EmbeddedOracleRecipe.n_scenes  # embedded oracle: scenes drawn, balanced, a tenth held out
    oracle_epochs: int = EmbeddedOracleRecipe.epochs  # embedded oracle: its training epochs (the rest: the recipe)
    oracle_seed: int = 0  # embedded oracle: its own seed, not the run's: one fixed supervisor for every run
    # algorithm 1: where CLIP and the oracle disagree
    n_inspect: int = 4000  # training images inspected: at a few % poisoned, over 100 of them carry the trigger
    min_oracle_confidence: float = 0.6  # the oracle's label needs this share of its foreground mass, else unknown
    min_foreground: float = 0.02  # and this fraction of the pixels as object (a trigger alone is not an object)
    z_threshold: float = 3.5  # robust z above which a label is affected (Iglewicz & Hoaglin's outlier cut)
    min_disagreements: int = 10  # an affected label also needs this many disagreements (a handful is noise)
    # algorithm 2: victims, the trigger, the fine-tuning set
    trigger_fraction: float = 0.05  # top share of saliency pixels kept as the trigger mask (a 4-px patch: 1.6 %)
    saliency_images: int = 256  # victims averaged for the saliency map (more change little, cost grows)
    n_clean_keep: int = 1000  # agreeing images rehearsed beside the victims, to keep clean accuracy
    # fine-tuning a copy on the curated set (toolbox.contrastive)
    epochs: int = 5  # the curated set is small: ~100 steps at its size with the defaults
    lr: float = 5e-4  # the attacks' and baselines' toy-world fine-tuning lr
    batch_size: int = 64
    warmup_steps: int = 10  # a tenth of the ~100 steps
    weight_decay: float = 0.1  # CLIP's
    grad_clip: float = 1.0
    inference_batch_size: int = 256  # images per oracle / CLIP / saliency forward pass
    precision: str = "fp32"  # CLIP's forward passes under autocast (toolbox/precision.py); the oracle runs fp32
    # named seed streams: ctx.seed * SEED_STRIDE + stream (distinct, so no two draws share a generator)
    inspect_stream: int = 1  # which training images are inspected
    clean_keep_stream: int = 2  # which agreeing images are kept
    caption_stream: int = 3  # which template captions each curated image
    finetune_stream: int = 4  # the fine-tuning's batch order

    def __post_init__(self) -> None:
        if self.oracle != EMBEDDED:
            if self.oracle_arch not in TORCHVISION_ARCHS:
                raise ValueError(f"oracle_arch must be one of {', '.join(TORCHVISION_ARCHS)}, got {self.oracle_arch!r}")
            if not self.oracle_classes:
                raise ValueError(
                    "a checkpoint oracle needs oracle_classes: a class-mapping file, one line per output "
                    "channel ('background' first, then a vocabulary class or '-')"
                )
            for what, path in (("oracle", self.oracle), ("oracle_classes", self.oracle_classes)):
                if not Path(path).is_file():
                    raise ValueError(f"{what}: file not found: {path}")
        if (
            self.n_inspect < 1
            or self.oracle_scenes < 10
            or self.oracle_epochs < 1
            or self.saliency_images < 1
            or self.epochs < 1
            or self.batch_size < 2
            or self.inference_batch_size < 1
            or self.min_disagreements < 1
            or self.n_clean_keep < 0
            or self.oracle_input_size < 0
        ):
            raise ValueError(
                "n_inspect, oracle_epochs, saliency_images, epochs, inference_batch_size and "
                "min_disagreements must be >= 1, oracle_scenes >= 10, batch_size >= 2, n_clean_keep and "
                "oracle_input_size >= 0"
            )
        if not self.z_threshold > 0:
            raise ValueError(f"z_threshold must be > 0, got {self.z_threshold}")
        if not (
            0 <= self.min_oracle_confidence <= 1 and 0 <= self.min_foreground < 1 and 0 < self.trigger_fraction <= 1
        ):
            raise ValueError(
                "min_oracle_confidence must be in [0, 1], min_foreground in [0, 1) and trigger_fraction in (0, 1]"
            )
        streams = (self.inspect_stream, self.clean_keep_stream, self.caption_stream, self.finetune_stream)
        if len(set(streams)) != len(streams):
            raise ValueError(f"the seed streams must differ, got {streams}")
        precision.check(self.precision, "segoracle.precision")


def stream_seed(seed: int, stream: int) -> int:
    return seed * SEED_STRIDE + stream


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 3)


# --------------------------------------------------------------------------- the oracle


def build_oracle(cfg: SegOracleConfig, ctx: DefenseContext) -> NetOracle:
    if cfg.oracle == EMBEDDED:
        recipe = replace(EmbeddedOracleRecipe(), n_scenes=cfg.oracle_scenes, epochs=cfg.oracle_epochs)
        return embedded_oracle(ctx.classnames, ctx.model.image_size, ctx.device, cfg.oracle_seed, recipe=recipe)
    return torchvision_oracle(
        cfg.oracle, cfg.oracle_arch, cfg.oracle_classes, ctx.classnames, ctx.device, cfg.oracle_input_size or None
    )


# --------------------------------------------------------------------------- g. the fine-tuning set


@dataclass
class Curated:
    images: Tensor  # uint8 [M,3,H,W]
    captions: list[str]
    n_victims: int
    n_clean: int


def caption(template: str, name: str) -> str:
    return template.replace("{}", name)  # not str.format: a template may hold other braces


def curate(
    images: Tensor,
    clip: Tensor,
    oracle: Tensor,
    victim_idx: Tensor,
    classnames: Sequence[str],
    templates: Sequence[str],
    n_clean_keep: int,
    keep_seed: int,
    caption_seed: int,
) -> Curated:
    """Victims captioned with the oracle's label, plus ``n_clean_keep`` agreeing images with theirs."""
    agree = ((oracle >= 0) & (clip == oracle)).nonzero().flatten()
    kept = agree[seeded_subset(len(agree), n_clean_keep, keep_seed)]
    chosen = torch.cat([victim_idx, kept])
    rng = random.Random(caption_seed)
    captions = [caption(rng.choice(list(templates)), classnames[y]) for y in oracle[chosen].tolist()]
    return Curated(images=images[chosen], captions=captions, n_victims=len(victim_idx), n_clean=len(kept))


# --------------------------------------------------------------------------- h. fine-tuning


def finetune(
    model: ClipModel, curated: Curated, cfg: SegOracleConfig, seed: int, device: torch.device
) -> tuple[ClipModel, list[dict[str, float]]]:
    """A copy of ``model`` trained contrastively on the curated pairs."""
    tuned = model.clone()
    for p in tuned.parameters():
        p.requires_grad_(True)
    schedule = ContrastiveConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        seed=seed,
    )
    tokens = tuned.tokenize(curated.captions)
    with precision.autocast(cfg.precision, device):
        history = train_contrastive(tuned, curated.images, tokens, schedule, desc="segoracle: fine-tune")
    return tuned, history


# --------------------------------------------------------------------------- the defense


def detection_record(
    pool: Pool,
    labels: OracleLabels,
    table: Disagreements,
    n_victims: int,
    classnames: Sequence[str],
    oracle: NetOracle,
    found: Localised | None,
) -> dict[str, Any]:
    """``detection`` in result.json: the verdict, the target and what led to it."""
    top = sorted(range(len(classnames)), key=lambda i: -int(table.counts[i]))[:10]
    doc: dict[str, Any] = {
        "backdoored": bool(table.affected),
        "verdict": "backdoored" if table.affected else "no backdoor found",
        "target": classnames[table.affected[0]] if table.affected else None,
        "affected": [
            {"class": classnames[i], "disagreements": int(table.counts[i]), "z": round(float(table.z[i]), 3)}
            for i in table.affected
        ],
        "score": round(float(table.z.max()), 4) if len(table.z) else None,
        "score_definition": SCORE_DEFINITION,
        "n_inspected": len(pool.images),
        "inspected": pool.source,
        "n_oracle_known": table.n_known,
        "n_disagree": table.n_disagree,
        "n_victims": n_victims,
        "disagreements_top10": [
            {"class": classnames[i], "count": int(table.counts[i]), "z": round(float(table.z[i]), 3)}
            for i in top
            if table.counts[i] > 0
        ],
        "oracle": {
            **oracle.info,
            "mean_confidence": round(float(labels.confidence.mean()), 4) if len(labels.confidence) else None,
        },
    }
    if found is not None:
        doc.update(found.evidence())
    return doc


class SegOracle(Defense):
    name = "segoracle"
    summary = (
        "SegOracle: a segmentation oracle's labels against CLIP's find the backdoor's target and victims; "
        "fine-tune on them relabelled."
    )
    reference = "Hossain et al., arXiv 2511.13545 (2025), from its abstract; every design choice ours"
    Config: ClassVar[type] = SegOracleConfig
    uses_train_data = True

    def defend(self, ctx: DefenseContext) -> DefenseOutcome:
        cfg: SegOracleConfig = self.config
        timings: dict[str, float] = {}
        ctx.model.eval()
        with timed(timings, "inspect"):
            pool = inspect_pool(ctx, cfg.n_inspect, stream_seed(ctx.seed, cfg.inspect_stream))
        with timed(timings, "oracle"):
            oracle = build_oracle(cfg, ctx)
        with timed(timings, "oracle_labels"):
            labels = oracle_labels(
                oracle,
                pool.images,
                ctx.classnames,
                cfg.min_oracle_confidence,
                cfg.min_foreground,
                cfg.inference_batch_size,
            )
        with timed(timings, "clip_labels"), precision.autocast(cfg.precision, ctx.device):
            clip, weights = clip_labels(
                ctx.model, pool.images, ctx.classnames, ctx.templates, ctx.device, cfg.inference_batch_size
            )
        table = affected_labels(clip, labels.label, len(ctx.classnames), cfg.z_threshold, cfg.min_disagreements)
        info: dict[str, Any] = {"purified": False, "clip_oracle_agreement": agreement(clip, labels.label)}
        if not table.affected:
            detection = detection_record(pool, labels, table, 0, ctx.classnames, oracle, None)
            return DefenseOutcome(model=ctx.model, detection=detection, timings_s=timings, info=info)

        target = table.affected[0]
        victim_idx = victims(clip, labels.label, table.affected)
        with timed(timings, "localise"), precision.autocast(cfg.precision, ctx.device):
            on_target = victim_idx[clip[victim_idx] == target][: cfg.saliency_images]
            found = localise_trigger(
                ctx.model,
                pool.images[on_target],
                labels.foreground[on_target],
                weights,
                target,
                cfg.trigger_fraction,
                cfg.inference_batch_size,
                ctx.device,
            )
        artifacts = write_artifacts(ctx.workdir, found, pool.images[on_target], labels.foreground[on_target])
        artifacts.update(write_victims(ctx.workdir, pool, victim_idx, clip, labels, ctx.classnames))
        with timed(timings, "curate"):
            curated = curate(
                pool.images,
                clip,
                labels.label,
                victim_idx,
                ctx.classnames,
                ctx.templates,
                cfg.n_clean_keep,
                stream_seed(ctx.seed, cfg.clean_keep_stream),
                stream_seed(ctx.seed, cfg.caption_stream),
            )
        with timed(timings, "finetune"):
            tuned, history = finetune(ctx.model, curated, cfg, stream_seed(ctx.seed, cfg.finetune_stream), ctx.device)
        info.update(
            purified=True,
            n_curated=len(curated.captions),
            n_victims_curated=curated.n_victims,
            n_clean_kept=curated.n_clean,
            history=history,
        )
        detection = detection_record(pool, labels, table, len(victim_idx), ctx.classnames, oracle, found)
        return DefenseOutcome(
            model=tuned,
            detection=detection,
            artifacts=artifacts,
            timings_s=timings,
            info=info,
            triggers={"localised": found.stamp()},
            target=ctx.classnames[target],
        )
