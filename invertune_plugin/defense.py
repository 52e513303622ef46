"""The InverTune defense plugin: sample -> rank -> detector cascade -> purify -> record.

Stage 1 ranks the classes (identify.py), the detector cascade decides whether there is a trigger
and which (cascade.py, detectors/), stage 2 inverts (invert.py) and stage 3 tunes (tune.py). Three
profiles (``-p profile=paper``): ``default``, the settings that reach the bars on the toy world;
``paper``, the paper's hyperparameters for stages 2 and 3 as published (stage 1's generator is not
specified by the paper nor shipped by its code: ``paper`` uses our untargeted UAPs, the paper's
eq. 1, and the stage-2 inversion as its only detector); ``quick``, every stage at a handful of
steps, to time and size a run at real scale. Any setting can be overridden:
``-p invert.steps=300``, ``-p detectors.patch.min_rate=0.9``, ``-p cascade=inversion,linf``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from toolbox import atomic, precision
from toolbox.api import Defense, DefenseContext, DefenseOutcome, apply_overrides
from toolbox.null import CleanNull, check_statistics, select
from toolbox.primitives.tensors import as_float, seeded_subset
from toolbox.zeroshot import ZeroShotHead

from . import seeds
from .cascade import (
    CascadeResult,
    Detector,
    Finding,
    SearchContext,
    Verdict,
    detector_class,
    effective_ratio,
    run_cascade,
    vetoed,
)
from .differential import Differential
from .identify import Identification, IdentifyConfig, identify
from .invert import InvertConfig, InvertedTrigger, invert
from .record import detection_record, null_key
from .tune import TuneConfig, TuneReport, guard_reference, tune

DEFAULT_CASCADE = ("inversion", "patch", "stripes", "linf")


@dataclass(frozen=True)
class InverTuneConfig:
    profile: str = "default"  # "default" (toy-world tuned) or "paper"
    target: str | None = None  # known target: skip stage 1 and the cascade (the verdict is then not assessed)
    n_images: int = 1024  # clean images used (paper: a 50k ImageNet subset); at most what the defender has
    purify_when_clean: bool = False  # tune even when the verdict is "no backdoor found"
    min_round_asr: float = 0.5  # a later purification round runs only if its re-inversion still works this well
    # forward passes of every stage loop (toolbox/precision.py); weights and optimiser state stay fp32.
    # Paper: not stated (its code runs fp32)
    precision: str = "fp32"
    # the calibrated verdict's false-positive rate on the clean null (--calibration; toolbox/null.py). Ours
    alpha: float = 0.05
    # with --calibration, which finding is the trigger: "strongest" (every detector runs; the smallest
    # tail) or "first" (the cascade stops at the first finding the null calls). Ours
    calibrated_pick: str = "strongest"
    # with --reference: a trigger must send this much more of the held-out images to its target on the
    # suspect than on the reference it moves most (ours; AMDET compares with one clean anchor)
    min_differential: float = 0.5
    cascade: tuple[str, ...] = DEFAULT_CASCADE  # detectors in the order they search (cascade.py)
    detectors: dict[str, Any] = field(default_factory=dict)  # name -> its config; each cascade entry's defaults
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        if self.n_images < 2 or not self.cascade:
            raise ValueError("n_images must be >= 2 and the cascade needs at least one detector")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha is a false-positive rate in (0, 1); got {self.alpha}")
        if self.calibrated_pick not in ("strongest", "first"):
            raise ValueError(f"calibrated_pick is 'strongest' or 'first'; got {self.calibrated_pick!r}")
        if not -1 <= self.min_differential <= 1:
            raise ValueError(f"min_differential is a difference of rates in [-1, 1]; got {self.min_differential}")
        precision.check(self.precision, "invertune.precision")
        configs = {name: self.detectors.get(name) or detector_class(name).Config() for name in self.cascade}
        object.__setattr__(self, "detectors", configs)  # exactly the cascade's detectors are configured


def paper_profile() -> InverTuneConfig:
    return InverTuneConfig(
        profile="paper",
        cascade=("inversion",),
        identify=IdentifyConfig(method="untargeted"),
        invert=InvertConfig(
            lr=1e-2, steps=300, batch_size=64, ssim_window=11, parameterization="clamp", mask_init_logit=0.0
        ),
        tune=TuneConfig(
            layer_selection="mean+std",
            beta=0.5,
            lr=8e-6,
            steps=200,
            normalize_losses=False,
            embedding_weight=0.0,
            refresh_every=0,
        ),
    )


def quick_profile() -> InverTuneConfig:
    """Every stage at a handful of steps: to time and size the pipeline at real scale (224 px, 1,000
    classes; benchmarks/realscale.py), not to defend. The default's settings otherwise."""
    refine = {"classes": 1, "steps": 2, "restarts": 1, "judge_images": 8, "screen_restarts": 1, "tune_steps": 3}
    return InverTuneConfig(
        profile="quick",
        n_images=64,
        purify_when_clean=True,
        detectors={
            "inversion": detector_class("inversion").Config(candidates=1, tune_steps=3),
            **{name: detector_class(name).Config(**refine) for name in ("patch", "stripes", "linf")},
        },
        identify=IdentifyConfig(
            race_steps=2, max_race_classes=4, race_batch_classes=4, steps=2, batch_size=4, screen_steps=2
        ),
        invert=InvertConfig(steps=3, batch_size=4),
        tune=TuneConfig(steps=3, batch_size=4, guard_every=0),
    )


def calibrated_tail(null: CleanNull) -> Callable[[Finding], float]:
    """A finding's tail under the null, times k, on the values the result records (as the rule judges it)."""
    return lambda f: null.adjusted(f.detector, round(f.strength or 0.0, 4))


PROFILES = {"default": InverTuneConfig, "paper": paper_profile, "quick": quick_profile}


class InverTune(Defense):
    name = "invertune"
    summary = "InverTune: UAP target identification, trigger inversion, masked activation tuning."
    reference = "Sun et al., InverTune (arXiv 2506.12411, 2025), sections 3-4, appendices C-D"
    Config: ClassVar[type] = InverTuneConfig
    calibratable = True
    uses_references = True

    @classmethod
    def configure(cls, overrides: dict[str, str]) -> InverTuneConfig:
        profile = overrides.pop("profile", "default")
        if profile not in PROFILES:
            raise ValueError(f"unknown InverTune profile {profile!r}; one of {', '.join(PROFILES)}")
        config = PROFILES[profile]()
        if "cascade" in overrides:  # first: a detector it adds is configured before its settings are set
            config = apply_overrides(config, {"cascade": overrides.pop("cascade")}, cls.name)
        return apply_overrides(config, overrides, cls.name)

    def detectors(self) -> list[Detector]:
        cfg: InverTuneConfig = self.config
        return [detector_class(name)(cfg.detectors[name]) for name in cfg.cascade]

    def defend(self, ctx: DefenseContext) -> DefenseOutcome:
        with precision.autocast(self.config.precision, ctx.device):
            return self._defend(ctx)

    def _defend(self, ctx: DefenseContext) -> DefenseOutcome:
        cfg: InverTuneConfig = self.config
        search, result, key, null = self.detect(ctx)
        images = search.images
        artifacts = write_artifacts(ctx.workdir, search.ident, result.finding.trigger, images)
        model, report, info = ctx.model, None, {"profile": cfg.profile, "n_images": len(images), "rounds": []}
        wanted = result.verdict is not Verdict.NO_BACKDOOR_FOUND or cfg.purify_when_clean
        if wanted and not ctx.reference:  # a clean reference for a null is measured, never purified
            model, report, info["rounds"], info["round_checks"] = self.purify(search, result)
            artifacts.update(write_layer_table(ctx.workdir, report))
        info["purified"] = model is not ctx.model
        if report is not None:
            info["tune"] = {
                "n_params_updated": report.n_params_updated,
                "layers_selected": [layer.name for layer in report.layers if layer.selected],
                "history": report.history,
            }
        info["invert_history"] = result.finding.trigger.history
        return DefenseOutcome(
            model=model,
            detection=detection_record(search.ident, result, key, null, cfg),
            artifacts=artifacts,
            timings_s=search.timings,
            info=info,
            triggers={"inverted": result.finding.trigger},
            target=result.finding.target,
            trigger_masks={"inverted": result.finding.trigger.mask},
        )

    def detect(self, ctx: DefenseContext) -> tuple[SearchContext, CascadeResult, str, CleanNull | None]:
        """Sample the images, rank (stage 1) and run the cascade, or take the known target: the search and
        its result that :meth:`purify` works from, with the null key and the null the verdict used."""
        cfg: InverTuneConfig = self.config
        total = len(ctx.clean_data.dataset)  # decode only the n_images used: a defender's folder can be large
        images = ctx.clean_data.uint8(
            seeded_subset(total, cfg.n_images, ctx.seed) if total > cfg.n_images else None
        ).to(ctx.device)
        head = ZeroShotHead(ctx.model, ctx.classnames, ctx.templates, ctx.device)
        search = SearchContext(ctx.model, images, head, None, ctx.seed, cfg.identify, cfg.invert)
        key = null_key(cfg, ctx.model, ctx.classnames, ctx.templates, len(images))
        null = select(ctx.nulls, key, self.name) if ctx.nulls else None
        if null is not None:
            self.check_null(null)
        if cfg.target is not None:
            return search, self.given_target(search, cfg.target), key, null
        start = time.perf_counter()
        search.ident = identify(ctx.model, images, head, cfg.identify, ctx.seed)
        search.timings["identify"] = time.perf_counter() - start
        rank = calibrated_tail(null) if null is not None and cfg.calibrated_pick == "strongest" else None
        result = run_cascade(self.detectors(), search, self.rule(ctx, search, null), full=ctx.reference, rank=rank)
        return search, result, key, null

    def rule(
        self, ctx: DefenseContext, search: SearchContext, null: CleanNull | None
    ) -> Callable[[Finding], bool] | None:
        """When a finding is a trigger: its detector's gates, or with a clean null its calibrated tail;
        with reference models also a margin over what the trigger does to them (differential.py)."""
        cfg: InverTuneConfig = self.config
        if null is None and not ctx.references:
            return None
        # judged on images every detector held out (their splits are nested: one permutation per seed)
        holdout = min(getattr(d.config, "holdout_fraction", 1.0) for d in self.detectors())
        holdout = min(holdout, cfg.identify.holdout_fraction, cfg.invert.holdout_fraction)
        differential = (
            Differential.build(ctx.model, search.head, ctx.references, ctx.templates, search.images, ctx.seed, holdout)
            if ctx.references
            else None
        )

        def passes(f: Finding) -> bool:  # on the values the result records, so the record says the same
            judged = None
            if differential is not None:
                f.evidence["differential"] = judged = differential.judge(f.trigger, f.target, f.effect)
            if null is None:
                return effective_ratio(round(f.gate_ratio, 4), judged, cfg.min_differential) >= 1
            # the null calibrates the suspect's own strength; the references only veto (so one null serves both)
            return not vetoed(judged, cfg.min_differential) and calibrated_tail(null)(f) <= cfg.alpha

        return passes

    def check_null(self, null: CleanNull) -> None:
        """The null must hold a statistic for exactly the detectors this run measures."""
        cfg: InverTuneConfig = self.config
        check_statistics(
            null, {d.name for d in self.detectors() if not (d.needs_race and cfg.identify.method != "targeted")}
        )

    def given_target(self, search: SearchContext, target: str) -> CascadeResult:
        """A known target: stage 2 toward it is the trigger, with the inversion detector's tuning rule."""
        if search.head.classnames.count(target) != 1:
            raise ValueError(f"target {target!r} is not exactly one class of the vocabulary")
        inversion = detector_class("inversion")
        detector = inversion(self.config.detectors.get("inversion") or inversion.Config())
        return CascadeResult(Verdict.NOT_ASSESSED, detector.finding(search, target), detector, [], None)

    def purify(self, search: SearchContext, result: CascadeResult) -> tuple[Any, TuneReport, list, list]:
        """Stage 3: round 1 against the finding's trigger, later rounds against a re-inversion on the
        tuned model (while the detector's round check, if any, and the re-inversion say one is left)."""
        cfg: InverTuneConfig = self.config
        finding, rule = result.finding, result.detector.config
        model, report, current = search.model, None, finding.trigger
        rounds: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        # every round is compared with the suspect model's own predictions (tune.py, agreement guard)
        reference = (
            guard_reference(search.model, search.images, search.head, cfg.tune, search.seed)
            if cfg.tune.guard_every
            else None
        )
        for r in range(rule.rounds):
            if r > 0:
                start = time.perf_counter()
                check = result.detector.round_check(model, search, finding, r)
                if check is not None:
                    search.timings[f"check.round{r + 1}"] = time.perf_counter() - start
                    checks.append({k: v for k, v in check.items() if k != "passed"})
                    if not check["passed"]:
                        break
                start = time.perf_counter()
                current = invert(
                    model,
                    search.images,
                    search.head,
                    finding.target,
                    cfg.invert,
                    seeds.purification_round(search.seed, r),
                )
                search.timings[f"invert.round{r + 1}"] = time.perf_counter() - start
                if current.holdout_asr < cfg.min_round_asr:
                    break
            first = r == 0
            if first:
                tune_cfg = cfg.tune if rule.tune_steps is None else replace(cfg.tune, steps=rule.tune_steps)
            else:  # a later round's re-inversion has no adversary to refresh: it stays as found
                tune_cfg = replace(cfg.tune, refresh_every=0)
            start = time.perf_counter()
            trigger = (finding.tune_with or finding.adversary or current) if first else current
            model, report = tune(
                model,
                search.images,
                trigger,
                search.head,
                tune_cfg,
                seeds.purification_round(search.seed, r),
                reference,
                adversary=finding.adversary if first else None,
            )
            search.timings["tune" if first else f"tune.round{r + 1}"] = time.perf_counter() - start
            rounds.append(
                {
                    "round": r + 1,
                    "tune_steps": tune_cfg.steps,
                    "inverted_asr": round(current.holdout_asr, 4),
                    "mask_l1": round(current.mask_l1, 2),
                    "guard": report.guard,
                    "guard_stopped_at": report.stopped_at,
                    "refreshes": report.refreshes,
                }
            )
            if report.stopped_at is not None:  # the guard stopped this round: a further one would too
                break
        assert report is not None
        return model, report, rounds, checks


def write_artifacts(
    workdir: Path, ident: Identification | None, trigger: InvertedTrigger, images: torch.Tensor
) -> dict[str, str]:
    """target_ranking.csv, a bar chart of the top shifts, the inverted mask/pattern/example as PNG."""
    from toolbox.primitives.plots import save_image_grid, save_shift_chart

    workdir.mkdir(parents=True, exist_ok=True)
    sample = as_float(images[:8].cpu())
    save_image_grid([trigger.mask.expand(3, -1, -1).cpu()], workdir / "inverted_mask.png")
    save_image_grid([trigger.pattern.cpu()], workdir / "inverted_pattern.png")
    save_image_grid(list(sample) + list(trigger(sample)), workdir / "inverted_example.png", columns=len(sample))
    # the trigger itself, reusable (safetensors): mask, pattern and any additive part
    tensors = {
        "mask": trigger.mask,
        "pattern": trigger.pattern,
        **({"delta": trigger.delta} if trigger.delta is not None else {}),
    }
    atomic.save_safetensors(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(workdir / "inverted_trigger.safetensors")
    )
    written = {
        "inverted_mask": "inverted_mask.png",
        "inverted_pattern": "inverted_pattern.png",
        "inverted_example": "inverted_example.png",
        "inverted_trigger": "inverted_trigger.safetensors",
    }
    if trigger.delta is not None:  # additive part, shown as 0.5 + delta / (2 max |delta|): grey is zero
        delta = trigger.delta.cpu().expand(3, -1, -1)
        save_image_grid([0.5 + delta / (2 * delta.abs().max().clamp(min=1e-8))], workdir / "inverted_delta.png")
        written["inverted_delta"] = "inverted_delta.png"
    if ident is None:
        return written
    with open(workdir / "target_ranking.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "class", "consensus_shift", *[u.kind for u in ident.uaps]])
        for rank, (cls, shift) in enumerate(ident.ranking, 1):
            ci = ident.classnames.index(cls)
            w.writerow([rank, cls, f"{shift:.4f}", *[f"{float(u.shift[ci]):.4f}" for u in ident.uaps]])
    save_shift_chart(ident.ranking[:10], workdir / "target_shift.png")
    return {**written, "target_ranking": "target_ranking.csv", "target_shift_chart": "target_shift.png"}


def write_layer_table(workdir: Path, report: TuneReport) -> dict[str, str]:
    with open(workdir / "layer_impact.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "diff", "selected", "n_neurons", "n_critical"])
        for layer in report.layers:
            w.writerow([layer.name, f"{layer.diff:.5f}", int(layer.selected), layer.n_neurons, layer.n_critical])
    return {"layer_impact": "layer_impact.csv"}
