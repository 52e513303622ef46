"""Refined L-inf: a full-colour L-inf UAP toward the top classes of the race's global family, at a
budget too small for natural classes. For a global trigger that is neither a small mask nor a
texture (Blended's noise). No flip test: a noise trigger does not survive one."""

from __future__ import annotations

from dataclasses import dataclass

from toolbox.primitives.perturbations import linf_family

from .. import seeds
from ..adversary import additive
from ..cascade import Detector, Finding, SearchContext, rate_margin, ratio
from ..invert import additive_trigger, alternate
from ..refine import RefineConfig, RefinedGlobal, refine_globals


@dataclass(frozen=True)
class LinfConfig(RefineConfig):
    eps: float = 16 / 255  # at 24/255 natural classes reach the gate too; 0: off
    min_rate: float = 0.6  # held-out success rate; ours, fitted on the toy models
    # The L-inf perturbation is a partial picture of the trigger: stage 3 also tunes against a stage-2
    # inversion toward its target, half a batch each (fitted on the toy models)
    tune_with_inversion: bool = True


class LinfSearch(Detector):
    name = "linf"
    label = "stage 1 refined L-inf perturbation"
    summary = "A longer small-budget L-inf targeted UAP toward the top classes; a high held-out rate passes."
    reference = "this project"
    Config = LinfConfig

    def passes(self, g: RefinedGlobal) -> bool:
        return g.holdout_rate >= self.config.min_rate

    def search(self, ctx: SearchContext) -> list[Finding]:
        assert ctx.ident is not None
        cfg = self.config
        family = linf_family(ctx.images.shape[-1], cfg.eps)
        refined = refine_globals(
            ctx.model,
            ctx.images,
            ctx.head,
            ctx.ident,
            ctx.identify,
            cfg,
            family,
            cfg.eps,
            seeds.LINF_STREAM,
            ctx.seed,
            accept=self.passes,
        )
        found = []
        for g in refined:
            trigger = additive_trigger(g.delta, g.target, g.holdout_rate)
            adversary = additive(trigger, cfg.eps, ctx.head.index(g.target))  # applies as the trigger until refreshed
            finding = Finding(
                self.name,
                g.target,
                trigger,
                self.passes(g),
                ratio(g.holdout_rate, cfg.min_rate),
                g.evidence(),
                adversary=adversary,
                strength=rate_margin(g.holdout_rate, cfg.min_rate),
            )
            if finding.passed and cfg.tune_with_inversion:
                reused = g.target in ctx.inversions
                inversion = ctx.inversion(g.target, timing="invert.linf_target")
                finding.tune_with = alternate([adversary, inversion])
                finding.evidence["tune_companion"] = {
                    "class": g.target,
                    "reused_stage2": reused,
                    **inversion.evidence(),
                }
            found.append(finding)
        return found
