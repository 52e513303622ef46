"""The border family: a frame of solid, checkerboard or noise content around the image; poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from toolbox.primitives import triggers as T

from .base import PoisoningAttack
from .patch import Content, content_patch
from .poisoning import PoisonSettings


@dataclass(frozen=True)
class FrameTrigger:
    frame: Tensor  # [3, H, W], used where mask is 1
    mask: Tensor  # [1, H, W]

    def __call__(self, images: Tensor) -> Tensor:
        m = self.mask.to(images)
        return m * self.frame.to(images) + (1 - m) * images


@dataclass(frozen=True)
class BorderConfig(PoisonSettings):
    content: Content = "solid"
    width_fraction: float = 1 / 16  # of the image side (2 px at 32 px)
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.width_fraction < 0.5:
            raise ValueError(f"width_fraction must be in (0, 0.5), got {self.width_fraction}")
        super().__post_init__()


class Border(PoisoningAttack):
    name = "border"
    summary = "Border family: a frame of solid, checkerboard or noise content around the image; poisoning."
    reference = "this project (zoo family)"
    Config: ClassVar[type] = BorderConfig

    def build_trigger(self, image_size: int):
        c = self.config
        width = T.patch_pixels(image_size, c.width_fraction)
        mask = torch.ones(1, image_size, image_size)
        mask[:, width : image_size - width, width : image_size - width] = 0
        return FrameTrigger(content_patch(c.content, image_size, c.trigger_seed), mask)
