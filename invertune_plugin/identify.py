"""Stage 1 — target identification (paper section 3.1, appendix C.1).

Universal adversarial perturbations (UAPs) are optimised on clean images to flip the
model's own zero-shot predictions, with no target in mind. On a backdoored model they
drift toward the backdoor's target, so the class whose top-1 frequency rises most,
argmax(P_adv - P_clean), is the suspected target (eq. 1).

The paper uses one AdvCLIP patch; the official code ships no generator. Ours has two
methods (``IdentifyConfig.method``):

- ``untargeted`` (the paper's eq. 1): a patch UAP at each of several locations (a trigger
  need not sit where one patch is) and global L-inf UAPs (for Blended/SIG/WaNet-like
  triggers); classes ranked by their mean top-1 frequency rise. On the toy world the UAPs
  fall into *natural attractors* (a colourful patch reads as "traffic light" or "pinwheel",
  on clean and backdoored models alike): the true target ranked 4-5 for SIG, BadEncoder
  and BadCLIP.
- ``targeted`` (ours, default): a *race*. For every candidate class and every perturbation
  family (trigger-sized patches at several locations, a global L-inf UAP) a short
  targeted UAP is optimised; a class's score is its held-out targeted success rate minus
  the family's median over classes, the best over families (``race_aggregate``). A backdoor target is reachable
  from every family that can express its trigger, attractors mostly from one. Large
  vocabularies race only the screen's top ``max_race_classes`` (``screen``: the untargeted UAPs above,
  :mod:`invertune_plugin.screen`'s group UAPs, or both). The race's UAPs are
  optimised in :mod:`invertune_plugin.race`; this module scores and ranks them.
  The detectors of the cascade (:mod:`invertune_plugin.cascade`) then search for a trigger
  toward the ranked classes.

Histograms and rates are measured on held-out images. A single UAP can concentrate on one
class even on a clean model (feasibility study: 83 %), so stage 1 only ranks; the detectors decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox import precision
from toolbox.api import ClipModel
from toolbox.primitives.perturbations import (
    RACE_GLOBAL_EPS,
    RACE_PATCH_FRACTION,
    RACE_PATCH_LOCATIONS,
    linf_family,
    patch_uap,
)
from toolbox.primitives.tensors import as_float, frozen, split_indices
from toolbox.primitives.triggers import check_location, patch_pixels
from toolbox.progress import progress
from toolbox.zeroshot import ZeroShotHead

from . import seeds
from .race import RACE_GLOBAL, race_families, race_family
from .screen import group_screen


@dataclass(frozen=True)
class IdentifyConfig:
    """Stage 1 settings. Paper: one AdvCLIP patch UAP (size not stated), ImageNet-1K vocabulary."""

    method: str = "targeted"  # "targeted" (race, ours) or "untargeted" (paper eq. 1)
    # targeted race: families of perturbations, each optimised toward every candidate class
    race_patch_fraction: float = RACE_PATCH_FRACTION
    race_patch_locations: tuple[str, ...] = RACE_PATCH_LOCATIONS
    race_global_eps: tuple[float, ...] = (RACE_GLOBAL_EPS,)
    race_steps: int = 20  # per (class, family)
    # Early stops (ours; see race_family), off by default: they save a fifth of the race but move the
    # family medians the scores subtract, and with them the classes ranked 2-3 (docs/invertune.md).
    race_cut_after: int = 0  # after this many steps the lower half of each family stops; 0: off
    race_patience: int = 0  # a class at its target on every batch this many steps, and held out, stops; 0: off
    # Classes whose UAPs of one family are optimised together, in one forward pass per step: the
    # same initialisations, batches and Adam updates as one at a time (Adam is elementwise), equal up
    # to float rounding (larger matmuls round differently), in fewer, larger passes; memory grows with
    # it (8 x batch_size images with gradients). 1: one class at a time. The group screen's UAPs share passes alike.
    race_batch_classes: int = 8
    # Race patches live in pixel space, projected onto [0, 1] after each Adam step, from a uniform
    # init: 20 steps of lr 0.1 can reach any colour. ("sigmoid": the untargeted UAPs' logit
    # parameterisation; from a N(0, 0.5) init 20 steps reach at most sigmoid(+-2.5) = 0.08..0.92.)
    race_patch_param: str = "pixel"
    max_race_classes: int = 16  # larger vocabularies race the screen's top classes; cost grows with it
    # Which screen picks the raced classes of a larger vocabulary: "untargeted" (the paper's UAPs),
    # "groups" (screen.py: one UAP per random group of classes) or "both" (their top classes interleaved):
    # each screen alone loses targets the other finds (docs/invertune.md, stage 1).
    screen: str = "both"
    screen_groups: int = 0  # groups per partition; 0: about sqrt(C)
    screen_rounds: int = 1  # random partitions; a target sharing a group with an attractor gets another draw
    screen_steps: int = 20  # Adam steps per group UAP
    screen_families: str = "global"  # the race's families the group screen uses: "global" or "all"
    race_aggregate: str = "max"  # a class's score over families: "max" or "mean" (see the closing note)
    # untargeted UAPs (the paper's method, and one of the screens for large vocabularies)
    patch_fraction: float = 0.1875  # 6 px at 32 px (feasibility study)
    patch_locations: tuple[str, ...] = ("bottom-right", "top-left", "center")
    global_eps: tuple[float, ...] = (16 / 255,)  # L-inf budget of the global UAP (8/255 fooled 8 %: dropped)
    steps: int = 80  # 150 x 64 gave the same rankings on the default models at 4x the cost
    lr: float = 0.1  # Adam, on the UAP's unconstrained parameters
    batch_size: int = 32
    fool_margin: float = 5.0  # stop pushing an image once its clean class trails by this logit margin
    holdout_fraction: float = 0.3

    def __post_init__(self) -> None:
        """Refuse a bad setting when the defense is configured, not minutes into a run."""
        choices = {
            "method": ("targeted", "untargeted"),
            "race_patch_param": ("pixel", "sigmoid"),
            "race_aggregate": ("max", "mean"),
            "screen": ("untargeted", "groups", "both"),
            "screen_families": ("global", "all"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"identify.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("race_patch_locations", "patch_locations"):
            for loc in getattr(self, name):
                check_location(loc, f"identify.{name}")
        counts = {
            "race_cut_after": 0,
            "race_patience": 0,
            "race_steps": 1,
            "steps": 1,
            "batch_size": 1,
            "max_race_classes": 1,
            "race_batch_classes": 1,
            "screen_rounds": 1,
            "screen_steps": 1,
        }
        for name, least in counts.items():
            if getattr(self, name) < least:
                raise ValueError(f"identify.{name} must be >= {least}, got {getattr(self, name)}")
        if self.screen_groups == 1 or self.screen_groups < 0:  # one group holds every class: its loss is always 0
            raise ValueError(f"identify.screen_groups must be 0 (about sqrt(C)) or >= 2, got {self.screen_groups}")
        if self.screen != "untargeted" and self.screen_families == "global" and not self.race_global_eps:
            raise ValueError("identify.screen_families=global needs a global family: identify.race_global_eps is empty")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"identify.holdout_fraction must be in (0, 1), got {self.holdout_fraction}")


MAD_TO_SIGMA = 1.4826  # a normal distribution's sigma per median absolute deviation
MAD_FLOOR = 1e-3  # scores of a fraction of held-out images: a spread below 0.1 % is none


@dataclass
class UAPResult:
    kind: str  # "patch@<location>" or "global@<eps>" (untargeted); "race:<family>" (targeted)
    shift: Tensor  # [C] untargeted: P_adv - P_clean; race: success rate minus the family median
    fooling_rate: float
    perturb: Callable[[Tensor], Tensor] = field(repr=False)
    rates: Tensor | None = field(default=None, repr=False)  # race only: raw held-out success rate per class
    margins: Tensor | None = field(default=None, repr=False)  # race only: held-out mean logit margin per class
    steps: Tensor | None = field(default=None, repr=False)  # race only: steps each class ran before it stopped

    @property
    def top(self) -> int:
        return int(self.shift.argmax())


@dataclass
class Identification:
    ranking: list[tuple[str, float]]  # (class, consensus shift), descending
    target: str
    agreement: float
    consensus_shift: float
    margin: float  # consensus shift of rank 1 minus rank 2
    uaps: list[UAPResult]
    classnames: list[str]
    method: str = "untargeted"

    def evidence(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "method": self.method,
            "agreement": round(self.agreement, 4),
            "consensus_shift": round(self.consensus_shift, 4),
            "margin": round(self.margin, 4),
            "anomaly_index": round(self.anomaly_index, 4),
            "uaps": [self._uap_evidence(u) for u in self.uaps],
        }

    @property
    def anomaly_index(self) -> float:
        """The top class's consensus score as a robust z-score against the model's other classes
        (median / MAD, as Neural Cleanse's anomaly index): a statistic normalised by the model itself."""
        scores = torch.tensor([v for _, v in self.ranking], dtype=torch.float64)
        median = scores.quantile(0.5)  # the mean of the middle two for an even count (torch's median takes the lower)
        mad = (scores - median).abs().quantile(0.5) * MAD_TO_SIGMA
        return float((scores[0] - median) / mad.clamp(min=MAD_FLOOR))

    def _uap_evidence(self, u: UAPResult) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": u.kind,
            "top": self.classnames[u.top],
            "top_shift": round(float(u.shift.max()), 4),
            "fooling_rate": round(u.fooling_rate, 4),
        }
        if u.rates is not None:  # race: the target's success rate, the family's median, every raced class's
            doc["target_rate"] = round(float(u.rates[self.classnames.index(self.target)]), 4)
            doc["median_rate"] = round(float(u.rates.nanmedian()), 4)
            doc["rates"] = {
                c: round(float(r), 4) for c, r in zip(self.classnames, u.rates.tolist()) if not math.isnan(r)
            }
        if u.margins is not None:
            doc["margins"] = {
                c: round(float(m), 4) for c, m in zip(self.classnames, u.margins.tolist()) if not math.isnan(m)
            }
        if u.steps is not None:  # steps each raced class ran: fewer than race_steps where it stopped early
            doc["steps"] = {c: int(n) for c, n in zip(self.classnames, u.steps.tolist()) if n >= 0}
        return doc


def targeted_loss(logits: Tensor, target: int) -> Tensor:
    return F.cross_entropy(logits, torch.full((len(logits),), target, device=logits.device))


def fooling_loss(logits: Tensor, clean_pred: Tensor, margin: float) -> Tensor:
    """CW-style untargeted loss: lower the clean class below the best other class, up to ``margin``."""
    own = logits.gather(1, clean_pred[:, None]).squeeze(1)
    others = logits.scatter(1, clean_pred[:, None], float("-inf")).amax(1)
    return (own - others).clamp(min=-margin).mean()


def global_uap(image_size: int, eps: float) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
    """The untargeted global UAP: a zero parameter (optimise_uap draws its start) and :func:`linf_family`'s apply."""
    return torch.zeros(3, image_size, image_size), linf_family(image_size, eps).apply


def optimise_uap(
    model: ClipModel,
    head: ZeroShotHead,
    images: Tensor,
    clean_pred: Tensor,
    param: Tensor,
    apply: Callable[[Tensor, Tensor], Tensor],
    cfg: IdentifyConfig,
    gen: torch.Generator,
    desc: str,
) -> Tensor:
    param = param.clone().normal_(0, 0.5, generator=gen).to(images.device).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=cfg.lr)
    for _ in progress(range(cfg.steps), desc=desc):
        idx = torch.randint(len(images), (min(cfg.batch_size, len(images)),), generator=gen)
        loss = fooling_loss(head.logits(model, apply(as_float(images[idx]), param)), clean_pred[idx], cfg.fool_margin)
        precision.step(opt, loss)
    return param.detach()


def histogram(pred: Tensor, n_classes: int) -> Tensor:
    return torch.bincount(pred, minlength=n_classes).float() / max(1, len(pred))


def identify(
    model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: IdentifyConfig, seed: int = 0
) -> Identification:
    """Run every UAP and rank classes by their mean prediction-frequency rise (eq. 1)."""
    with frozen(model):
        return _identify(model, images, head, cfg, seed)


def _identify(model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: IdentifyConfig, seed: int) -> Identification:
    split = fit_and_holdout(model, images, head, cfg, seed)  # one split (and one held-out pass) for every stage-1 step
    if cfg.method == "untargeted":
        return _untargeted(model, images, head, cfg, seed, split)
    n_classes = len(head.classnames)
    if n_classes <= cfg.max_race_classes:
        return _race(model, images, head, cfg, seed, list(range(n_classes)), split)
    return _race(model, images, head, cfg, seed, screened(model, images, head, cfg, seed, split), split)


def screened(
    model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: IdentifyConfig, seed: int, split: Split | None = None
) -> list[int]:
    """The ``max_race_classes`` classes the screen (``cfg.screen``) ranks first; with "both", the two
    screens' rankings interleaved (untargeted first), each class once."""
    rankings = screen_rankings(model, images, head, cfg, seed, split)
    order = [c for tier in zip(*rankings.values()) for c in tier]
    return list(dict.fromkeys(order))[: cfg.max_race_classes]


def screen_rankings(
    model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: IdentifyConfig, seed: int, split: Split | None = None
) -> dict[str, list[int]]:
    """Every class index, best first, by each screen ``cfg.screen`` runs ("untargeted", "groups")."""
    split = split or fit_and_holdout(model, images, head, cfg, seed)
    rankings: dict[str, list[int]] = {}
    if cfg.screen in ("untargeted", "both"):
        ranking = _untargeted(model, images, head, cfg, seed, split).ranking
        rankings["untargeted"] = [head.classnames.index(c) for c, _ in ranking]
    if cfg.screen in ("groups", "both"):
        fit_images, hold_images, hold_pred = split
        families = race_families(images.shape[-1], cfg)
        if cfg.screen_families == "global":
            families = [f for f in families if f.kind.startswith(RACE_GLOBAL)]
        score, logprob = group_screen(model, head, fit_images, hold_images, hold_pred, families, cfg, seed)
        by_logprob = logprob.argsort(descending=True, stable=True)  # breaks the ties of classes nothing landed on
        rankings["groups"] = by_logprob[score[by_logprob].argsort(descending=True, stable=True)].tolist()
    return rankings


Split = tuple[Tensor, Tensor, Tensor]  # fit images, held-out images, the model's predictions on the held-out ones


def fit_and_holdout(model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: IdentifyConfig, seed: int) -> Split:
    """Fit images (as given), held-out images (float) and the model's predictions on the held-out ones."""
    fit, hold = split_indices(len(images), cfg.holdout_fraction, seed)
    hold_images = as_float(images[hold])
    return images[fit], hold_images, head.predict(model, hold_images)


def _race(
    model: ClipModel,
    images: Tensor,
    head: ZeroShotHead,
    cfg: IdentifyConfig,
    seed: int,
    candidates: list[int],
    split: Split | None = None,
) -> Identification:
    """Targeted UAP toward each candidate, per family; score = rate minus the family median."""
    fit_images, hold_images, hold_pred = split or fit_and_holdout(model, images, head, cfg, seed)
    n_classes = len(head.classnames)
    results: list[UAPResult] = []
    for f_index, family in enumerate(race_families(images.shape[-1], cfg)):
        rates = torch.full((n_classes,), float("nan"))
        margins = torch.full((n_classes,), float("nan"))
        steps = torch.full((n_classes,), -1)
        gens = [torch.Generator().manual_seed(seeds.race(seed, f_index, c)) for c in candidates]
        found, stopped = race_family(model, head, fit_images, hold_images, hold_pred, family, candidates, cfg, gens)
        rates[candidates], margins[candidates] = torch.tensor(found).T
        steps[candidates] = torch.tensor(stopped)
        raced = rates[candidates]
        score = torch.full((n_classes,), float("nan"))
        score[candidates] = raced - raced.median()
        results.append(
            UAPResult(
                kind=family.kind,
                shift=score.nan_to_num(-1.0),
                fooling_rate=float(raced.max()),
                perturb=lambda x: x,
                rates=rates,
                margins=margins,
                steps=steps,
            )
        )
    return _rank(results, head, "targeted", cfg.race_aggregate)


def _rank(results: list[UAPResult], head: ZeroShotHead, method: str, aggregate: str = "mean") -> Identification:
    if aggregate not in ("mean", "max"):
        raise ValueError(f"identify.race_aggregate must be 'mean' or 'max', got {aggregate!r}")
    n_classes = len(head.classnames)
    stacked = torch.stack([r.shift for r in results])
    consensus = stacked.amax(0) if aggregate == "max" else stacked.mean(0)
    order = consensus.argsort(descending=True)
    top = int(order[0])
    agreement = sum(r.top == top for r in results) / len(results)
    consensus_shift = float(consensus[top])
    margin = consensus_shift - float(consensus[order[1]]) if n_classes > 1 else consensus_shift
    ranking = [(head.classnames[i], float(consensus[i])) for i in order.tolist()]
    return Identification(
        ranking=ranking,
        target=head.classnames[top],
        agreement=agreement,
        consensus_shift=consensus_shift,
        margin=margin,
        uaps=results,
        classnames=list(head.classnames),
        method=method,
    )


def _untargeted(
    model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: IdentifyConfig, seed: int, split: Split | None = None
) -> Identification:
    gen = torch.Generator().manual_seed(seed)
    fit_images, hold_images, hold_pred = split or fit_and_holdout(model, images, head, cfg, seed)
    fit_pred = head.predict(model, as_float(fit_images))
    n_classes = len(head.classnames)
    p_clean = histogram(hold_pred, n_classes)
    size = images.shape[-1]
    makers = [(f"patch@{loc}", patch_uap(patch_pixels(size, cfg.patch_fraction), loc)) for loc in cfg.patch_locations]
    makers += [(f"global@{eps * 255:.0f}/255", global_uap(size, eps)) for eps in cfg.global_eps]
    results: list[UAPResult] = []
    for kind, (param, apply) in makers:
        learned = optimise_uap(model, head, fit_images, fit_pred, param, apply, cfg, gen, f"stage 1: {kind}")
        perturb = (lambda a, q: lambda x: a(x, q))(apply, learned)
        adv_pred = head.predict(model, perturb(hold_images))
        results.append(
            UAPResult(
                kind=kind,
                shift=histogram(adv_pred, n_classes) - p_clean,
                fooling_rate=float((adv_pred != hold_pred).float().mean()),
                perturb=perturb,
            )
        )
    return _rank(results, head, "untargeted")
