"""Many short UAPs of one perturbation family, optimised side by side: stage 1's race (one per
candidate class) and its group screen (one per group of classes) are this class with another loss.

Each UAP keeps its own init, its own batches (its own generator) and its own Adam state, so
advancing them together, ``chunk`` a forward pass, gives what each would alone (up to float
rounding), and one can stop at any step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from toolbox import precision
from toolbox.api import ClipModel
from toolbox.primitives.perturbations import PerturbationFamily
from toolbox.primitives.tensors import as_float
from toolbox.zeroshot import ZeroShotHead

if TYPE_CHECKING:  # annotations only: identify.py imports this module
    from .identify import IdentifyConfig


class BatchedUAPs:
    """UAPs of ``family``, one per generator of ``gens``; a subclass says what each one's loss is."""

    def __init__(
        self,
        model: ClipModel,
        head: ZeroShotHead,
        fit_images: Tensor,
        family: PerturbationFamily,
        cfg: IdentifyConfig,
        gens: list[torch.Generator],
    ) -> None:
        self.model, self.head, self.fit_images, self.family, self.gens = model, head, fit_images, family, gens
        self.params = [family.init(g).to(fit_images.device).requires_grad_(True) for g in gens]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)  # Adam skips a parameter with no gradient
        self.batch = min(cfg.batch_size, len(fit_images))
        self.active = list(range(len(gens)))

    def loss(self, logits: Tensor, chunk: list[int]) -> Tensor:
        """The summed loss of ``logits`` ([len(chunk) * batch, C], UAP ``chunk[k]``'s images k-th)."""
        raise NotImplementedError

    def observe(self, logits: Tensor, chunk: list[int]) -> None:
        """After a step, with its (detached) logits: a subclass may record what its early stops read."""

    def step(self, chunk: int) -> None:
        """One Adam step of every active UAP, ``chunk`` UAPs a forward pass."""
        for start in range(0, len(self.active), chunk):
            ids = self.active[start : start + chunk]
            idx = torch.stack([torch.randint(len(self.fit_images), (self.batch,), generator=self.gens[i]) for i in ids])
            adv = self.family.apply(as_float(self.fit_images[idx]), torch.stack([self.params[i] for i in ids])[:, None])
            logits = self.head.logits(self.model, adv.flatten(0, 1))
            precision.step(self.opt, self.loss(logits, ids) / self.batch)
            with torch.no_grad():
                for i in ids:
                    self.family.project(self.params[i])
                self.observe(logits.detach(), ids)

    def param(self, i: int) -> Tensor:
        return self.params[i].detach()
