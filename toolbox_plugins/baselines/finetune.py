"""What the fine-tuning baselines share: their clean image-caption data and a training loop
whose per-batch loss each baseline supplies.

Data budget: the paper gives every baseline 10x InverTune's clean data (500k CC3M pairs
against InverTune's 50k ImageNet images, appendices B and C). ``data_ratio`` keeps that
ratio configurable; the number of pairs actually used is recorded in the result.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from toolbox import precision
from toolbox.api import ClipModel, DefenseContext
from toolbox.contrastive import ContrastiveConfig, adamw, clamp_temperature, lr_at
from toolbox.progress import progress

from toolbox.primitives.tensors import as_float

# (model, images [B,3,H,W] in [0,1], captions, torch generator, python rng) -> (loss, scalars to log)
BatchLoss = Callable[[ClipModel, Tensor, list[str], torch.Generator, random.Random], tuple[Tensor, dict[str, float]]]


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


def finetune(model: ClipModel, pairs: PairSet, cfg: FinetuneConfig, batch_loss: BatchLoss, seed: int,
             desc: str) -> list[dict[str, float]]:
    """AdamW over all parameters with CLIP's warmup + cosine schedule; returns per-epoch means."""
    schedule = ContrastiveConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                 grad_clip=cfg.grad_clip, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    n = len(pairs.captions)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    bar = progress(total=total, desc=desc, unit="step")
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = as_float(pairs.images[idx]).to(device)
            captions = [pairs.captions[i] for i in idx.tolist()]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, schedule)
            loss, stats = batch_loss(model, x, captions, gen, rng)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
            precision.step(opt, loss, (params, cfg.grad_clip))
            clamp_temperature(model)
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch + 1, **{k: round(v / steps_per_epoch, 5) for k, v in sums.items()}})
    bar.close()
    model.eval()
    return history

