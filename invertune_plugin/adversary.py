"""A trigger that stage 3 keeps re-finding on the model it tunes (ours; the paper tunes against one
fixed inversion).

Tuned against one reconstructed trigger, a model can unlearn that reconstruction while the real
trigger still works (the zoo's dev split, docs/results/zoo.md). An adversary holds the finding's
trigger as a free parameter of the same kind (a patch in its box, a pattern under stage 2's mask,
an additive perturbation within its L-inf budget) and, every ``tune.refresh_every`` steps, takes a
few targeted steps on the model being tuned, so tuning unlearns what the tuned model still answers
to: the min-max of I-BAU (Zeng et al., ICLR 2022), around the detector's own trigger. Until it is
refreshed it applies exactly the finding's trigger.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from toolbox import precision
from toolbox.api import ClipModel
from toolbox.primitives.tensors import frozen
from toolbox.primitives.triggers import add_signal
from toolbox.zeroshot import ZeroShotHead

from .identify import targeted_loss
from .invert import InvertedTrigger


class Adversary:
    """``x -> apply(x, param)`` toward class ``target``; ``refresh`` re-optimises ``param``."""

    def __init__(
        self, param: Tensor, apply: Callable[[Tensor, Tensor], Tensor], project: Callable[[Tensor], None], target: int
    ) -> None:
        self.found = param.detach().clone()  # the finding's trigger, which reset() returns to
        self.param = self.found.clone().requires_grad_(True)
        self.apply, self.project, self.target = apply, project, target
        self.refreshes = 0
        self._opt: torch.optim.Optimizer | None = None

    def reset(self) -> None:
        """Back to the finding's trigger, refreshes and Adam state forgotten (several tunings, one finding)."""
        self.param = self.found.clone().requires_grad_(True)
        self.refreshes, self._opt = 0, None

    def __call__(self, images: Tensor) -> Tensor:
        return self.apply(images, self.param.detach().to(images))

    def refresh(self, model: ClipModel, head: ZeroShotHead, images: Tensor, steps: int, lr: float) -> float:
        """``steps`` Adam steps making ``images`` carrying the trigger go to the target on ``model``;
        only the trigger moves. Adam's state (and the first call's ``lr``) persists across refreshes."""
        if self._opt is None:  # the first refresh: the parameter joins the images' device
            self.param = self.param.detach().to(images.device).requires_grad_(True)
            self._opt = torch.optim.Adam([self.param], lr=lr)
        loss = torch.zeros(())
        with frozen(model):  # only the trigger moves: no graph through the tuned model's parameters
            for _ in range(steps):
                loss = targeted_loss(head.logits(model, self.apply(images, self.param)), self.target)
                precision.step(self._opt, loss)
                with torch.no_grad():
                    self.project(self.param)
        self.refreshes += 1
        return float(loss.detach())  # the last step's, before its update

    def negated(self) -> Callable[[Tensor], Tensor]:
        """The additive trigger with its sign flipped (stripes tune both signs); follows refreshes."""
        return lambda images: self.apply(images, -self.param.detach().to(images))


def masked(trigger: InvertedTrigger, target: int) -> Adversary:
    """Stage 2's (or a refined patch's) trigger: the pattern under its fixed mask moves, in [0, 1]."""
    if trigger.delta is not None:
        raise ValueError("masked() takes a mask-and-pattern trigger; additive() an additive one")
    mask = trigger.mask

    def apply(images: Tensor, pattern: Tensor) -> Tensor:
        m = mask.to(images)
        return m * pattern + (1 - m) * images

    return Adversary(trigger.pattern, apply, lambda p: p.clamp_(0, 1), target)


def additive(trigger: InvertedTrigger, eps: float, target: int) -> Adversary:
    """An additive trigger (no mask): the perturbation moves within the L-inf budget ``eps``."""
    if trigger.delta is None or trigger.mask_l1 != 0:
        raise ValueError("additive() takes a purely additive trigger (see invert.additive_trigger)")
    return Adversary(trigger.delta, add_signal, lambda d: d.clamp_(-eps, eps), target)
