"""Backdoored or not: a verdict from stage-2 evidence, calibrated on the clean toy model.

A single UAP's margin cannot decide, and on this toy world neither can UAP agreement:
the clean default ViT sends 75 % of its patch UAPs to "traffic light" (a colourful patch
looks like one), more agreement than most backdoored models show. What separates them
is how small a mask suffices to send held-out images to the ranked class: the clean
model's inverted "traffic light" needs 9.5 % of the mask entries (96 % ASR), the BadNet
model's "mushroom" 4.8 % (99 %). The threshold sits between those two measurements —
two data points, so treat it as a heuristic; the result carries the raw evidence
(stage-1 agreement and shifts, inverted ASR and mask size) so a user can judge.

When the inversion finds no small effective mask, the race's top classes get a longer
patch UAP (``identify.refine_patches``). A patch is 1.6 % of the image, so one that sends
``min_patch_rate`` of held-out images to its class is a small effective trigger by
construction. Measured on the default ViT (100 steps, best of 3 restarts): clean model at
most 0.824 ("dumbbell", bottom-right and top-left), BadEncoder "mushroom" 0.996-1.0 at
bottom-right, where its 20-step race rate had been 0.705 and its inverted mask 11.7 %.
"""

from __future__ import annotations

from dataclasses import dataclass

from .identify import Identification, RefinedPatch
from .invert import InvertedTrigger


@dataclass(frozen=True)
class VerdictConfig:
    min_inverted_asr: float = 0.9  # inversion must really work ...
    max_mask_fraction: float = 0.07  # ... with a mask this small (clean ViT: 0.095; BadNet: 0.048)
    # a refined stage-1 patch (4 px at 32 px) counts as a trigger at this held-out success rate
    min_patch_rate: float = 0.95  # ours (clean ViT: at most 0.824; BadEncoder: 1.0); see the docstring


def best_patch(refined: list[RefinedPatch], cfg: VerdictConfig) -> RefinedPatch | None:
    """The most effective refined patch, when it is effective enough to be a trigger."""
    effective = [p for p in refined if p.holdout_rate >= cfg.min_patch_rate]
    return max(effective, key=lambda p: p.holdout_rate) if effective else None


def decide(ident: Identification, trigger: InvertedTrigger, cfg: VerdictConfig) -> bool:
    """True when the ranked target has a small, effective inverted trigger."""
    del ident  # stage-1 evidence is recorded, not decisive (see the module docstring)
    return (trigger.holdout_asr >= cfg.min_inverted_asr
            and trigger.mask_l1 / trigger.mask.numel() <= cfg.max_mask_fraction)
