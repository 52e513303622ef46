"""Small tensor helpers shared by attacks and defenses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


def as_float(images: Tensor) -> Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def image_embeddings(model: Any, images: Tensor, batch_size: int) -> Tensor:  # a ClipModel
    """E_I(x) of every image (uint8 or float), in batches of ``batch_size``, without gradients."""
    with torch.no_grad():
        return torch.cat(
            [model.encode_image(as_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        )


def seeded_subset(n: int, k: int, seed: int) -> Tensor:
    """Sorted indices of ``k`` of ``n`` items (all when ``k >= n``), drawn with ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(fit, holdout) index sets: statistics are measured on images the optimisation never saw."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, int(round(n * holdout_fraction)))
    return order[n_hold:], order[:n_hold]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no parameter gradients, for optimising inputs (UAPs, triggers, patches);
    the model's own flags and mode are restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
