"""Differentiable zero-shot logits: the quantity InverTune's three stages steer."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.zeroshot import class_embeddings


class ZeroShotHead:
    """Fixed class embeddings (template-ensembled) plus the model's temperature."""

    def __init__(self, model: ClipModel, classnames: Sequence[str], templates: Sequence[str],
                 device: torch.device) -> None:
        self.classnames = list(classnames)
        self.weights = class_embeddings(model, classnames, templates, device).to(device)  # [C, D]
        self.scale = model.logit_scale()

    def logits(self, model: ClipModel, images: Tensor) -> Tensor:
        return self.scale * model.encode_image(images) @ self.weights.T

    def index(self, name: str) -> int:
        return self.classnames.index(name)

    @torch.no_grad()
    def batched_logits(self, model: ClipModel, images: Tensor, batch_size: int = 256) -> Iterator[Tensor]:
        """Logits ``batch_size`` images at a time, without gradients: memory bounded by the batch."""
        for i in range(0, len(images), batch_size):
            yield self.logits(model, images[i:i + batch_size])

    def predict(self, model: ClipModel, images: Tensor, batch_size: int = 256) -> Tensor:
        return torch.cat([lg.argmax(1) for lg in self.batched_logits(model, images, batch_size)])
