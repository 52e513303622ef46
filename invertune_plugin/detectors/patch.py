"""A refined patch: a longer patch UAP toward the race's top classes that sends nearly every
held-out image to its class. A patch is a small area by construction, so an effective one is a
trigger where stage 2's mask came out too large."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import seeds
from ..adversary import masked
from ..cascade import Detector, Finding, SearchContext, rate_margin, ratio
from ..invert import patch_trigger
from ..refine import RefineConfig, RefinedPatch, refine_patch, refine_patches


@dataclass(frozen=True)
class PatchSearchConfig(RefineConfig):
    min_rate: float = 0.95  # held-out success rate of a trigger; ours, fitted on the toy models
    # Round 1 against a refined patch tunes 100 steps: longer, the tuning specialises to the refined
    # pattern and the real trigger creeps back (fitted on the toy models)
    tune_steps: int | None = 100
    # A later round runs only if a patch refined toward the target at the same place on the tuned model
    # still reaches round_check_rate ("patch"); "inversion": the re-inversion's min_round_asr alone
    round_check: str = "patch"
    round_check_rate: float = 0.2  # ours, calibrated after 200-step rounds (fitted on the toy models)
    round_check_restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.round_check not in ("patch", "inversion") or self.round_check_restarts < 1:
            raise ValueError(
                f"round_check must be 'patch' or 'inversion' (got {self.round_check!r}) "
                f"and round_check_restarts >= 1 (got {self.round_check_restarts})"
            )


class RefinedPatchSearch(Detector):
    name = "patch"
    label = "stage 1 refined patch"
    summary = "A longer targeted patch UAP at the race's places toward the top classes; a high held-out rate passes."
    reference = "this project"
    Config = PatchSearchConfig

    def passes(self, p: RefinedPatch) -> bool:
        return p.holdout_rate >= self.config.min_rate

    def search(self, ctx: SearchContext) -> list[Finding]:
        assert ctx.ident is not None
        masks = {cls: trigger.mask for cls, trigger in ctx.inversions.items()}  # stage 2's, where it ran
        refined = refine_patches(
            ctx.model,
            ctx.images,
            ctx.head,
            ctx.ident,
            ctx.identify,
            self.config,
            ctx.seed,
            accept=self.passes,
            masks=masks,
        )
        size = ctx.images.shape[-1]
        found = []
        for p in refined:
            trigger = patch_trigger(p.patch, p.location, size, p.target, p.holdout_rate)
            adversary = masked(trigger, ctx.head.index(p.target))  # the patch in its box; applies as the trigger
            found.append(
                Finding(
                    self.name,
                    p.target,
                    trigger,
                    self.passes(p),
                    ratio(p.holdout_rate, self.config.min_rate),
                    p.evidence(),
                    adversary=adversary,
                    location=p.location,
                    strength=rate_margin(p.holdout_rate, self.config.min_rate),
                )
            )
        return found

    def round_check(self, model: Any, ctx: SearchContext, finding: Finding, r: int) -> dict[str, Any] | None:
        if self.config.round_check != "patch" or finding.location is None:
            return None
        budget = replace(self.config, restarts=self.config.round_check_restarts)
        again = refine_patch(
            model,
            ctx.images,
            ctx.head,
            finding.target,
            finding.location,
            ctx.identify,
            budget,
            seeds.purification_round(ctx.seed, r),
        )
        return {
            "round": r + 1,
            "refined_patch_rate": round(again.holdout_rate, 4),
            "passed": again.holdout_rate >= self.config.round_check_rate,
        }
