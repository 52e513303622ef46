"""Class-free collapse: the smallest mask and pattern that send every image to one embedding (DECREE).

A backdoored encoder maps any image carrying its trigger close to one point, so a small stamp
collapses the embeddings of all images (mean pairwise cosine above ``collapse``); a clean encoder
needs most of the image covered. The statistic is the smallest collapsing mask's fraction of the
image (when nothing collapses: 1 plus the cosine short of ``collapse``). No vocabulary, no labels:
it sees a backdoor whose target is no class the defender names. The class nearest the collapsed
point is recorded as the target, with its cosine to the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.primitives.tensors import as_float, frozen, split_indices
from toolbox.progress import progress

from .. import seeds
from ..adversary import masked
from ..cascade import Detector, DetectorConfig, Finding, SearchContext, ratio, size_margin
from ..invert import InvertedTrigger


@dataclass(frozen=True)
class CollapseConfig(DetectorConfig):
    steps: int = 300  # DECREE: 1,000 epochs over its shadow set; 300 steps converge at 32 px
    batch_size: int = 32
    lr: float = 0.05  # DECREE 0.5 on its tanh parameters; Adam on sigmoid logits here
    collapse: float = 0.99  # mean pairwise cosine of the triggered embeddings, DECREE's threshold
    init_cost: float = 0.01  # the mask-size weight at the start, raised / lowered as in Neural Cleanse
    cost_factor: float = 1.5  # DECREE's cost multiplier
    check_every: int = 10  # steps between collapse checks (and cost updates)
    # DECREE starts from a random mask; a uniform small one here (sigmoid(-2) = 0.12: half the image
    # collapses a clean encoder at once, toward a natural attractor, and the search never leaves it)
    mask_init_logit: float = -2.0
    # the gate without a clean null: a collapsing mask at most this fraction of the image (ours;
    # with --calibration the null decides instead)
    max_mask_fraction: float = 0.05
    holdout_fraction: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.check_every < 1 or not 0 < self.collapse < 1 or self.cost_factor <= 1:
            raise ValueError("collapse: steps and check_every >= 1, collapse in (0, 1), cost_factor > 1")


def mean_pairwise_cosine(emb: Tensor) -> Tensor:
    """The mean cosine over distinct pairs of L2-normalised rows."""
    n = len(emb)
    gram = emb @ emb.T
    return (gram.sum() - gram.diagonal().sum()) / max(n * (n - 1), 1)


@torch.no_grad()
def collapse_effect(model: ClipModel, images: Tensor, trigger: InvertedTrigger) -> float:
    """How far the trigger takes ``model``'s embeddings of ``images`` toward one point: 0 as they are,
    1 all at one point (a backdoored encoder near 1, a clean reference far below): reference models
    judge a class-free trigger by this, not by the class it happens to be nearest."""
    clean = float(mean_pairwise_cosine(model.encode_image(images)))
    stamped = float(mean_pairwise_cosine(model.encode_image(trigger(images))))
    return (stamped - clean) / max(1 - clean, 1e-6)


@dataclass
class Collapse:
    mask: Tensor  # [1, H, W]
    pattern: Tensor  # [3, H, W]
    fraction: float  # mask L1 over pixels; 1.0 when nothing collapsed
    cosine: float  # held-out mean pairwise cosine under the trigger


class CollapseSearch(Detector):
    name = "collapse"
    label = "class-free collapsing trigger"
    summary = "DECREE: the smallest mask+pattern collapsing all image embeddings; no vocabulary needed."
    reference = "Feng et al., Detecting Backdoors in Pre-trained Encoders (DECREE, CVPR 2023)"
    Config = CollapseConfig
    needs_race = False

    def search(self, ctx: SearchContext) -> list[Finding]:
        cfg = self.config
        fit, hold = split_indices(len(ctx.images), cfg.holdout_fraction, ctx.seed)
        with frozen(ctx.model):
            found = self.minimise(ctx, as_float(ctx.images[fit]), seeds.refinement(ctx.seed, seeds.COLLAPSE_STREAM, 0))
            hold_images = as_float(ctx.images[hold])
            with torch.no_grad():
                triggered = found.mask * found.pattern + (1 - found.mask) * hold_images
                emb = ctx.model.encode_image(triggered)
                cosine = float(mean_pairwise_cosine(emb))
                centre = F.normalize(emb.mean(0), dim=-1)
                sims = ctx.head.weights @ centre
                target = int(sims.argmax())
                base = ctx.head.predict(ctx.model, hold_images)
                pred = ctx.head.predict(ctx.model, triggered)
        keep = base != target
        rate = float((pred[keep] == target).float().mean()) if keep.any() else 0.0
        classname = ctx.head.classnames[target]
        trigger = InvertedTrigger(
            mask=found.mask, pattern=found.pattern, target=classname, holdout_asr=rate, mask_l1=float(found.mask.sum())
        )
        collapsed = cosine >= cfg.collapse
        # the statistic: the collapsing mask's fraction; above 1 by the cosine short of collapse when none collapsed
        cost = found.fraction if collapsed else 1 + cfg.collapse - cosine
        evidence = {
            "class": classname,
            **trigger.evidence(),
            "collapse_cost": round(cost, 4),
            "holdout_cosine": round(cosine, 4),
            "target_text_cosine": round(float(sims[target]), 4),
        }
        passed = collapsed and cost <= cfg.max_mask_fraction
        return [
            Finding(
                self.name,
                classname,
                trigger,
                passed,
                ratio(cfg.max_mask_fraction, cost),
                evidence,
                adversary=masked(trigger, target),
                strength=size_margin(cost, cfg.max_mask_fraction),
                effect=lambda model, _head, images: collapse_effect(model, images, trigger),
            )
        ]

    def minimise(self, ctx: SearchContext, images: Tensor, seed: int) -> Collapse:
        """Adam on mask and pattern logits: collapse, then shrink the mask while the collapse holds."""
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        size = images.shape[-1]
        mask_p = torch.full((1, size, size), cfg.mask_init_logit, device=images.device, requires_grad=True)
        pattern_p = (torch.randn(3, size, size, generator=gen) * 0.5).to(images.device).requires_grad_(True)
        opt = torch.optim.Adam([mask_p, pattern_p], lr=cfg.lr)
        cost = cfg.init_cost
        best: Collapse | None = None
        for step in progress(range(cfg.steps), desc="detect: collapse"):
            idx = torch.randint(len(images), (min(cfg.batch_size, len(images)),), generator=gen)
            mask, pattern = torch.sigmoid(mask_p), torch.sigmoid(pattern_p)
            x = mask * pattern + (1 - mask) * images[idx]
            cosine = mean_pairwise_cosine(ctx.model.encode_image(x))
            if (step + 1) % cfg.check_every == 0:  # judged on this very mask, before the step moves it
                if float(cosine.detach()) >= cfg.collapse:  # collapsed: keep the smallest such mask, push it smaller
                    fraction = float(mask.detach().mean())
                    if best is None or fraction < best.fraction:
                        best = Collapse(
                            mask.detach().clone(), pattern.detach().clone(), fraction, float(cosine.detach())
                        )
                    cost *= cfg.cost_factor
                else:
                    cost /= cfg.cost_factor
            loss = (1 - cosine) + cost * mask.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if best is None:  # never collapsed: the last trigger, judged on held-out images by the caller
            mask, pattern = torch.sigmoid(mask_p).detach(), torch.sigmoid(pattern_p).detach()
            best = Collapse(mask, pattern, float(mask.mean()), 0.0)
        return best
