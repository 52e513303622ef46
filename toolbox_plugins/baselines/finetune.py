"""What the fine-tuning baselines share: their clean image-caption data and schedule. The loop
is the host's ``toolbox.contrastive.train_contrastive``, to which each baseline passes its loss.

Data budget: the paper gives every baseline 10x InverTune's clean data (500k CC3M pairs
against InverTune's 50k ImageNet images, appendices B and C). ``data_ratio`` keeps that
ratio configurable; the number of pairs actually used is recorded in the result.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from toolbox import precision
from toolbox.api import DefenseContext
from toolbox.contrastive import ContrastiveConfig


@dataclass(frozen=True)
class FinetuneConfig:
    """Shared schedule. Paper values are for OpenAI RN50 on 500k CC3M pairs, where the
    baselines' lr (4.5e-6) is of the order of the poisoning lr (1e-6). The toy world's
    attacks fine-tune at 5e-4, so the baselines use that: at 1e-4, FT left BadNet at
    100 % ASR (CA 97.3), i.e. one short epoch at a fifth of the poisoning lr moves nothing."""

    data_ratio: float = 10.0  # paper: baselines get 10x InverTune's data
    reference_images: int = 1024  # InverTune's n_images; pairs used = data_ratio * reference_images
    epochs: int = 1  # paper 10
    batch_size: int = 64  # paper 64
    lr: float = 5e-4  # paper 4.5e-6 (FT, CleanCLIP, CleanerCLIP); toy world: the attacks' 5e-4
    warmup_steps: int = 16  # paper 50 (FT/CleanCLIP), 10000 (CleanerCLIP)
    weight_decay: float = 0.1  # paper 0.1
    grad_clip: float = 1.0
    precision: str = "fp32"  # forward passes under autocast (toolbox/precision.py); paper: not stated

    def __post_init__(self) -> None:
        if self.data_ratio <= 0 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError("data_ratio must be > 0, epochs >= 1 and batch_size >= 2")
        precision.check(self.precision)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    def schedule(self, seed: int) -> ContrastiveConfig:
        """The shared loop's settings (min_lr_ratio at its default), seeding shuffling and augmentations."""
        return ContrastiveConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            grad_clip=self.grad_clip,
            seed=seed,
        )


@dataclass
class PairSet:
    images: Tensor  # uint8 [N,3,H,W]
    captions: list[str]
    requested: int

    def describe(self) -> dict[str, int]:
        return {"pairs_requested": self.requested, "pairs_used": len(self.captions)}


def clean_pairs(ctx: DefenseContext, cfg: FinetuneConfig) -> PairSet:
    """``data_ratio * reference_images`` seeded pairs from the clean image-caption data, one caption each."""
    if ctx.train_data is None or ctx.train_data.captions is None:
        raise ValueError("this defense fine-tunes on image-caption pairs: pass --train-data (caption CSV or COCO)")
    all_images = ctx.train_data.uint8()
    requested = max(cfg.batch_size, int(round(cfg.data_ratio * cfg.reference_images)))
    n = min(requested, len(all_images))
    gen = torch.Generator().manual_seed(ctx.seed)
    keep = torch.randperm(len(all_images), generator=gen)[:n].sort().values
    rng = random.Random(ctx.seed)
    captions = [rng.choice(ctx.train_data.captions[i]) for i in keep.tolist()]
    return PairSet(images=all_images[keep], captions=captions, requested=requested)


def rounded(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch means to 5 decimals, as the baselines record them."""
    return [{k: v if k == "epoch" else round(v, 5) for k, v in h.items()} for h in history]
