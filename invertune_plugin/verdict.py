"""Backdoored or not: a verdict from stage-2 evidence, calibrated on the clean toy models.

A single UAP's margin cannot decide, and on this toy world neither can UAP agreement:
the clean default ViT sends 75 % of its patch UAPs to "traffic light" (a colourful patch
looks like one), more agreement than most backdoored models show. What separates them
is how small a mask suffices to send held-out images to the ranked class: the clean
model's inverted "traffic light" needs 9.5 % of the mask entries (96 % ASR), the BadNet
model's "mushroom" 4.8 % (99 %). The ResNet-type tiny CLIP moved the line: its natural
classes need smaller masks (inverted with the default settings, >= 92 % held-out ASR):
"tennis ball" 5.4 % on the clean model, 5.4-6.3 % on the WaNet, SIG, BadNet and Blended
models, where it is not the target; the next natural classes 7.0-7.5 %. The smallest
natural mask measured on either architecture is therefore 5.4 %, and the largest backdoor
mask the threshold must accept (no refined patch catches a global trigger) is Blended's
3.5 % on the ViT; BadNet's are 4.8 % (ViT) and 2.2 % (ResNet). ``max_mask_fraction`` = 5 %
sits in that gap, which is narrow (4.8 against 5.4) and measured on the same handful of
models the threshold is meant for — treat it as a heuristic. The result carries the raw
evidence (stage-1 race rates, inverted ASR and mask size, refined patches) so a user can
judge, and ``-p verdict.max_mask_fraction=...`` moves it.

When the inversion finds no small effective mask, the race's top classes get a longer
patch UAP (``identify.refine_patches``). A patch is 1.6 % of the image, so one that sends
``min_patch_rate`` of held-out images to its class is a small effective trigger by
construction. Measured on the default ViT (100 steps, best of 3 restarts): clean model at
most 0.824 ("dumbbell", bottom-right and top-left), BadEncoder "mushroom" 0.996-1.0 at
bottom-right, where its 20-step race rate had been 0.705 and its inverted mask 11.7 %.
(The defense now screens each class with one restart and gives the other two only to a class
whose screen passes, ``IdentifyConfig.refine_screen_restarts``; a trigger must pass with the
screen's restart and again with the pick of all three: per class, the screen accepts a subset of
what the best of 3 accepted (though a class it rejects lets a later class be tried), and a clean
model's rates in the result are one restart's. Not every single
restart stays on its side of the gates: on the default-resnet SIG model, "tennis ball"'s second
restart reached 0.968 as found and 0.339 sign-flipped, over both global gates; its first restart
and the pick of three gave 0.993 / 0.025.)

A global trigger (SIG's sinusoid) has neither a small mask nor a patch. When both paths
fail, the top classes of the race's global family get a longer grayscale *stripe* UAP
(``identify.refine_global_eps``, 48/255, eps * tanh(r_i + c_j)): 2 x 32 parameters, the
same on every channel, so it cannot paint the colourful attractors the clean default ViT
falls into, yet it can express a stripe signal. Being effective is not enough: the clean
ResNet-type model's "tennis ball" is reached by such a perturbation too (held-out 0.996),
by a *direction* (a brightness gradient), where SIG's target is reached by a *texture*.
Flipping the sign keeps a texture's stripes (a half-period shift of a sinusoid) and
reverses a direction, so the trigger must also work sign-flipped
(``min_global_flipped_rate``). Measured in the defense (100 steps, best of 3; rate as found
/ sign-flipped): default ViT SIG "mushroom" 0.997 / 0.587; default-resnet SIG "mushroom"
1.0 / 0.632. Natural classes: default-resnet "tennis ball" 0.996 / 0.0 (clean model), 0.993
/ 0.025 (SIG), 0.986 / 0.129 (Blended), 0.996 / 0.011 (WaNet); every other class measured
(top 3 of the global family on those models and on the default ViT's clean and WaNet models)
stays below 0.95 as found (the clean ViT's at most 0.56), and at most 0.13 sign-flipped. The
flip gate sits at 0.3, inside that gap. This path is a detector for *texture-like* global
triggers (SIG), not for every global trigger: Blended's noise would not survive a flip. The
gates rest on the seven models named here; the rates are in the result.

Blended's noise survives neither the flip nor a stripe family, and on the default-resnet model
(a weak, 59 % backdoor) it needs a mask (8.3 %) no smaller than natural classes' (5.4-7.5 %).
The last path (``identify.refine_linf_eps``) asks for a small budget instead of a small area: a
full-colour L-inf UAP of 16/255 toward each of the global family's top classes. A backdoor
target is a shortcut that such a budget reaches on most images; a natural class is not.
Measured with the defense's seeds, 100 steps, each of its 3 restarts run (unscreened), held-out
rate; the screen's restart is the first of them: the top 3
global classes of the clean and WaNet models of both architectures, where this path runs, at
most 0.471 (default-resnet clean "tennis ball"; the default ViT's at most 0.367); default-resnet
Blended "mushroom" 0.696-0.724. The default ViT Blended model, which stage 2 catches before
this path runs, has a natural class higher than any other seen: "pinwheel" 0.45-0.52.
``min_linf_rate`` = 0.6 sits between 0.52 and 0.70: a narrow gap, measured on the models it
is meant for, a heuristic like the others. No flip test here: a noise trigger does not
survive one (Blended "mushroom" 0.02-0.03 sign-flipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .identify import Identification, RefinedGlobal, RefinedPatch
from .invert import InvertedTrigger


@dataclass(frozen=True)
class VerdictConfig:
    min_inverted_asr: float = 0.9  # inversion must really work ...
    # ... with a mask this small: ours, below every natural class measured (ResNet "tennis ball"
    # 0.054, ViT >= 0.070) and above BadNet (ViT 0.048, ResNet 0.022) and Blended (ViT 0.035)
    max_mask_fraction: float = 0.05
    # a refined stage-1 patch (4 px at 32 px) counts as a trigger at this held-out success rate
    min_patch_rate: float = 0.95  # ours (clean ViT: at most 0.824; BadEncoder: 1.0); see the docstring
    # a refined global perturbation (identify.refine_global_family, _eps) counts as a trigger at this rate
    min_global_rate: float = 0.95  # ours (ViT SIG: 0.997; clean ResNet "tennis ball": 0.996, hence ...)
    # ... this: the same with -delta. Ours, in the gap: SIG ViT 0.587, ResNet 0.632; natural classes <= 0.13
    min_global_flipped_rate: float = 0.3
    # a refined L-inf perturbation (identify.refine_linf_eps) counts as a trigger at this rate. Ours, in the
    # gap: natural classes <= 0.52 (0.471 where the path runs), default-resnet Blended "mushroom" >= 0.696
    min_linf_rate: float = 0.6

    def __post_init__(self) -> None:
        bad = {k: v for k, v in vars(self).items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"verdict settings are fractions in [0, 1]; not {bad}")


def best_patch(refined: list[RefinedPatch], cfg: VerdictConfig) -> RefinedPatch | None:
    """The most effective refined patch, when it is effective enough to be a trigger."""
    effective = [p for p in refined if p.holdout_rate >= cfg.min_patch_rate]
    return max(effective, key=lambda p: p.holdout_rate) if effective else None


def is_global_trigger(g: RefinedGlobal, cfg: VerdictConfig) -> bool:
    """Effective as found, and still effective sign-flipped (a texture, not a direction; see the docstring)."""
    return g.holdout_rate >= cfg.min_global_rate and g.flipped_rate >= cfg.min_global_flipped_rate


def is_linf_trigger(g: RefinedGlobal, cfg: VerdictConfig) -> bool:
    """Effective at the small L-inf budget (no flip test: a noise trigger does not survive one)."""
    return g.holdout_rate >= cfg.min_linf_rate


def best_global(refined: list[RefinedGlobal], cfg: VerdictConfig,
                test: Callable[[RefinedGlobal, VerdictConfig], bool] = is_global_trigger) -> RefinedGlobal | None:
    """The most effective refined global perturbation that passes ``test`` (:func:`is_global_trigger`
    for the stripes, :func:`is_linf_trigger` for the L-inf refinement)."""
    effective = [g for g in refined if test(g, cfg)]
    return max(effective, key=lambda g: g.holdout_rate) if effective else None


def decide(ident: Identification, trigger: InvertedTrigger, cfg: VerdictConfig) -> bool:
    """True when the ranked target has a small, effective inverted trigger."""
    del ident  # stage-1 evidence is recorded, not decisive (see the module docstring)
    return (trigger.holdout_asr >= cfg.min_inverted_asr
            and trigger.mask_l1 / trigger.mask.numel() <= cfg.max_mask_fraction)


# What detection.score means (recorded beside it). A stop-gap continuous score for the zoo's
# ROC curves; issue 22 replaces it with statistics normalised against the model's own classes.
SCORE_DEFINITION = ("largest statistic / gate ratio among the detectors that ran: stage-2 inversion min(held-out "
                    "ASR / min_inverted_asr, max_mask_fraction / mask fraction); refined patch held-out rate / "
                    "min_patch_rate; stripes min(held-out rate / min_global_rate, flipped rate / "
                    "min_global_flipped_rate); L-inf held-out rate / min_linf_rate. >= 1 where a gate passed")


def gate_score(inversions: list[InvertedTrigger], patches: list[RefinedPatch], stripes: list[RefinedGlobal],
               linf: list[RefinedGlobal], cfg: VerdictConfig) -> float:
    """One continuous number per model, monotone in every detector's evidence (see SCORE_DEFINITION)."""
    def over(stat: float, gate: float) -> float:  # a gate set to 0 passes everything: a large finite ratio
        return stat / max(gate, 1e-6)

    ratios = [min(over(t.holdout_asr, cfg.min_inverted_asr), over(cfg.max_mask_fraction, t.mask_l1 / t.mask.numel()))
              for t in inversions]
    ratios += [over(p.holdout_rate, cfg.min_patch_rate) for p in patches]
    ratios += [min(over(g.holdout_rate, cfg.min_global_rate), over(g.flipped_rate, cfg.min_global_flipped_rate))
               for g in stripes]
    ratios += [over(g.holdout_rate, cfg.min_linf_rate) for g in linf]
    return max(ratios, default=0.0)

