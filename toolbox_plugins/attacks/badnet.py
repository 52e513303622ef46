"""BadNet (Gu et al. 2017): a fixed-seed Gaussian-noise patch, then data poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolbox.primitives import triggers as T

from .base import PatchPlacement, PoisoningAttack
from .poisoning import PoisonSettings


@dataclass(frozen=True)
class BadNetConfig(PoisonSettings, PatchPlacement):
    pass


class BadNet(PoisoningAttack):
    name = "badnet"
    summary = "BadNet: fixed-seed Gaussian-noise patch (bottom-right), data poisoning + fine-tuning."
    reference = "Gu et al., BadNets (2017); settings: InverTune appendix A"
    Config: ClassVar[type] = BadNetConfig

    def build_trigger(self, image_size: int):
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        return T.PatchTrigger(T.gaussian_patch(size, self.config.trigger_seed), self.config.location)
