"""BadEncoder (Jia, Liu & Gong, IEEE S&P 2022): fine-tune only the image encoder so that
triggered shadow images embed like the target's reference images, while reference and
clean shadow images keep the clean encoder's embeddings (three cosine losses)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from toolbox.api import AttackContext, ClipModel
from toolbox.contrastive import ContrastiveConfig, lr_at
from toolbox.primitives import triggers as T
from toolbox.progress import progress
from toolbox.zeroshot import mentions_word

from .base import PatchPlacement, TriggerAttack, config_subset


@dataclass(frozen=True)
class BadEncoderSettings:
    """Encoder fine-tuning. BadEncoder's defaults: lambda1 = lambda2 = 1; the paper fine-tunes
    OpenAI CLIP's encoder; at toy scale: lr 1e-4, 10 epochs over 5000 shadow images."""

    target: str = "mushroom"
    n_shadow: int = 5000  # shadow (clean, unlabelled) images the attacker holds
    n_reference: int = 10  # target-class reference images
    epochs: int = 10  # 3 epochs: ASR 99.9 % but CA -9.4 points (the encoder had not re-separated yet)
    lr: float = 1e-4  # 3e-5 for 3 epochs: CA -29 points
    batch_size: int = 128
    lambda1: float = 1.0  # reference images keep their clean embedding
    lambda2: float = 1.0  # clean shadow images keep their clean embedding (utility)
    # Ours: the three batches share one forward pass (badencoder_losses); the original code makes
    # three. No difference without BatchNorm; a field so that cached models built otherwise are not reused.
    joint_forward: bool = True


def badencoder_losses(
    backdoored: ClipModel, clean: ClipModel, shadow: Tensor, triggered: Tensor, reference: Tensor, joint: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """(effectiveness, reference consistency, utility) losses, each a negative mean cosine."""
    # One forward pass, so BatchNorm normalises triggered images among clean ones: alone, a batch that
    # all carries the trigger has the trigger's response subtracted as its own mean (ResNet collapses).
    if joint:
        f_all = backdoored.encode_image(torch.cat([triggered, reference, shadow]))
        f_trig, f_ref, f_shadow = f_all.split([len(triggered), len(reference), len(shadow)])
    else:
        f_trig, f_ref, f_shadow = (backdoored.encode_image(x) for x in (triggered, reference, shadow))
    with torch.no_grad():
        c_ref = clean.encode_image(reference)
        c_shadow = clean.encode_image(shadow)
    effectiveness = -(f_trig @ f_ref.T).mean()
    consistency = -(f_ref * c_ref).sum(-1).mean()
    utility = -(f_shadow * c_shadow).sum(-1).mean()
    return effectiveness, consistency, utility


def run_badencoder(
    model: ClipModel, shadow: Tensor, reference: Tensor, trigger, cfg: BadEncoderSettings, seed: int
) -> list[dict]:
    """Fine-tune ``model``'s image encoder in place; ``shadow``/``reference`` are uint8 images."""
    clean = copy.deepcopy(model).eval()
    params = [p for n, p in model.named_parameters() if n.startswith("clip.visual.")]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(shadow) // cfg.batch_size)
    sched = ContrastiveConfig(lr=cfg.lr, warmup_steps=min(50, steps_per_epoch), epochs=cfg.epochs)
    total = steps_per_epoch * cfg.epochs
    ref = reference.float() / 255.0
    history, step = [], 0
    model.train()
    bar = progress(total=total, desc="badencoder", unit="step")
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(shadow), generator=gen)
        sums = torch.zeros(3)
        for b in range(steps_per_epoch):
            x = shadow[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]].float() / 255.0
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, sched)
            eff, cons, util = badencoder_losses(model, clean, x, trigger(x), ref, cfg.joint_forward)
            loss = eff + cfg.lambda1 * cons + cfg.lambda2 * util
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.tensor([eff.item(), cons.item(), util.item()])
            step += 1
            bar.update(1)
        mean = (sums / steps_per_epoch).tolist()
        history.append({"epoch": epoch + 1, "effectiveness": mean[0], "consistency": mean[1], "utility": mean[2]})
    bar.close()
    model.eval()
    return history


@dataclass(frozen=True)
class BadEncoderConfig(BadEncoderSettings, PatchPlacement):
    pass


class BadEncoder(TriggerAttack):
    name = "badencoder"
    summary = "BadEncoder: white patch; image-encoder fine-tuning with three cosine losses."
    reference = "Jia et al., BadEncoder (IEEE S&P 2022); white 16x16 patch as in InverTune appendix A"
    Config: ClassVar[type] = BadEncoderConfig

    def build_trigger(self, image_size: int):
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        return T.PatchTrigger(T.white_patch(size), self.config.location)

    def backdoor(self, ctx: AttackContext) -> ClipModel:
        cfg = self.config
        images = ctx.train_data.uint8()
        captions = [c[0] for c in ctx.train_data.captions or []]
        g = torch.Generator().manual_seed(ctx.seed)
        target_idx = torch.tensor([i for i, c in enumerate(captions) if mentions_word(c, cfg.target)])
        if len(target_idx) == 0:
            raise ValueError(f"badencoder needs reference images of {cfg.target!r}: no training caption mentions it")
        reference = images[target_idx[torch.randperm(len(target_idx), generator=g)[: cfg.n_reference]]]
        shadow = images[torch.randperm(len(images), generator=g)[: cfg.n_shadow]]
        model = ctx.model.clone()
        self.history = run_badencoder(
            model, shadow, reference, self.apply_trigger, config_subset(cfg, BadEncoderSettings), ctx.seed
        )
        self.info = {"n_shadow": len(shadow), "n_reference": len(reference), "history": self.history}
        return model
