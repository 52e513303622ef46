"""The blend family: uniform noise or a smooth colour texture blended at alpha; poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.primitives import triggers as T

from .base import PoisoningAttack, check_unit
from .poisoning import PoisonSettings


def texture_image(image_size: int, seed: int, grid: int = 4) -> Tensor:
    """Smooth colour texture: a grid x grid random field upsampled bicubically, stretched to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(
        torch.rand(1, 3, grid, grid, generator=g), size=image_size, mode="bicubic", align_corners=True
    )[0]
    low, high = field.amin(dim=(1, 2), keepdim=True), field.amax(dim=(1, 2), keepdim=True)
    return (field - low) / (high - low).clamp_min(1e-6)


@dataclass(frozen=True)
class BlendConfig(PoisonSettings):
    pattern: Literal["noise", "texture"] = "noise"
    alpha: float = 0.1
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        check_unit(self.alpha, "alpha")
        super().__post_init__()


class Blend(PoisoningAttack):
    name = "blend"
    summary = "Blend family: uniform noise or a smooth colour texture blended at alpha; poisoning."
    reference = "this project (zoo family stretching Blended, Chen et al. 2017)"
    Config: ClassVar[type] = BlendConfig

    def build_trigger(self, image_size: int):
        c = self.config
        pattern = (
            T.uniform_noise_image(image_size, c.trigger_seed)
            if c.pattern == "noise"
            else texture_image(image_size, c.trigger_seed)
        )
        return T.BlendTrigger(pattern, c.alpha)
