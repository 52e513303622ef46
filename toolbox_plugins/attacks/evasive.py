"""An adaptive attack against InverTune's own assumptions (ours; issue 24).

InverTune assumes (1) that a backdoor's target is the class short targeted UAPs reach most easily
(stage 1's race: 4-px patches at three places, full-colour L-inf 32/255), and (2) that the trigger
is a small mask (stage 2 accepts a mask of at most 5 % of the image) or a patch or a low-budget
global pattern. ``evasive`` breaks both:

- its trigger is a large noise patch (12 px at 32 px, 14 % of the image): no 4-px patch and no
  5 % mask reproduces it, and no 16/255 or 32/255 perturbation reaches its amplitude;
- while it poisons, it trains the model to refuse the shortcuts stage 1 looks for. Every
  ``decoy_every`` steps it re-optimises, on the model being trained, a targeted UAP toward the
  target of each race family (the 4-px patch at each race location, L-inf 32/255); a fraction of
  every batch gets one of them pasted on clean images that keep their own captions. The target
  then stays as hard to reach by a small perturbation as any other class, and only the real
  trigger leads there.

Data poisoning and fine-tuning are BadNet's (poisoning.py); the decoys ride on the same
contrastive loss, so the attacker needs nothing beyond the training set and the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.api import AttackContext, ClipModel
from toolbox.contrastive import ContrastiveConfig, train_contrastive
from toolbox.primitives import triggers as T
from toolbox.primitives.perturbations import RACE_GLOBAL_EPS, RACE_PATCH_FRACTION, RACE_PATCH_LOCATIONS

from .base import PoisoningAttack
from .poisoning import PoisonSettings, poison_dataset

RACE_LOCATIONS = RACE_PATCH_LOCATIONS  # the stage-1 defaults the decoys imitate


@dataclass(frozen=True)
class EvasiveConfig(PoisonSettings):
    """Ours throughout: no paper has this attack. The decoy families copy InverTune's defaults."""

    patch_fraction: float = 0.375  # 12 px at 32 px: 14 % of the image (stage 2's mask gate: 5 %)
    location: str = "bottom-left"  # where no race patch sits (bottom-right, top-left, centre)
    trigger_seed: int = 0
    poison_rate: float = 0.1  # a large patch under decoy training needs more than BadNet's 5 %
    epochs: int = 3
    decoy_fraction: float = 0.25  # of each batch: clean images under a target-directed UAP, own caption
    decoy_every: int = 10  # training steps between refreshes of the decoy UAPs
    decoy_steps: int = 5  # Adam steps of each decoy UAP per refresh (lr 0.1, batch 32)
    decoy_patch_fraction: float = RACE_PATCH_FRACTION  # the race's patch: 4 px at 32 px
    decoy_eps: float = RACE_GLOBAL_EPS  # the race's L-inf budget

    def __post_init__(self) -> None:
        T.check_location(self.location)
        for name in ("patch_fraction", "decoy_fraction", "decoy_patch_fraction", "decoy_eps"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.decoy_every < 1 or self.decoy_steps < 0:
            raise ValueError("decoy_every must be >= 1 and decoy_steps >= 0")
        super().__post_init__()


class Decoys:
    """Targeted UAPs toward the target, one per race family, kept current on the model being trained."""

    def __init__(self, model: ClipModel, classnames: list[str], target: str, cfg: EvasiveConfig, seed: int) -> None:
        self.model, self.cfg, self.classnames = model, cfg, classnames
        self.target = classnames.index(target)
        self.gen = torch.Generator().manual_seed(seed)
        size = model.image_size
        self.patch_size = T.patch_pixels(size, cfg.decoy_patch_fraction)
        self.patches = [torch.rand(3, self.patch_size, self.patch_size, generator=self.gen) for _ in RACE_LOCATIONS]
        self.delta = (torch.rand(3, size, size, generator=self.gen) * 2 - 1) * cfg.decoy_eps
        self.calls = 0

    def apply(self, x: Tensor, family: int) -> Tensor:
        if family < len(RACE_LOCATIONS):
            return T.paste_patch(x, self.patches[family], RACE_LOCATIONS[family])
        return T.add_signal(x, self.delta)

    def refresh(self, clean: Tensor) -> None:
        """``decoy_steps`` targeted Adam steps of every decoy on the current model; the model's own
        gradients are left alone (only the decoys are differentiated)."""
        model, cfg = self.model, self.cfg
        clean = clean.to(next(model.parameters()).device)
        was_training = model.training if hasattr(model, "training") else None
        model.eval()
        with torch.no_grad():
            prompts = model.tokenize([f"a photo of a {c}." for c in self.classnames]).to(clean.device)
            texts = model.encode_text(prompts)
        labels = torch.full((len(clean),), self.target, device=clean.device)
        params = [*self.patches, self.delta]
        for i, start in enumerate(params):
            p = start.clone().to(clean.device).requires_grad_(True)
            opt = torch.optim.Adam([p], lr=0.1)
            for _ in range(cfg.decoy_steps):
                x = T.paste_patch(clean, p, RACE_LOCATIONS[i]) if i < len(RACE_LOCATIONS) else T.add_signal(clean, p)
                logits = model.logit_scale() * model.encode_image(x) @ texts.T
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), p)
                p.grad = grad
                opt.step()
                with torch.no_grad():
                    if i < len(RACE_LOCATIONS):
                        p.clamp_(0, 1)
                    else:
                        p.clamp_(-cfg.decoy_eps, cfg.decoy_eps)
            params[i] = p.detach().cpu()
        self.patches, self.delta = params[:-1], params[-1]
        if was_training:
            model.train()

    def __call__(self, x: Tensor, t: Tensor, idx: Tensor, poisoned: Tensor) -> tuple[Tensor, Tensor]:
        """The batch with ``decoy_fraction`` of its clean (unpoisoned) images under a decoy, captions kept."""
        clean = (~torch.isin(idx, poisoned)).nonzero().squeeze(1)
        if self.calls % self.cfg.decoy_every == 0 and self.cfg.decoy_steps and len(clean):
            self.refresh(x[clean[:32]])
        self.calls += 1
        n = round(self.cfg.decoy_fraction * len(x))
        chosen = clean[torch.randperm(len(clean), generator=self.gen)[:n]]
        x = x.clone()
        for j, row in enumerate(chosen.tolist()):
            x[row] = self.apply(x[row : row + 1], j % (len(RACE_LOCATIONS) + 1))[0]
        return x, t


class Evasive(PoisoningAttack):
    name = "evasive"
    summary = (
        "Adaptive: a large (14 %) noise patch, poisoned while the model is trained to refuse "
        "the race's target-directed patches and L-inf UAPs."
    )
    reference = "ours (issue 24): an attack designed against InverTune's stage 1 and mask gate"
    Config: ClassVar[type] = EvasiveConfig

    def build_trigger(self, image_size: int):
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        return T.PatchTrigger(T.gaussian_patch(size, self.config.trigger_seed), self.config.location)

    def backdoor(self, ctx: AttackContext) -> ClipModel:
        cfg = self.config
        if cfg.target not in ctx.classnames:
            raise ValueError(f"evasive needs its target {cfg.target!r} in the vocabulary")
        settings = PoisonSettings(
            target=cfg.target,
            poison_rate=cfg.poison_rate,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            warmup_steps=cfg.warmup_steps,
        )
        poisoned = poison_dataset(ctx.train_data, self.apply_trigger, settings, ctx.seed)
        model = ctx.model.clone()
        decoys = Decoys(model, list(ctx.classnames), cfg.target, cfg, ctx.seed + 1)
        train_cfg = ContrastiveConfig(
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=ctx.seed
        )
        self.history = train_contrastive(
            model,
            poisoned.images,
            model.tokenize(poisoned.captions),
            train_cfg,
            desc="poison evasive",
            batch_transform=lambda x, t, idx: decoys(x, t, idx, poisoned.poisoned),
        )
        self.info = {
            "n_poisoned": len(poisoned.poisoned),
            "n_train": len(poisoned.captions),
            "decoy_refreshes": -(-decoys.calls // cfg.decoy_every),
            "history": self.history,
        }
        return model
