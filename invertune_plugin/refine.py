"""Longer targeted UAPs toward a few classes: the search the refinement detectors share.

Stage 1's race gives every (class, family) 20 steps; a detector that suspects a class gives it a
longer UAP of one family (a patch, grayscale stripes, a small L-inf budget), with restarts, and
rates it on held-out images. What counts as a trigger is the detector's gate
(:mod:`invertune_plugin.detectors`); this module only searches and rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.primitives.perturbations import PerturbationFamily
from toolbox.primitives.tensors import as_float, frozen
from toolbox.primitives.triggers import add_signal
from toolbox.progress import progress
from toolbox.zeroshot import ZeroShotHead

from . import seeds
from .cascade import DetectorConfig
from .identify import Identification, IdentifyConfig, fit_and_holdout, targeted_loss
from .race import RACE_GLOBAL, race_families, success_rate, targeted_uap

Rated = TypeVar("Rated")  # what a refinement's rating of one parameter gives (a rate, a RefinedGlobal)


@dataclass(frozen=True)
class RefineConfig(DetectorConfig):
    """A refinement detector's search budget (each detector has its own copy)."""

    classes: int = 3  # at most this many suspected classes (the search stops at the first trigger); 0: off
    steps: int = 100  # the race's are 20: a trigger aligned with a ViT token can be a sharp optimum
    # Restarts: a screen, then a confirmation. Every class first gets screen_restarts; only a class whose
    # pick passes the detector's gate gets the rest of ``restarts``, and the pick is remade over all of
    # them. A trigger must pass with the screen and with the pick of all restarts.
    restarts: int = 3  # the restart with the lowest loss on a fixed batch of judge_images is kept
    judge_images: int = 128  # held-out images only measure the rate
    screen_restarts: int = 1  # >= restarts: no screen (every class gets them all)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "restarts", "judge_images", "screen_restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def screen(self) -> int:
        """Restarts each class gets before the gate (all of them when the screen is off)."""
        return min(self.screen_restarts, self.restarts)


@dataclass
class RefinedPatch:
    """A longer patch UAP toward one class: a candidate trigger of its own (mask = the patch's box)."""

    target: str
    location: str
    patch: Tensor  # [3, s, s] in [0, 1]
    holdout_rate: float  # held-out images (not already of the class) sent to it
    restarts: int = 1  # how many were run (the screen's, or all of them for a confirmed trigger)

    def evidence(self) -> dict[str, Any]:
        return {
            "class": self.target,
            "location": self.location,
            "holdout_rate": round(self.holdout_rate, 4),
            "restarts": self.restarts,
        }


@dataclass
class RefinedGlobal:
    """A longer global UAP (stripes, separable or linf) toward one class: a candidate additive trigger."""

    target: str
    family: str  # e.g. "stripes@48/255", "linf@16/255"
    eps: float  # L-inf budget
    delta: Tensor  # stripes: [1, H, W], added to every channel; linf: [3, H, W]; then clamped to [0, 1]
    holdout_rate: float
    flipped_rate: float  # the same with -delta (a texture survives the flip, a direction does not)
    restarts: int = 1

    def evidence(self) -> dict[str, Any]:
        return {
            "class": self.target,
            "family": self.family,
            "holdout_rate": round(self.holdout_rate, 4),
            "flipped_rate": round(self.flipped_rate, 4),
            "restarts": self.restarts,
        }


def patch_families(image_size: int, cfg: IdentifyConfig) -> dict[str, PerturbationFamily]:
    """The race's patch families by location."""
    return {str(f.location): f for f in race_families(image_size, cfg) if f.pixels is not None}


def refine_patches(
    model: ClipModel,
    images: Tensor,
    head: ZeroShotHead,
    ident: Identification,
    cfg: IdentifyConfig,
    budget: RefineConfig,
    seed: int = 0,
    accept: Callable[[RefinedPatch], bool] | None = None,
    masks: dict[str, Tensor] | None = None,
) -> list[RefinedPatch]:
    """Longer patch UAPs for the race's top ``budget.classes``, each at its best-raced location, in
    ranking order; with ``accept``, the first patch it accepts ends the search (screened restarts).
    ``masks``: stage-2 inverted masks by class, which break a tie between locations (a backdoor that
    fires from every corner still has its trigger where the inversion put its mass)."""
    fams = {f.kind: f for f in patch_families(images.shape[-1], cfg).values()}
    patch_uaps = [u for u in ident.uaps if u.kind in fams]
    if not patch_uaps or budget.classes < 1:
        return []
    refined: list[RefinedPatch] = []
    with frozen(model):
        fit_images, hold_images, hold_pred = fit_and_holdout(model, images, head, cfg, seed)
        for cls, _ in progress(ident.ranking[: budget.classes], desc="detect: refine patches"):
            c = head.classnames.index(cls)
            best_uap = best_location(patch_uaps, fams, c, (masks or {}).get(cls))
            refined.append(
                _refine_one(
                    model, fit_images, hold_images, hold_pred, head, c, fams[best_uap.kind], cfg, budget, seed, accept
                )
            )
            if accept is not None and accept(refined[-1]):
                break
    return refined


def best_location(patch_uaps: list[Any], fams: dict[str, PerturbationFamily], c: int, mask: Tensor | None) -> Any:
    """The race's patch UAP that scored class ``c`` highest; with a stage-2 ``mask``, the location
    whose box holds the most of it among those whose raw race rate for ``c`` is at least as high
    (a saturated race cannot tell the trigger's corner from the others)."""
    best = max(patch_uaps, key=lambda u: float(u.shift[c]))
    if mask is None or best.rates is None:
        return best
    tied = [u for u in patch_uaps if u.rates is not None and float(u.rates[c]) >= float(best.rates[c]) - 1e-9]
    if len(tied) == 1:
        return best
    flat = mask.float().mean(0)  # [H, W]

    def mass(u: Any) -> float:
        family = fams[u.kind]
        box = family.apply(torch.zeros(1, 3, *flat.shape), torch.ones_like(family.init(torch.Generator())))[0, 0]
        return float((flat * box).sum())

    return max(tied, key=mass)


def refine_patch(
    model: ClipModel,
    images: Tensor,
    head: ZeroShotHead,
    target: str,
    location: str,
    cfg: IdentifyConfig,
    budget: RefineConfig,
    seed: int = 0,
) -> RefinedPatch:
    """One refined patch toward ``target`` at ``location``, every restart run (a purification round
    asks the tuned model whether a patch trigger of the first round's kind is still there)."""
    fams = patch_families(images.shape[-1], cfg)
    if location not in fams:
        raise ValueError(f"no race patch family at {location!r}; identify.race_patch_locations: {list(fams)}")
    with frozen(model):
        fit_images, hold_images, hold_pred = fit_and_holdout(model, images, head, cfg, seed)
        return _refine_one(
            model,
            fit_images,
            hold_images,
            hold_pred,
            head,
            head.classnames.index(target),
            fams[location],
            cfg,
            budget,
            seed,
        )


def _refine_one(
    model: ClipModel,
    fit_images: Tensor,
    hold_images: Tensor,
    hold_pred: Tensor,
    head: ZeroShotHead,
    c: int,
    family: PerturbationFamily,
    cfg: IdentifyConfig,
    budget: RefineConfig,
    seed: int,
    accept: Callable[[RefinedPatch], bool] | None = None,
) -> RefinedPatch:
    def rated(param: Tensor) -> RefinedPatch:
        rate = success_rate(model, head, family.apply(hold_images, param), hold_pred, c)
        return RefinedPatch(
            target=head.classnames[c], location=str(family.location), patch=family.pixels(param), holdout_rate=rate
        )

    _, n, patch = screened_restarts(
        model, fit_images, head, c, family, cfg, budget, seeds.refinement(seed, seeds.PATCH_STREAM, c), rated, accept
    )
    return replace(patch, restarts=n)


def refine_globals(
    model: ClipModel,
    images: Tensor,
    head: ZeroShotHead,
    ident: Identification,
    cfg: IdentifyConfig,
    budget: RefineConfig,
    family: PerturbationFamily,
    eps: float,
    stream: int,
    seed: int = 0,
    accept: Callable[[RefinedGlobal], bool] | None = None,
) -> list[RefinedGlobal]:
    """Longer global UAPs of ``family`` for the top ``budget.classes`` of :func:`global_ranking`, in
    that order, each rated held out as found and sign-flipped; the first that ``accept`` accepts ends
    the search."""
    assert family.delta is not None
    if budget.classes < 1 or eps <= 0:
        return []
    refined: list[RefinedGlobal] = []
    with frozen(model):
        fit_images, hold_images, hold_pred = fit_and_holdout(model, images, head, cfg, seed)
        for cls in progress(global_ranking(ident)[: budget.classes], desc=f"detect: refine {family.kind}"):
            c = head.classnames.index(cls)
            rate = partial(_rated_global, model, head, family, hold_images, hold_pred, c, eps=eps)
            _, n, rated = screened_restarts(
                model, fit_images, head, c, family, cfg, budget, seeds.refinement(seed, stream, c), rate, accept
            )
            refined.append(replace(rated, restarts=n))
            if accept is not None and accept(refined[-1]):
                break
    return refined


def _rated_global(
    model: ClipModel,
    head: ZeroShotHead,
    family: PerturbationFamily,
    hold_images: Tensor,
    hold_pred: Tensor,
    c: int,
    param: Tensor,
    eps: float,
) -> RefinedGlobal:
    assert family.delta is not None
    delta = family.delta(param).detach()
    return RefinedGlobal(
        target=head.classnames[c],
        family=family.kind,
        eps=eps,
        delta=delta,
        holdout_rate=success_rate(model, head, add_signal(hold_images, delta), hold_pred, c),
        flipped_rate=success_rate(model, head, add_signal(hold_images, -delta), hold_pred, c),
    )


def global_ranking(ident: Identification) -> list[str]:
    """Classes by their best score in the race's global families (the consensus ranking when the
    race had none): a global trigger's target is reached by global UAPs, whatever the patches found."""
    global_uaps = [u for u in ident.uaps if u.kind.startswith(RACE_GLOBAL)]
    if not global_uaps:
        return [c for c, _ in ident.ranking]
    score = torch.stack([u.shift for u in global_uaps]).amax(0)
    return [ident.classnames[i] for i in score.argsort(descending=True, stable=True).tolist()]


def _restarts(
    model: ClipModel,
    fit_images: Tensor,
    judge: Tensor,
    head: ZeroShotHead,
    c: int,
    family: PerturbationFamily,
    cfg: IdentifyConfig,
    budget: RefineConfig,
    base_seed: int,
    which: range,
) -> list[tuple[float, Tensor]]:
    """(loss on ``judge``, parameter) of the targeted UAPs of ``budget.steps`` numbered ``which``."""
    out = []
    for r in which:
        gen = torch.Generator().manual_seed(seeds.restart(base_seed, r))
        param = targeted_uap(model, head, fit_images, family, c, cfg, budget.steps, gen)
        with torch.no_grad():
            out.append((float(targeted_loss(head.logits(model, family.apply(judge, param)), c)), param))
    return out


def screened_restarts(
    model: ClipModel,
    fit_images: Tensor,
    head: ZeroShotHead,
    c: int,
    family: PerturbationFamily,
    cfg: IdentifyConfig,
    budget: RefineConfig,
    base_seed: int,
    rate: Callable[[Tensor], Rated],
    accept: Callable[[Rated], bool] | None,
) -> tuple[Tensor, int, Rated]:
    """The restart with the lowest loss on a fixed judge batch, how many restarts ran, and its ``rate``.

    Without ``accept``: of all ``budget.restarts``. With it: the first ``budget.screen`` are a screen;
    only when their pick's rating passes ``accept`` do the others run, and the pick is remade over all
    of them (the same restarts, so the same pick as running them all at once). Each pick is rated once.
    """
    judge = as_float(fit_images[: min(len(fit_images), budget.judge_images)])
    screen = budget.restarts if accept is None else budget.screen
    runs = _restarts(model, fit_images, judge, head, c, family, cfg, budget, base_seed, range(screen))
    best = min(runs, key=lambda lp: lp[0])[1]
    rated = rate(best)
    if accept is not None and screen < budget.restarts and accept(rated):
        runs += _restarts(
            model, fit_images, judge, head, c, family, cfg, budget, base_seed, range(screen, budget.restarts)
        )
        pick = min(runs, key=lambda lp: lp[0])[1]
        if pick is not best:
            best, rated = pick, rate(pick)
    return best, len(runs), rated
