"""Stage 2's inversion as a detector: the suspected target has a small, effective inverted mask."""

from __future__ import annotations

from dataclasses import dataclass

from ..adversary import masked
from ..cascade import Detector, DetectorConfig, Finding, SearchContext, rate_margin, ratio, size_margin


@dataclass(frozen=True)
class InversionConfig(DetectorConfig):
    min_asr: float = 0.9  # the inverted trigger must really work (held-out ASR) ...
    # ... with a mask this small, a fraction of the image (scale-free); ours, fitted on the toy models
    max_mask_fraction: float = 0.05
    # Invert toward stage 1's top K; the smallest effective mask wins (K > 1 did not rescue SIG or BadCLIP
    # on the default ViT and costs K - 1 inversions; fitted on the toy models)
    candidates: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates < 1 or not 0 <= self.min_asr <= 1 or not 0 <= self.max_mask_fraction <= 1:
            raise ValueError("candidates must be >= 1; min_asr and max_mask_fraction are fractions in [0, 1]")


class MaskInversion(Detector):
    name = "inversion"
    label = "stage 2 inversion"
    summary = "Mask + pattern inversion toward the top-ranked class; small mask and high held-out ASR pass."
    reference = "InverTune (paper), stage 2"
    Config = InversionConfig
    needs_race = False  # inverts toward the ranking's top classes, whichever method ranked them

    def search(self, ctx: SearchContext) -> list[Finding]:
        assert ctx.ident is not None
        found = [self.finding(ctx, c) for c, _ in ctx.ident.ranking[: self.config.candidates]]
        effective = [f for f in found if f.trigger.holdout_asr >= self.config.min_asr]
        best = min(effective, key=lambda f: f.trigger.mask_l1) if effective else found[0]
        return [best] + [f for f in found if f is not best]  # best first: the cascade's fallback trigger

    def finding(self, ctx: SearchContext, target: str) -> Finding:
        trigger = ctx.inversion(target)
        fraction = trigger.mask_l1 / trigger.mask.numel()
        passed = trigger.holdout_asr >= self.config.min_asr and fraction <= self.config.max_mask_fraction
        gate = min(ratio(trigger.holdout_asr, self.config.min_asr), ratio(self.config.max_mask_fraction, fraction))
        strength = min(
            rate_margin(trigger.holdout_asr, self.config.min_asr), size_margin(fraction, self.config.max_mask_fraction)
        )
        adversary = masked(trigger, ctx.head.index(target))  # its pattern under its mask; applies as the trigger
        return Finding(
            self.name,
            target,
            trigger,
            passed,
            gate,
            {"class": target, **trigger.evidence()},
            adversary=adversary,
            strength=strength,
        )
