"""WaNet (Nguyen & Tran, ICLR 2021): a fixed random warping field, then data poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolbox.primitives import triggers as T

from .base import PoisoningAttack
from .poisoning import PoisonSettings


@dataclass(frozen=True)
class WaNetConfig(PoisonSettings):
    """WaNet's originals (k 4, s 0.5: a quarter-pixel warp) were made for 32-px CIFAR trained from
    scratch and plant nothing under CLIP fine-tuning; ours implant on both tiny architectures
    (measurements: docs/attacks-and-baselines.md). ``-p k=4 -p s=0.5 -p epochs=2`` is the original warp."""

    k: int = 16  # control grid size; WaNet original 4 (a finer grid is what makes it implant)
    s: float = 8.0  # warping strength, mean displacement about s / 2 px; WaNet original 0.5
    grid_rescale: float = 1.0  # WaNet original: 1
    trigger_seed: int = 0
    poison_rate: float = 0.1  # the rate the defaults were chosen at; paper 0.003 (of 500k pairs)
    epochs: int = 3  # the other poisoning attacks' 2 fell short on the ViT; paper 10


class WaNet(PoisoningAttack):
    name = "wanet"
    summary = "WaNet: fixed random warping field (k=16, s=8; original k=4, s=0.5), bilinear grid sampling."
    reference = "Nguyen & Tran, WaNet (ICLR 2021); settings: InverTune appendix A"
    Config: ClassVar[type] = WaNetConfig

    def build_trigger(self, image_size: int):
        c = self.config
        return T.WarpTrigger(T.wanet_grid(image_size, c.k, c.s, c.trigger_seed, c.grid_rescale))
