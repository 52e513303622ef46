"""The colour-filter family: a global colour transform M x (identity mixed with a random filter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import PoisoningAttack, check_unit
from .poisoning import PoisonSettings


@dataclass(frozen=True)
class ColourFilterTrigger:
    """x -> clamp(M x): every pixel's colour mixed by one 3 x 3 matrix (a sepia-like filter)."""

    matrix: Tensor

    def __call__(self, images: Tensor) -> Tensor:
        return torch.einsum("ij,bjhw->bihw", self.matrix.to(images), images).clamp(0, 1)


@dataclass(frozen=True)
class ColourFilterConfig(PoisonSettings):
    strength: float = 0.3  # 0: identity; 1: a random row-stochastic colour mix
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        check_unit(self.strength, "strength")
        super().__post_init__()


class ColourFilter(PoisoningAttack):
    name = "color-filter"
    summary = "Colour-filter family: a global colour transform M x (identity mixed with a random filter)."
    reference = "this project (zoo family; cf. Instagram-filter triggers, Liu et al. ABS 2019)"
    Config: ClassVar[type] = ColourFilterConfig

    def build_trigger(self, image_size: int):
        g = torch.Generator().manual_seed(self.config.trigger_seed)
        mix = torch.rand(3, 3, generator=g)
        mix = mix / mix.sum(dim=1, keepdim=True)
        s = self.config.strength
        return ColourFilterTrigger((1 - s) * torch.eye(3) + s * mix)
