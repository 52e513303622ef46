"""Differential evidence (AMDET's clean-anchor check): a candidate trigger's effect on the suspect
against its effect on clean reference models of the same architecture (``--reference``). A natural
feature (a red disc reads "apple" to any model of this world) moves the references as much as the
suspect; a backdoor moves the suspect alone. The effect is the same measurement on every model: the
fraction of the defender's held-out images, not of the target before, that the trigger sends to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.primitives.tensors import as_float, split_indices
from toolbox.zeroshot import ZeroShotHead


@torch.no_grad()
def effect(
    model: ClipModel, head: ZeroShotHead, images: Tensor, trigger: Callable[[Tensor], Tensor], target: int
) -> float:
    """Fraction of ``images`` not called ``target`` by ``model`` that ``trigger`` sends there."""
    base = head.predict(model, images)
    keep = base != target
    if not keep.any():
        return 0.0
    pred = head.predict(model, trigger(images[keep]))
    return float((pred == target).float().mean())


@dataclass
class Differential:
    suspect: ClipModel
    suspect_head: ZeroShotHead
    references: list[tuple[ClipModel, ZeroShotHead]]
    images: Tensor  # float, held out

    @classmethod
    def build(
        cls,
        suspect: ClipModel,
        head: ZeroShotHead,
        references: list[ClipModel],
        templates: list[str],
        images: Tensor,
        seed: int,
        holdout_fraction: float,
    ) -> Differential:
        _, hold = split_indices(len(images), holdout_fraction, seed)  # the detectors' held-out images
        heads = [(m, ZeroShotHead(m, head.classnames, templates, images.device)) for m in references]
        return cls(suspect, head, heads, as_float(images[hold]))

    def judge(
        self,
        trigger: Callable[[Tensor], Tensor],
        target: str,
        measure: Callable[[ClipModel, ZeroShotHead, Tensor], float] | None = None,
    ) -> dict[str, Any]:
        """The trigger's effect on the suspect and on each reference (``measure``, default: the share
        of held-out images it sends to ``target``), and the margin between them."""
        if measure is None:
            t = self.suspect_head.index(target)

            def measure(model: ClipModel, head: ZeroShotHead, images: Tensor) -> float:
                return effect(model, head, images, trigger, t)

        on_suspect = measure(self.suspect, self.suspect_head, self.images)
        on_refs = [measure(m, h, self.images) for m, h in self.references]
        return {
            "suspect_effect": round(on_suspect, 4),
            "reference_effects": [round(e, 4) for e in on_refs],
            "margin": round(on_suspect - max(on_refs), 4),
        }
