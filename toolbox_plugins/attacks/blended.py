"""Blended (Chen et al. 2017): a fixed-seed uniform-noise image blended in, then data poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolbox.primitives import triggers as T

from .base import PoisoningAttack
from .poisoning import PoisonSettings


@dataclass(frozen=True)
class BlendedConfig(PoisonSettings):
    alpha: float = 0.2  # paper 0.2
    epochs: int = 10  # paper 10; the others' 2 planted 59.8 % ASR@1 on the tiny ResNet
    trigger_seed: int = 0


class Blended(PoisoningAttack):
    name = "blended"
    summary = "Blended: fixed-seed uniform-noise image blended at alpha 0.2."
    reference = "Chen et al., Targeted backdoor attacks (2017); settings: InverTune appendix A"
    Config: ClassVar[type] = BlendedConfig

    def build_trigger(self, image_size: int):
        return T.BlendTrigger(T.uniform_noise_image(image_size, self.config.trigger_seed), self.config.alpha)
