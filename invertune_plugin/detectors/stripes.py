"""Refined stripes: a longer grayscale stripe UAP, eps * tanh(r_i + c_j) on every channel, toward the
top classes of the race's global family. For texture-like global triggers (SIG's sinusoid): 2 x H
parameters cannot paint a colourful natural attractor. Effective is not enough: a natural class can
be reached by a direction (a brightness gradient), so the trigger must also work sign-flipped, which
keeps a texture and reverses a direction."""

from __future__ import annotations

from dataclasses import dataclass

from toolbox.primitives.perturbations import GLOBAL_FAMILIES

from .. import seeds
from ..adversary import additive
from ..cascade import Detector, Finding, SearchContext, rate_margin, ratio
from ..invert import additive_trigger, alternate
from ..refine import RefineConfig, RefinedGlobal, refine_globals


@dataclass(frozen=True)
class StripeSearchConfig(RefineConfig):
    eps: float = 48 / 255  # L-inf budget, below SIG's 60/255; 0: off
    family: str = "stripes"  # "stripes" or "separable" (eps * tanh(u) tanh(v)^T, which missed the sinusoid)
    min_rate: float = 0.95  # held-out success rate as found; ours, fitted on the toy models
    min_flipped_rate: float = 0.3  # ... and sign-flipped; ours, fitted on the toy models
    tune_both_signs: bool = True  # both signs are triggers: stage 3 tunes +delta and -delta, half a batch each

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in GLOBAL_FAMILIES:
            raise ValueError(f"family must be one of {', '.join(GLOBAL_FAMILIES)}, got {self.family!r}")


class StripeSearch(Detector):
    name = "stripes"
    label = "stage 1 refined global perturbation"
    summary = "A longer grayscale stripe / separable UAP toward the top classes; a high held-out rate passes."
    reference = "this project"
    Config = StripeSearchConfig

    def passes(self, g: RefinedGlobal) -> bool:
        return g.holdout_rate >= self.config.min_rate and g.flipped_rate >= self.config.min_flipped_rate

    def search(self, ctx: SearchContext) -> list[Finding]:
        assert ctx.ident is not None
        cfg = self.config
        family = GLOBAL_FAMILIES[cfg.family](ctx.images.shape[-1], cfg.eps)
        refined = refine_globals(
            ctx.model,
            ctx.images,
            ctx.head,
            ctx.ident,
            ctx.identify,
            cfg,
            family,
            cfg.eps,
            seeds.STRIPES_STREAM,
            ctx.seed,
            accept=self.passes,
        )
        found = []
        for g in refined:
            trigger = additive_trigger(g.delta, g.target, g.holdout_rate)
            gate = min(ratio(g.holdout_rate, cfg.min_rate), ratio(g.flipped_rate, cfg.min_flipped_rate))
            strength = min(rate_margin(g.holdout_rate, cfg.min_rate), rate_margin(g.flipped_rate, cfg.min_flipped_rate))
            adversary = additive(trigger, cfg.eps, ctx.head.index(g.target))  # applies as the trigger until refreshed
            found.append(
                Finding(
                    self.name,
                    g.target,
                    trigger,
                    self.passes(g),
                    gate,
                    g.evidence(),
                    tune_with=alternate([adversary, adversary.negated()]) if cfg.tune_both_signs else None,
                    adversary=adversary,
                    strength=strength,
                )
            )
        return found
