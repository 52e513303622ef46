"""Stage 1's group screen: which few classes of a large vocabulary are worth racing, at a cost that
grows with about sqrt(C) groups, not with the C classes.

The vocabulary is split at random into groups; per group one short UAP of each screen family (by
default the race's global L-inf family) is optimised to move images into *any* class of the group,
its loss the group's negative log-probability. A backdoor target pulls its group's UAP toward
itself, so the held-out images that UAP moves land on the target; a class's screen score is the
fraction of held-out images (not of that class before) landing on it, minus the family's median
over classes, best over families and rounds. Unlike the untargeted screen (which lets every UAP
fall into the model's strongest natural attractor), each group's UAP can only reach its own
classes, so a target that loses to an attractor overall can still win its group.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.primitives.perturbations import PerturbationFamily
from toolbox.progress import progress
from toolbox.zeroshot import ZeroShotHead

from . import seeds
from .uaps import BatchedUAPs

if TYPE_CHECKING:  # annotations only: identify.py imports this module
    from .identify import IdentifyConfig


def group_count(n_classes: int, groups: int) -> int:
    """``groups``, or about sqrt(C) when 0; never more groups than classes."""
    return max(1, min(n_classes, groups or math.ceil(math.sqrt(n_classes))))


def partition(n_classes: int, n_groups: int, gen: torch.Generator) -> list[Tensor]:
    """A random split of the class indices into ``n_groups`` groups of (nearly) equal size."""
    return list(torch.randperm(n_classes, generator=gen).tensor_split(n_groups))


def group_loss(logits: Tensor, member: Tensor) -> Tensor:
    """Per image: minus the log-probability that its prediction falls in its group (``member``: [N, C] bool)."""
    return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~member, float("-inf")), 1)


class GroupUAPs(BatchedUAPs):
    """One UAP of ``family`` per group (generator ``gens[g]`` for ``groups[g]``), toward any class of it."""

    def __init__(
        self,
        model: ClipModel,
        head: ZeroShotHead,
        fit_images: Tensor,
        family: PerturbationFamily,
        groups: list[Tensor],
        cfg: IdentifyConfig,
        gens: list[torch.Generator],
    ) -> None:
        super().__init__(model, head, fit_images, family, cfg, gens)
        self.member = torch.zeros(len(groups), len(head.classnames), dtype=torch.bool, device=fit_images.device)
        for g, classes in enumerate(groups):
            self.member[g, classes.to(fit_images.device)] = True

    def loss(self, logits: Tensor, chunk: list[int]) -> Tensor:
        return group_loss(logits.float(), self.member[chunk].repeat_interleave(self.batch, 0)).sum()


@torch.no_grad()
def landings(
    model: ClipModel, head: ZeroShotHead, images: Tensor, clean_pred: Tensor, classes: Tensor, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Per class of ``classes``: the fraction of ``images`` (already perturbed) not of it before that now
    are, and its mean log-probability over those images (it still orders the classes nothing landed on)."""
    logits = torch.cat([lg.float() for lg in head.batched_logits(model, images, batch_size)]).cpu()
    pred, logprob = logits.argmax(1), logits.log_softmax(1)
    clean_pred = clean_pred.cpu()
    rate, mean_logprob = torch.zeros(len(classes)), torch.full((len(classes),), float("-inf"))
    for j, c in enumerate(classes.tolist()):
        others = clean_pred != c
        if others.any():
            rate[j] = (pred[others] == c).float().mean()
            mean_logprob[j] = logprob[others, c].mean()
    return rate, mean_logprob


def group_screen(
    model: ClipModel,
    head: ZeroShotHead,
    fit_images: Tensor,
    hold_images: Tensor,
    hold_pred: Tensor,
    families: list[PerturbationFamily],
    cfg: IdentifyConfig,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Every class's screen score [C]: held-out landing rate under its group's UAP minus the family's
    median over classes, best over ``families`` and ``cfg.screen_rounds`` random partitions; and its
    best mean held-out log-probability under those UAPs [C], to order equal scores."""
    if not families:
        raise ValueError("the group screen needs at least one perturbation family")
    n_classes = len(head.classnames)
    n_groups = group_count(n_classes, cfg.screen_groups)
    best = torch.full((n_classes,), float("-inf"))
    best_logprob = torch.full((n_classes,), float("-inf"))
    for r in range(cfg.screen_rounds):
        groups = partition(n_classes, n_groups, torch.Generator().manual_seed(seeds.screen(seed, r, 0)))
        for f_index, family in enumerate(families):
            first = 1 + f_index * n_groups
            gens = [torch.Generator().manual_seed(seeds.screen(seed, r, first + g)) for g in range(n_groups)]
            uaps = GroupUAPs(model, head, fit_images, family, groups, cfg, gens)
            desc = f"stage 1: group screen {r + 1}/{cfg.screen_rounds} {family.kind} ({n_groups} groups)"
            for _ in progress(range(cfg.screen_steps), desc=desc):
                uaps.step(cfg.race_batch_classes)
            rate, logprob = torch.zeros(n_classes), torch.zeros(n_classes)
            for g, classes in enumerate(groups):
                adv = family.apply(hold_images, uaps.params[g].detach())
                rate[classes], logprob[classes] = landings(model, head, adv, hold_pred, classes)
            best = torch.maximum(best, rate - rate.median())
            best_logprob = torch.maximum(best_logprob, logprob)
    return best, best_logprob
