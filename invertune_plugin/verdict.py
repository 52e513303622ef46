"""Backdoored or not: a verdict from stage-2 evidence, calibrated on the clean toy model.

A single UAP's margin cannot decide, and on this toy world neither can UAP agreement:
the clean default ViT sends 75 % of its patch UAPs to "traffic light" (a colourful patch
looks like one), more agreement than most backdoored models show. What separates them
is how small a mask suffices to send held-out images to the ranked class: the clean
model's inverted "traffic light" needs 9.5 % of the mask entries (96 % ASR), the BadNet
model's "mushroom" 4.8 % (99 %). The threshold sits between those two measurements —
two data points, so treat it as a heuristic; the result carries the raw evidence
(stage-1 agreement and shifts, inverted ASR and mask size) so a user can judge.
"""

from __future__ import annotations

from dataclasses import dataclass

from .identify import Identification
from .invert import InvertedTrigger


@dataclass(frozen=True)
class VerdictConfig:
    min_inverted_asr: float = 0.9  # inversion must really work ...
    max_mask_fraction: float = 0.07  # ... with a mask this small (clean ViT: 0.095; BadNet: 0.048)


def decide(ident: Identification, trigger: InvertedTrigger, cfg: VerdictConfig) -> bool:
    """True when the ranked target has a small, effective inverted trigger."""
    del ident  # stage-1 evidence is recorded, not decisive (see the module docstring)
    return (trigger.holdout_asr >= cfg.min_inverted_asr
            and trigger.mask_l1 / trigger.mask.numel() <= cfg.max_mask_fraction)
