"""SegOracle's algorithm 1: where the suspect CLIP and the segmentation oracle disagree.

The inspected images (a), the oracle's labels (b), the suspect's zero-shot labels (c), the labels that
collect far more confident disagreements than the others (d) and their victims (e); the choices are
described in :mod:`toolbox_plugins.segoracle.segoracle`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from toolbox.api import ClipModel, DefenseContext, ImageData, InMemoryImages
from toolbox.primitives.tensors import as_float, seeded_subset
from toolbox.zeroshot import class_embeddings, image_features

from .oracle import NetOracle, read_logits

MAD_TO_SD = 1.4826  # MAD * this estimates the standard deviation of a normal sample


# --------------------------------------------------------------------------- a. the images to inspect


@dataclass
class Pool:
    images: Tensor  # uint8 [N,3,H,W]
    indices: Tensor  # [N] into the training set the pool was drawn from
    source: str  # what the set is


def inspect_pool(ctx: DefenseContext, n_inspect: int, seed: int) -> Pool:
    """``n_inspect`` images of the data the suspect was fine-tuned on (module docstring: threat model)."""
    if ctx.train_data is None:
        raise ValueError("segoracle inspects the data the suspect was fine-tuned on: pass --train-data")
    data, source = ctx.train_data, f"training set {ctx.train_data.source}"
    poisoned = ctx.attack.poison(ctx.train_data, ctx.seed) if ctx.attack is not None else None
    if poisoned is not None:  # its images only: .poisoned is ground truth the defense must not see
        data, source = poisoned.data, f"training set as poisoned by {getattr(ctx.attack, 'name', '?')}"
    keep = seeded_subset(len(data.dataset), n_inspect, seed)
    return Pool(images=data.uint8(keep), indices=keep, source=source)


# --------------------------------------------------------------------------- b. the oracle's labels


@dataclass
class OracleLabels:
    label: Tensor  # [N] long: vocabulary index, -1 where unknown
    confidence: Tensor  # [N] float
    foreground: Tensor  # [N,H,W] bool: the oracle's object region


def oracle_labels(
    oracle: NetOracle,
    images: Tensor,
    classnames: Sequence[str],
    min_confidence: float,
    min_foreground: float,
    batch_size: int,
) -> OracleLabels:
    """The oracle's class per image, as a vocabulary index; unknown (-1) without enough foreground or
    confidence."""
    to_vocab = torch.tensor([list(classnames).index(name) for name in oracle.classnames])
    labels, confidences, foregrounds = [], [], []
    for start in range(0, len(images), batch_size):
        reading = read_logits(oracle.segment(as_float(images[start : start + batch_size])).cpu())
        enough = reading.foreground.flatten(1).float().mean(1) >= max(min_foreground, 1e-12)
        known = (reading.label >= 0) & enough & (reading.confidence >= min_confidence)
        labels.append(torch.where(known, to_vocab[reading.label.clamp_min(0)], torch.full_like(reading.label, -1)))
        confidences.append(reading.confidence)
        foregrounds.append(reading.foreground)
    return OracleLabels(label=torch.cat(labels), confidence=torch.cat(confidences), foreground=torch.cat(foregrounds))


# --------------------------------------------------------------------------- c. the suspect's labels


def clip_labels(
    model: ClipModel,
    images: Tensor,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """The suspect's zero-shot labels [N] and its class weights [C, D] (reused by the saliency step)."""
    weights = class_embeddings(model, classnames, templates, device)
    data = ImageData(InMemoryImages(images), "unlabelled", "segoracle: inspected images")
    feats, _ = image_features(model, data, batch_size, device)
    return (feats @ weights.T).argmax(1), weights


# --------------------------------------------------------------------------- d. affected labels


@dataclass
class Disagreements:
    counts: Tensor  # [C] long: confident disagreements CLIP assigns to each class
    z: Tensor  # [C] float: their robust z-scores
    affected: list[int]  # classes past the threshold, highest z first
    n_known: int  # images the oracle labelled
    n_disagree: int


def agreement(clip: Tensor, oracle: Tensor) -> float | None:
    """How often CLIP says what the oracle says, where the oracle knows (None: it knows nothing)."""
    known = oracle >= 0
    return round(float((clip[known] == oracle[known]).float().mean()), 4) if bool(known.any()) else None


def disagreeing(clip: Tensor, oracle: Tensor) -> Tensor:
    """[N] bool: the oracle knows the image's class and CLIP says another."""
    return (oracle >= 0) & (clip != oracle)


def affected_labels(
    clip: Tensor, oracle: Tensor, n_classes: int, z_threshold: float, min_disagreements: int
) -> Disagreements:
    """Classes that collect far more disagreements than the others (robust z over the classes)."""
    differ = disagreeing(clip, oracle)
    counts = torch.bincount(clip[differ], minlength=n_classes)
    c = counts.double()
    median = c.quantile(0.5)  # not Tensor.median: that is the lower middle value for an even count
    mad = (
        (c - median).abs().quantile(0.5).clamp_min(1.0)
    )  # floor: one disagreement, so a quiet table never divides by 0
    z = ((c - median) / (MAD_TO_SD * mad)).float()
    hits = [i for i in range(n_classes) if z[i] > z_threshold and counts[i] >= min_disagreements]
    return Disagreements(
        counts=counts,
        z=z,
        affected=sorted(hits, key=lambda i: -float(z[i])),
        n_known=int((oracle >= 0).sum()),
        n_disagree=int(differ.sum()),
    )


# --------------------------------------------------------------------------- e. victims


def victims(clip: Tensor, oracle: Tensor, affected: Sequence[int]) -> Tensor:
    """Indices of the disagreeing images CLIP assigns to an affected label."""
    hit = disagreeing(clip, oracle) & torch.isin(clip, torch.tensor(list(affected), dtype=clip.dtype))
    return hit.nonzero().flatten()


def write_victims(
    workdir: Path, pool: Pool, victim_idx: Tensor, clip: Tensor, labels: OracleLabels, classnames: Sequence[str]
) -> dict[str, str]:
    """One row per victim: its index in the training set, CLIP's label, the oracle's and its confidence
    (a later check can hold the indices against an attack's poisoning record)."""
    import csv

    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "segoracle_victims.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "clip_label", "oracle_label", "oracle_confidence"])
        for i in victim_idx.tolist():
            writer.writerow(
                [
                    int(pool.indices[i]),
                    classnames[int(clip[i])],
                    classnames[int(labels.label[i])],
                    round(float(labels.confidence[i]), 4),
                ]
            )
    return {"victims_table": "segoracle_victims.csv"}
