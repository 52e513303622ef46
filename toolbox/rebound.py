"""Rebound ASR: does the backdoor come back after a little clean fine-tuning?

A defense can silence a backdoor (a counter-weight, a mask, a shifted bias) without removing it;
ordinary fine-tuning on clean data then brings it back. After the defense, the defended model is
fine-tuned briefly on clean image-caption pairs with CLIP's own loss (the shared contrastive
trainer) and the attack success rate is measured again: ``metrics.rebound`` in result.json. The
settings (steps, lr, batch, pairs drawn) are recorded beside it; the same seed draws the same pairs.
Off unless ``--rebound-steps`` is set: it fine-tunes a copy of every model it measures.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .api import ClipModel, ImageData
from .contrastive import ContrastiveConfig, train_contrastive


@dataclass(frozen=True)
class ReboundConfig:
    steps: int = 0  # optimiser steps of clean fine-tuning; 0: rebound ASR is not measured
    lr: float = 5e-4  # the toy world's fine-tuning lr (its attacks' and baselines'); AdamW, CLIP's grouping
    batch_size: int = 64
    warmup_steps: int = 0
    weight_decay: float = 0.1  # CLIP's

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 2 or not self.lr > 0 or self.warmup_steps < 0:
            raise ValueError("rebound steps must be >= 0, batch size >= 2, lr > 0 and warmup steps >= 0")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


def clean_pairs(data: ImageData, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` seeded image-caption pairs (uint8 images, one caption each) from a captioned dataset;
    a dataset of fewer pairs is drawn again (a new permutation each pass)."""
    if data.captions is None:
        raise ValueError(f"rebound ASR fine-tunes on image-caption pairs; {data.source} has no captions")
    gen = torch.Generator().manual_seed(seed)
    passes = -(-n // len(data.dataset))
    keep = torch.cat([torch.randperm(len(data.dataset), generator=gen) for _ in range(passes)])[:n]
    rng = random.Random(seed)
    return data.uint8(keep), [rng.choice(data.captions[int(i)]) for i in keep]


def rebound(
    model: ClipModel, data: ImageData, cfg: ReboundConfig, seed: int, device: torch.device
) -> tuple[ClipModel, dict[str, Any]]:
    """A copy of ``model`` fine-tuned ``cfg.steps`` steps on clean pairs from ``data`` (the input is
    not modified), and what was done."""
    if len(data.dataset) == 0:
        raise ValueError(f"rebound ASR needs clean pairs; {data.source} has none")
    n = cfg.steps * cfg.batch_size  # one epoch of exactly ``steps`` batches
    images, captions = clean_pairs(data, n, seed)
    tuned = model.clone()
    for p in tuned.parameters():
        p.requires_grad_(True)
    schedule = ContrastiveConfig(
        epochs=1,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=1.0,
        seed=seed,
    )
    history = train_contrastive(tuned.to(device), images, model.tokenize(captions), schedule, desc="rebound")
    tuned.eval()
    return tuned, {
        **asdict(cfg),
        "pairs": n,
        "distinct_pairs": min(n, len(data.dataset)),
        "steps_run": cfg.steps,
        "final_loss": round(history[-1]["loss"], 4),
        "seed": seed,
    }


REBOUND_DEFINITION = (
    "the defended model fine-tuned on clean image-caption pairs from the training data "
    "(CLIP's contrastive loss, AdamW at a constant lr after warm-up), then measured like "
    "'after'; a backdoor that was silenced rather than removed comes back in asr"
)
