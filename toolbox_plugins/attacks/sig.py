"""SIG (Barni et al., ICIP 2019): an additive horizontal sinusoid, then data poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolbox.primitives import triggers as T

from .base import PoisoningAttack
from .poisoning import PoisonSettings


@dataclass(frozen=True)
class SIGConfig(PoisonSettings):
    amplitude: float = 60 / 255  # paper 60/255
    cycles: float = 6.0  # paper: 6 cycles per image width


class SIG(PoisoningAttack):
    name = "sig"
    summary = "SIG: horizontal sinusoid (6 cycles per width, amplitude 60/255), clipped."
    reference = "Barni et al., ICIP 2019; settings: InverTune appendix A"
    Config: ClassVar[type] = SIGConfig

    def build_trigger(self, image_size: int):
        return T.SignalTrigger(T.sig_signal(image_size, self.config.amplitude, self.config.cycles))
