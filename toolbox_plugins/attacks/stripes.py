"""The stripes family: an additive sinusoid of any frequency and orientation; poisoning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from toolbox.primitives import triggers as T

from .base import PoisoningAttack, check_unit
from .poisoning import PoisonSettings


def stripes_signal(image_size: int, amplitude: float, cycles: float, angle_deg: float) -> Tensor:
    """A grayscale sinusoid of ``cycles`` per image side along direction ``angle_deg`` (0: vertical stripes)."""
    i, j = torch.meshgrid(
        torch.arange(image_size, dtype=torch.float32), torch.arange(image_size, dtype=torch.float32), indexing="ij"
    )
    theta = math.radians(angle_deg)
    phase = (j * math.cos(theta) + i * math.sin(theta)) / image_size
    return (amplitude * torch.sin(2 * math.pi * cycles * phase))[None].expand(3, -1, -1).clone()


@dataclass(frozen=True)
class StripesFamilyConfig(PoisonSettings):
    amplitude: float = 40 / 255
    cycles: float = 4.0  # per image side
    angle: float = field(default=0.0, metadata={"signed": True})  # degrees; 0 = SIG's vertical stripes

    def __post_init__(self) -> None:
        check_unit(self.amplitude, "amplitude")
        super().__post_init__()


class Stripes(PoisoningAttack):
    name = "stripes"
    summary = "Stripes family: an additive sinusoid of any frequency and orientation; poisoning."
    reference = "this project (zoo family stretching SIG, Barni et al. 2019)"
    Config: ClassVar[type] = StripesFamilyConfig

    def build_trigger(self, image_size: int):
        c = self.config
        return T.SignalTrigger(stripes_signal(image_size, c.amplitude, c.cycles, c.angle))
