"""CLIP's contrastive objective and a small, deterministic training loop: the shared
contrastive trainer, part of the host's public contract.

Used by the embedded world to train its tiny CLIP from scratch, and by plugins: poisoning
attacks (fine-tuning on a poisoned image-caption set), the rebound check and the fine-tuning
baselines, which pass their own per-batch loss (:data:`BatchLoss`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import precision
from .api import ClipModel
from .progress import progress


@dataclass(frozen=True)
class ContrastiveConfig:
    """Training schedule. Defaults: the embedded default's from-scratch training (feasibility
    study: 3 epochs of 20k pairs at batch 256, AdamW lr 1e-3 reach ~97 % zero-shot CA)."""

    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) pairs (CLIP's loss)."""
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def lr_at(step: int, total: int, cfg: ContrastiveConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with CLIP's grouping: weight decay on matrices only, not on gains, biases or the temperature."""
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def clamp_temperature(model: ClipModel) -> None:
    """CLIP keeps its logit scale at most 100."""
    clip_module = getattr(model, "clip", None)
    if clip_module is not None and hasattr(clip_module, "logit_scale"):
        with torch.no_grad():
            clip_module.logit_scale.clamp_(0, math.log(100))


EpochCallback = Callable[[int, dict[str, float]], None]

# (model, images [B,3,H,W] float in [0,1] on the model's device, the batch's texts: token rows on that
# device or caption strings, the loop's torch generator, its python rng) -> (loss, extra scalars to log)
BatchLoss = Callable[[ClipModel, Tensor, Any, torch.Generator, random.Random], tuple[Tensor, dict[str, float]]]
BatchTransform = Callable[[Tensor, Any, Tensor], tuple[Tensor, Any]]


def clip_batch_loss(
    model: ClipModel, images: Tensor, tokens: Tensor, gen: torch.Generator, rng: random.Random
) -> tuple[Tensor, dict[str, float]]:
    """The default per-batch loss: CLIP's contrastive loss on the (image, token) pairs as given."""
    return clip_loss(*model(images, tokens)), {}


def _batch(
    images: Tensor,
    texts: Tensor | Sequence[str],
    idx: Tensor,
    device: torch.device,
    batch_transform: BatchTransform | None,
) -> tuple[Tensor, Any]:
    """Rows ``idx`` of the pairs: images as float in [0, 1] and texts (tokens or captions) on ``device``."""
    x = images[idx]
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    t = texts[idx] if isinstance(texts, Tensor) else [texts[i] for i in idx.tolist()]
    if batch_transform is not None:
        x, t = batch_transform(x, t, idx)
    return x.to(device), (t.to(device) if isinstance(t, Tensor) else t)


def train_contrastive(
    model: ClipModel,
    images: Tensor,
    texts: Tensor | Sequence[str],
    cfg: ContrastiveConfig,
    *,
    desc: str = "train",
    on_epoch: EpochCallback | None = None,
    batch_transform: BatchTransform | None = None,
    params: list[nn.Parameter] | None = None,
    loss: BatchLoss = clip_batch_loss,
    check_finite: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` on (image, text) pairs with AdamW and warmup + cosine; returns per-epoch means
    of the loss and of ``loss``'s extra scalars.

    ``images`` is uint8 [N,3,H,W] (or float in [0,1]); ``texts`` is tokens [N, context] (what the
    default :func:`clip_batch_loss` takes) or N caption strings for a ``loss`` that tokenizes itself.
    ``batch_transform(images, texts, index)`` may rewrite a batch (poisoning on the fly).
    ``loss`` gets the generator that shuffles the batches and a ``random.Random``, both seeded with
    ``cfg.seed``. ``check_finite`` raises ``FloatingPointError`` on a NaN/inf loss instead of stepping.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    n = len(images)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = adamw(trainable, cfg.lr, cfg.weight_decay)
    device = next(model.parameters()).device
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    bar = progress(total=total, desc=desc, unit="step")
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, t = _batch(images, texts, idx, device, batch_transform)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            value, extra = loss(model, x, t, gen, rng)
            if check_finite and not math.isfinite(value.item()):
                raise FloatingPointError(f"{desc}: loss became {value.item()} at step {step}")
            precision.step(opt, value, (trainable, cfg.grad_clip))  # plain fp32 unless inside precision.autocast
            clamp_temperature(model)
            for k, v in {"loss": value.item(), **extra}.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value.item():.3f}", epoch=epoch + 1)
        stats = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}}
        history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch + 1, stats)
    bar.close()
    model.eval()
    return history
