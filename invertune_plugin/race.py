"""Stage 1's targeted race: short targeted UAPs of every perturbation family toward every candidate class.

A backdoor target is reachable from every family that can express its trigger, attractors mostly from
one; :mod:`invertune_plugin.identify` turns the held-out success rates measured here into the ranking.
Classes of one family advance together (:class:`~invertune_plugin.uaps.BatchedUAPs`), ``race_batch_classes``
a forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.primitives.perturbations import PerturbationFamily, linf_family, no_projection, patch_uap
from toolbox.primitives.triggers import paste_patch, patch_pixels
from toolbox.progress import progress
from toolbox.zeroshot import ZeroShotHead

from .uaps import BatchedUAPs

if TYPE_CHECKING:  # annotations only: identify.py imports this module, so a runtime import would cycle
    from .identify import IdentifyConfig


RACE_GLOBAL = "race:global"  # kind prefix of the race's global L-inf families (global_ranking reads it)


def race_families(image_size: int, cfg: IdentifyConfig) -> list[PerturbationFamily]:
    size = patch_pixels(image_size, cfg.race_patch_fraction)
    fams: list[PerturbationFamily] = []
    for loc in cfg.race_patch_locations:
        if cfg.race_patch_param == "pixel":
            fams.append(
                PerturbationFamily(
                    f"race:patch@{loc}",
                    lambda g: torch.rand(3, size, size, generator=g),
                    (lambda x, p, loc=loc: paste_patch(x, p, loc)),
                    lambda p: p.clamp_(0, 1),
                    location=loc,
                    pixels=lambda p: p,
                )
            )
        else:  # the untargeted patch UAP's parameterisation
            fams.append(
                PerturbationFamily(
                    f"race:patch@{loc}",
                    lambda g: torch.randn(3, size, size, generator=g) * 0.5,
                    patch_uap(size, loc)[1],
                    no_projection,
                    location=loc,
                    pixels=torch.sigmoid,
                )
            )
    fams += [linf_family(image_size, eps, RACE_GLOBAL) for eps in cfg.race_global_eps]
    return fams


def targeted_uap(
    model: ClipModel,
    head: ZeroShotHead,
    fit_images: Tensor,
    family: PerturbationFamily,
    target: int,
    cfg: IdentifyConfig,
    steps: int,
    gen: torch.Generator,
) -> Tensor:
    """A targeted UAP of ``family`` toward class ``target``: ``steps`` Adam steps from a random init."""
    return targeted_uaps(model, head, fit_images, family, [target], cfg, steps, [gen])[0]


def success_rate(model: ClipModel, head: ZeroShotHead, images: Tensor, clean_pred: Tensor, target: int) -> float:
    """Fraction of ``images`` (already perturbed) not of class ``target`` before that now are."""
    return success(model, head, images, clean_pred, target)[0]


@torch.no_grad()
def success(
    model: ClipModel, head: ZeroShotHead, images: Tensor, clean_pred: Tensor, target: int, batch_size: int = 256
) -> tuple[float, float]:
    """(success rate, mean margin) of ``images`` (already perturbed) toward ``target``, over the images
    not of ``target`` before. The margin is the target's logit minus the best other class's: unlike the
    rate it does not saturate at 1, so it still ranks classes that every image reaches."""
    others = clean_pred != target  # images already of the target class do not count
    if not others.any():
        return 0.0, 0.0
    logits = torch.cat(list(head.batched_logits(model, images, batch_size)))[others].float()
    rest = logits.clone()
    rest[:, target] = float("-inf")
    return float((logits.argmax(1) == target).float().mean()), float((logits[:, target] - rest.amax(1)).mean())


class TargetedUAPs(BatchedUAPs):
    """Short targeted UAPs of one family, one toward each of ``targets`` (generator ``gens[i]`` for
    ``targets[i]``); with ``track``, each step's hit rate and margin per class, which the early stops read
    (a host sync per step otherwise not paid)."""

    def __init__(
        self,
        model: ClipModel,
        head: ZeroShotHead,
        fit_images: Tensor,
        family: PerturbationFamily,
        targets: list[int],
        cfg: IdentifyConfig,
        gens: list[torch.Generator],
        track: bool = False,
    ) -> None:
        super().__init__(model, head, fit_images, family, cfg, gens)
        self.targets, self.track = targets, track
        self.hits: list[list[float]] = [[] for _ in targets]  # per step: fraction of its batch at its target
        self.margins: list[list[float]] = [[] for _ in targets]  # per step: its batch's mean logit margin
        self.labels = torch.empty(0, dtype=torch.long)  # the last step's, per image

    def loss(self, logits: Tensor, chunk: list[int]) -> Tensor:
        self.labels = torch.tensor([self.targets[i] for i in chunk], device=logits.device)
        self.labels = self.labels.repeat_interleave(self.batch)  # observe() reads them too
        return F.cross_entropy(logits, self.labels, reduction="sum")

    def observe(self, logits: Tensor, chunk: list[int]) -> None:
        if not self.track:
            return
        logits, labels = logits.float(), self.labels
        own = logits.gather(1, labels[:, None]).squeeze(1)
        rest = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        hit = (own > rest).float().view(len(chunk), self.batch).mean(1)
        margin = (own - rest).view(len(chunk), self.batch).mean(1)
        for i, h, m in zip(chunk, hit.tolist(), margin.tolist()):
            self.hits[i].append(h)
            self.margins[i].append(m)


def targeted_uaps(
    model: ClipModel,
    head: ZeroShotHead,
    fit_images: Tensor,
    family: PerturbationFamily,
    targets: list[int],
    cfg: IdentifyConfig,
    steps: int,
    gens: list[torch.Generator],
) -> Tensor:
    """:func:`targeted_uap` toward each of ``targets`` (generator ``gens[i]`` for ``targets[i]``), all
    in one pass per step: [len(targets), *param shape]."""
    uaps = TargetedUAPs(model, head, fit_images, family, targets, cfg, gens)
    for _ in range(steps):
        uaps.step(len(targets))
    return torch.stack([uaps.param(i) for i in range(len(targets))])


def race_family(
    model: ClipModel,
    head: ZeroShotHead,
    fit_images: Tensor,
    hold_images: Tensor,
    hold_pred: Tensor,
    family: PerturbationFamily,
    targets: list[int],
    cfg: IdentifyConfig,
    gens: list[torch.Generator],
) -> tuple[list[tuple[float, float]], list[int]]:
    """Held-out (success rate, margin) of short targeted UAPs of ``family`` toward each of ``targets``,
    and the step at which each stopped. Two early stops, each off at 0:
    - after ``race_cut_after`` steps, the lower half by training margin stops (the margin, unlike the
      rate, moves before a trigger-shaped UAP first flips anything). The C // 2 + 1 classes ahead go
      on, so the family median is a full-length class's only if no stopped class would have ended
      above it: near-zero patch rates make that a coin toss, and the median moves a little;
    - a class whose batches all reached its target for ``race_patience`` steps running, and whose
      held-out images then all do, stops: a rate of 1 cannot rise."""
    uaps = TargetedUAPs(
        model, head, fit_images, family, targets, cfg, gens, track=bool(cfg.race_cut_after or cfg.race_patience)
    )
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(targets)
    stopped = [cfg.race_steps] * len(targets)
    checked = [-1] * len(targets)  # the step of a class's last saturation check

    def held_out(i: int) -> tuple[float, float]:
        return success(model, head, family.apply(hold_images, uaps.param(i)), hold_pred, targets[i])

    def stop(i: int, at: int, rate: tuple[float, float] | None = None) -> None:
        out[i] = held_out(i) if rate is None else rate
        stopped[i] = at
        uaps.active.remove(i)

    for s in progress(range(cfg.race_steps), desc=f"stage 1: {family.kind} ({len(targets)} classes)"):
        if s and s == cfg.race_cut_after:
            recent = {i: sum(uaps.margins[i][-3:]) for i in uaps.active}
            ahead = sorted(uaps.active, key=lambda i: -recent[i])  # stable: ties keep the candidates' order
            saturated = len(targets) - len(uaps.active)  # stopped at a rate of 1: above the median
            for i in ahead[max(0, len(targets) // 2 + 1 - saturated) :]:
                stop(i, s)
        uaps.step(cfg.race_batch_classes)
        if cfg.race_patience:
            for i in list(uaps.active):
                if (
                    s - checked[i] >= cfg.race_patience
                    and len(uaps.hits[i]) >= cfg.race_patience
                    and min(uaps.hits[i][-cfg.race_patience :]) == 1.0
                ):
                    checked[i] = s
                    rate = held_out(i)
                    if rate[0] == 1.0:
                        stop(i, s + 1, rate)
    for i in list(uaps.active):
        stop(i, cfg.race_steps)
    return out, stopped
