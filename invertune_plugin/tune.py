"""Stage 3 — activation tuning (paper section 3.3, eq. 8-11, algorithm 2).

1. Layer impact: for every vision layer (ViT residual blocks, ResNet stages, HF encoder
   layers — named by the model adapter), diff = ||mu_clean - mu_trig|| / ||mu_clean||
   over per-neuron mean activations (neuron = channel; mean over batch and tokens/pixels).
2. Layer selection: the paper keeps layers with diff > mean + std. On shallow models the
   diffs are nearly flat and that keeps one layer (feasibility study: ASR stayed 80-93 %),
   so the tuned default keeps every layer ("all").
3. Critical neurons: seeded K-means (k=2) on |mu_clean - mu_trig| per selected layer; the
   cluster with the larger centroid.
4. Tuning: L = activation alignment on critical neurons + beta * preservation of the
   image-text similarities of the original model. Updates are masked: only the parameter
   rows that write critical channels move (attention/MLP output projections of a block;
   the last convolution / batch-norm of each bottleneck and its shortcut). The model stays
   in eval mode, so batch-norm running statistics are left intact; all in fp32.
5. Agreement monitor and guard (ours; the paper has neither): every ``guard_every`` steps
   the tuned model's zero-shot predictions on (up to ``guard_images`` of) the defender's
   clean images are compared with the suspect model's own, and the result records it. With
   ``min_agreement`` > 0, tuning stops once fewer agree and the last checkpoint that passed
   is kept. The defender has no labels, so agreement stands in for clean accuracy; it counts
   wrong-to-wrong changes too, and the images are tuning images (in-sample), so it is a
   collapse guard, not a CA estimate. Off by default: on the smoke model (CA 82 %) only 75 %
   of predictions agreed after 25 steps, yet tuning cost 7 CA points and removed the backdoor;
   a threshold that weak models pass would not stop anything on strong ones.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from toolbox import precision
from toolbox.api import ClipModel
from toolbox.primitives.tensors import as_float, frozen, image_embeddings, seeded_subset
from toolbox.progress import progress
from toolbox.zeroshot import ZeroShotHead

from .neurons import (
    ActivationRecorder,
    LayerImpact,
    critical_neurons,
    layer_impacts,
    mean_activations,
    select_layers,
    writer_rows,
)
from .stamps import RandomStamps

if TYPE_CHECKING:
    from .adversary import Adversary

log = logging.getLogger(__name__)
Trigger = Callable[[Tensor], Tensor]

EMBED_BATCH = 256  # images per no-grad pass when embedding every clean image once


@dataclass(frozen=True)
class TuneConfig:
    """Stage 3 settings; the paper's value is named where the toy default differs."""

    layer_selection: Literal["mean+std", "all"] = "all"  # paper mean+std
    kmeans_k: int = 2  # paper 2
    beta: float = 4.0  # paper 0.5; with refresh_every, CA kept on the dev split (docs/invertune.md, stage 3)
    lr: float = 1e-3  # paper 8e-6; feasibility study: 1e-3 with masked updates
    # Not in the paper (paper 0): lr rises linearly over the first warmup_steps; CA is lost early, at full lr
    warmup_steps: int = 0
    steps: int = 200  # paper 200
    batch_size: int = 64  # paper 64
    normalize_losses: bool = True  # paper False; activation / its start value, preservation / var(sims)
    # Not in the paper (paper 0): also pull triggered images' embeddings to the original model's
    # clean embeddings (output-level unlearning with the inverted trigger). On the default ViT with
    # BadNet, activation alignment alone left ASR at 28.5 %; with this term at 1.0, 0.1 %.
    embedding_weight: float = 1.0
    update: Literal["masked", "all"] = "masked"  # paper: masked ("only critical neurons' parameters")
    # agreement with the suspect model's predictions (ours, not in the paper; see the module docstring)
    # steps between measurements, recorded in the result; 0: never measured. 25 steps x 512 images cost
    # the default ViT 4 s per round (7 %) and its BadEncoder cell the 5-minute line: 50 x 256
    guard_every: int = 50
    guard_images: int = 256  # a seeded subset of the clean images, so a measurement costs one bounded pass
    min_agreement: float = 0.0  # > 0: stop and roll back below this agreement (off; e.g. 0.9 as a collapse guard)
    # Not in the paper (paper 0): every refresh_every steps the detector's trigger takes refresh_steps targeted
    # Adam steps (lr refresh_lr) on the model being tuned (adversary.py), so a high beta still unlearns it
    refresh_every: int = 10
    refresh_steps: int = 5
    refresh_lr: float = 0.01
    # Not in the paper: hold randomly stamped images' embeddings to the suspect's clean ones (stamps.py),
    # so tuning removes an answer to small stamps the reconstruction missed; 0: off until measured on dev
    consistency_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0 or self.guard_every < 0 or self.guard_images < 1:
            raise ValueError("tune.min_agreement must be in [0, 1], guard_every >= 0, guard_images >= 1")
        if self.refresh_every < 0 or self.refresh_steps < 1 or self.refresh_lr <= 0:
            raise ValueError("tune.refresh_every must be >= 0, refresh_steps >= 1 and refresh_lr > 0")
        if self.consistency_weight < 0:
            raise ValueError("tune.consistency_weight must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError("tune.warmup_steps must be >= 0")
        if self.min_agreement > 0 and self.guard_every == 0:
            raise ValueError("tune.min_agreement needs tune.guard_every > 0 (agreement is never measured)")


@dataclass
class TuneReport:
    layers: list[LayerImpact]
    history: list[dict[str, float]] = field(default_factory=list)
    n_params_updated: int = 0
    guard: list[dict[str, float]] = field(default_factory=list)  # {"step", "agreement"} per check
    stopped_at: int | None = None  # the guard's rollback: steps kept (None: ran to the end)
    refreshes: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss"} per adversary refresh


@dataclass(frozen=True)
class GuardReference:
    """What the agreement guard compares with: clean images and the suspect model's predictions."""

    images: Tensor  # float [N,3,H,W]
    predictions: Tensor  # [N]


def guard_reference(model: ClipModel, images: Tensor, head: ZeroShotHead, cfg: TuneConfig, seed: int) -> GuardReference:
    """A seeded subset of ``images`` (at most ``cfg.guard_images``) and ``model``'s predictions on it."""
    x = as_float(images[seeded_subset(len(images), cfg.guard_images, seed)])
    with frozen(model):
        return GuardReference(images=x, predictions=head.predict(model, x))


def tune(
    model: ClipModel,
    images: Tensor,
    trigger: Trigger,
    head: ZeroShotHead,
    cfg: TuneConfig,
    seed: int = 0,
    reference: GuardReference | None = None,
    adversary: Adversary | None = None,
) -> tuple[ClipModel, TuneReport]:
    """Return a tuned copy of ``model`` (the input is not modified) and what was done.

    ``reference``: what the agreement guard holds the tuned model to. The defense passes the
    suspect model's, so a later round is held to the suspect model, not to the previous round;
    default: ``guard_reference(model, images, head, cfg, seed)``. ``adversary``: the part of
    ``trigger`` that ``cfg.refresh_every`` re-optimises on the tuned model (``trigger`` calls it).
    """
    tuned = model.clone() if hasattr(model, "clone") else copy.deepcopy(model)
    tuned.eval()  # batch-norm statistics stay as they are
    layers = tuned.vision_layers()
    if not layers:
        raise ValueError("stage 3 needs the model adapter to name its vision layers; this model names none")
    recorder = ActivationRecorder(layers)
    grad_hooks: list[RemovableHandle] = []
    try:
        impacts, masks, weights = critical_layers(tuned, recorder, images, trigger, cfg, seed)
        params, n_updated = unfreeze_writers(tuned, layers, masks, cfg, grad_hooks)
        report = TuneReport(layers=impacts, n_params_updated=n_updated)
        if not params:  # nothing writes the critical neurons: report it, change nothing
            return model, report
        with torch.no_grad(), frozen(model):  # eval: the input's batch-norm statistics, untouched
            original_emb = image_embeddings(model, images, EMBED_BATCH)
            objective = Objective(
                weights,
                original_emb,
                original_emb @ head.weights.T,
                stamps=RandomStamps(seed) if cfg.consistency_weight > 0 else None,
            )
        if cfg.guard_every > 0 and reference is None:
            reference = guard_reference(model, images, head, cfg, seed)
        optimise(tuned, params, images, trigger, head, cfg, seed, recorder, objective, reference, adversary, report)
    finally:
        recorder.close()
        for handle in grad_hooks:  # the returned model must train normally afterwards
            handle.remove()
        for p in tuned.parameters():
            p.requires_grad_(True)
    tuned.eval()
    return tuned, report


def critical_layers(
    tuned: ClipModel, recorder: ActivationRecorder, images: Tensor, trigger: Trigger, cfg: TuneConfig, seed: int
) -> tuple[list[LayerImpact], dict[str, Tensor], dict[str, Tensor]]:
    """Steps 1-3: every layer's impact, the selected layers, and their critical-neuron masks (bool)
    and loss weights (float, beside the activations)."""
    mu_clean = mean_activations(tuned, recorder, images, None)
    mu_trig = mean_activations(tuned, recorder, images, trigger)
    impacts = layer_impacts(mu_clean, mu_trig)
    select_layers(impacts, cfg.layer_selection)
    masks: dict[str, Tensor] = {}
    for imp in impacts:
        if imp.selected:
            masks[imp.name] = critical_neurons(mu_clean[imp.name] - mu_trig[imp.name], cfg.kmeans_k, seed)
            imp.n_critical = int(masks[imp.name].sum())
    # the loss weights live beside the activations once, not copied to the device every step
    weights = {name: m.to(mu_clean[name].device, torch.float32) for name, m in masks.items()}
    return impacts, masks, weights


def unfreeze_writers(
    tuned: ClipModel,
    layers: dict[str, nn.Module],
    masks: dict[str, Tensor],
    cfg: TuneConfig,
    grad_hooks: list[RemovableHandle],
) -> tuple[list[nn.Parameter], int]:
    """Freeze ``tuned`` but the parameters ``cfg.update`` trains; returns them and how many entries move.
    Masked updates register their gradient masks in ``grad_hooks`` (the caller removes them)."""
    for p in tuned.parameters():
        p.requires_grad_(False)
    if cfg.update == "masked":
        rows = [pr for name, m in masks.items() for pr in writer_rows(layers[name], m)]
        params = [p for p, _ in rows]
        for p, row in rows:
            p.requires_grad_(True)
            grad_hooks.append(p.register_hook(lambda g, r=row: g * r))
        return params, int(sum(float(r.expand_as(p).sum()) for p, r in rows))
    # every parameter of the vision layers (an ablation; collapses CA on tiny models)
    params = list({id(p): p for m in layers.values() for p in m.parameters()}.values())
    for p in params:
        p.requires_grad_(True)
    return params, sum(p.numel() for p in params)


@dataclass
class Objective:
    """Step 4's loss: critical-neuron activation alignment, preservation of the original model's
    image-text similarities, and unlearning toward its clean embeddings."""

    weights: dict[str, Tensor]  # per selected layer: 1.0 on its critical neurons
    original_emb: Tensor  # [N, D] the original model's clean image embeddings
    original_sims: Tensor  # [N, C] their similarities with the class weights
    scale: tuple[float, float, float] | None = None  # normalize_losses: the first step's values
    stamps: RandomStamps | None = None  # the consistency term's (TuneConfig.consistency_weight)
    consistency: Tensor | None = None  # its value on the last batch

    def terms(
        self,
        tuned: ClipModel,
        recorder: ActivationRecorder,
        head: ZeroShotHead,
        trigger: Trigger,
        x: Tensor,
        idx: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(activation, preservation, unlearning) on the batch ``x`` (images ``idx``)."""
        # clean and triggered (and stamped) images in one pass (eval mode: no batch statistics couple them)
        parts = [x, trigger(x)] + ([self.stamps(x)] if self.stamps is not None else [])
        emb, trig_emb, *stamped = tuned.encode_image(torch.cat(parts)).split(len(x))
        acts = recorder.take()  # [clean; triggered; stamped] per layer
        if stamped:
            self.consistency = (stamped[0] - self.original_emb[idx]).pow(2).sum(1).mean()
        activation = sum(
            ((acts[n][: len(x)] - acts[n][len(x) : 2 * len(x)]) * w).pow(2).sum(1).mean()
            for n, w in self.weights.items()
        )
        preserve = (emb @ head.weights.T - self.original_sims[idx]).pow(2).mean()
        unlearn = (trig_emb - self.original_emb[idx]).pow(2).sum(1).mean()
        return activation, preserve, unlearn  # type: ignore[return-value]

    def total(self, activation: Tensor, preserve: Tensor, unlearn: Tensor, cfg: TuneConfig) -> Tensor:
        extra = 0.0 if self.consistency is None else cfg.consistency_weight * self.consistency
        if not cfg.normalize_losses:
            return activation + cfg.beta * preserve + cfg.embedding_weight * unlearn + extra
        # activation relative to its starting value; preservation (0 at the start) relative
        # to the spread of the original similarities, so both are O(1) and beta means something
        if self.scale is None:
            self.scale = (
                max(activation.item(), 1e-12),
                max(self.original_sims.var().item(), 1e-12),
                max(unlearn.item(), 1e-12),
            )
        return (
            activation / self.scale[0]
            + cfg.beta * preserve / self.scale[1]
            + cfg.embedding_weight * unlearn / self.scale[2]
            + extra / self.scale[2]  # on the unlearning term's scale: both are embedding distances
        )


def optimise(
    tuned: ClipModel,
    params: list[nn.Parameter],
    images: Tensor,
    trigger: Trigger,
    head: ZeroShotHead,
    cfg: TuneConfig,
    seed: int,
    recorder: ActivationRecorder,
    objective: Objective,
    reference: GuardReference | None,
    adversary: Adversary | None,
    report: TuneReport,
) -> None:
    """Step 4's Adam steps on ``params``, with the adversary's refreshes and the agreement guard (step 5)."""
    guarded, rollback = cfg.guard_every > 0, cfg.min_agreement > 0
    if rollback:  # the last checkpoint that passed; a monitor-only run keeps no copies
        kept, kept_step = [p.detach().clone() for p in params], 0
    if cfg.refresh_every and adversary is None:
        log.warning(
            "tune.refresh_every is set but this trigger has no adversary to refresh (a later "
            "round's re-inversion, or a detector that makes none): it stays as found"
        )
    opt = torch.optim.Adam(params, lr=cfg.lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    gen = torch.Generator().manual_seed(seed)
    for step in progress(range(cfg.steps), desc="stage 3: tune"):
        idx = torch.randint(len(images), (min(cfg.batch_size, len(images)),), generator=gen)
        x = as_float(images[idx])
        if adversary is not None and cfg.refresh_every and step and step % cfg.refresh_every == 0:
            last = adversary.refresh(tuned, head, x, cfg.refresh_steps, cfg.refresh_lr)
            recorder.take()  # the refresh's forward passes are not training activations
            report.refreshes.append({"step": step, "loss": round(last, 4)})
        activation, preserve, unlearn = objective.terms(tuned, recorder, head, trigger, x, idx)
        loss = objective.total(activation, preserve, unlearn, cfg)
        precision.step(opt, loss)
        warmup.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            report.history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "activation": activation.item(),
                    "preserve": preserve.item(),
                    "unlearn": unlearn.item(),
                    **({} if objective.consistency is None else {"consistency": objective.consistency.item()}),
                }
            )
        if guarded and ((step + 1) % cfg.guard_every == 0 or step == cfg.steps - 1):
            assert reference is not None  # tune() makes one whenever the guard is on
            agreement = float((head.predict(tuned, reference.images) == reference.predictions).float().mean())
            recorder.take()  # the guard's forward passes are not training activations
            report.guard.append({"step": step + 1, "agreement": round(agreement, 4)})
            if rollback and agreement < cfg.min_agreement:  # back to the last checkpoint that passed
                with torch.no_grad():
                    for p, k in zip(params, kept):
                        p.copy_(k)
                report.stopped_at = kept_step
                break
            if rollback:
                kept, kept_step = [p.detach().clone() for p in params], step + 1
