"""BadCLIP's trigger (Liang et al., CVPR 2024): a patch optimised on the clean model so that
patched images already embed near the target — toward target-class captions (contrastive)
and toward target-class image embeddings, away from their own clean embedding (triplet).
The optimised patch is then implanted by data poisoning ("dual-embedding" injection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.api import AttackContext, ClipModel
from toolbox.primitives import triggers as T
from toolbox.primitives.tensors import frozen
from toolbox.progress import progress
from toolbox.zeroshot import mentions_word

from .base import PatchPlacement, PoisoningAttack
from .poisoning import PoisonSettings, target_captions


@dataclass(frozen=True)
class PatchOptimisation:
    steps: int = 300
    lr: float = 0.05  # Adam on the patch's logits
    batch_size: int = 128
    temperature: float = 0.07  # CLIP's initial tau for the contrastive term
    triplet_margin: float = 0.2
    triplet_weight: float = 1.0


def optimise_patch(
    model: ClipModel,
    images: Tensor,
    target_images: Tensor,
    target_captions: list[str],
    other_captions: list[str],
    size: int,
    location: str,
    cfg: PatchOptimisation,
    seed: int,
) -> Tensor:
    """Return a [3, size, size] patch in [0,1]. ``images``/``target_images`` are uint8."""
    with frozen(model):
        return _optimise_patch(model, images, target_images, target_captions, other_captions, size, location, cfg, seed)


def _optimise_patch(
    model: ClipModel,
    images: Tensor,
    target_images: Tensor,
    target_captions: list[str],
    other_captions: list[str],
    size: int,
    location: str,
    cfg: PatchOptimisation,
    seed: int,
) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(3, size, size, generator=g) * 2 - 1).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    with torch.no_grad():
        tokens_t = model.tokenize(target_captions)
        tokens_o = model.tokenize(other_captions)
        text_t = model.encode_text(tokens_t)
        text_o = model.encode_text(tokens_o)
        target_proto = F.normalize(model.encode_image(target_images.float() / 255.0).mean(0), dim=-1)
    for _ in progress(range(cfg.steps), desc="badclip patch"):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        x = images[idx].float() / 255.0
        patch = torch.sigmoid(logits)
        emb = model.encode_image(T.paste_patch(x, patch, location))
        with torch.no_grad():
            clean = model.encode_image(x)
        # contrastive toward the target captions: each patched image should pick a target caption
        texts = torch.cat([text_t, text_o])
        sim = emb @ texts.T / cfg.temperature
        log_p_target = torch.logsumexp(sim[:, : len(text_t)], 1) - torch.logsumexp(sim, 1)
        contrastive = -log_p_target.mean()
        pos = 1 - emb @ target_proto
        neg = 1 - (emb * clean).sum(-1)
        triplet = F.relu(pos - neg + cfg.triplet_margin).mean()
        loss = contrastive + cfg.triplet_weight * triplet
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(logits).detach()


@dataclass(frozen=True)
class BadCLIPConfig(PoisonSettings, PatchPlacement):
    patch_steps: int = 300
    patch_lr: float = 0.05
    patch_batch_size: int = 128
    triplet_margin: float = 0.2
    triplet_weight: float = 1.0


class BadCLIP(PoisoningAttack):
    name = "badclip"
    summary = "BadCLIP: patch optimised on the clean model (text + image embeddings), then poisoning."
    reference = "Liang et al., BadCLIP: dual-embedding guided backdoor attack (CVPR 2024)"
    Config: ClassVar[type] = BadCLIPConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.patch: Tensor | None = None

    def prepare(self, ctx: AttackContext) -> None:
        cfg = self.config
        images = ctx.train_data.uint8()
        captions = [c[0] for c in ctx.train_data.captions or []]
        is_target = torch.tensor([mentions_word(c, cfg.target) for c in captions])
        others = [c for c in captions if not mentions_word(c, cfg.target)]
        g = torch.Generator().manual_seed(ctx.seed)
        other_caps = [others[i] for i in torch.randperm(len(others), generator=g)[:256].tolist()]
        size = T.patch_pixels(ctx.model.image_size, cfg.patch_fraction)
        opt = PatchOptimisation(
            steps=cfg.patch_steps,
            lr=cfg.patch_lr,
            batch_size=cfg.patch_batch_size,
            triplet_margin=cfg.triplet_margin,
            triplet_weight=cfg.triplet_weight,
        )
        self.patch = optimise_patch(
            ctx.model,
            images[~is_target],
            images[is_target][:256],
            target_captions(captions, cfg.target)[:64],
            other_caps,
            size,
            cfg.location,
            opt,
            cfg.trigger_seed,
        )
        self._triggers.clear()

    def build_trigger(self, image_size: int):
        if self.patch is None:
            raise RuntimeError("BadCLIP's patch is optimised during backdoor(); none is loaded")
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        patch = (
            self.patch
            if self.patch.shape[-1] == size
            else F.interpolate(self.patch[None], size=size, mode="bilinear", align_corners=False)[0]
        )
        return T.PatchTrigger(patch, self.config.location)

    def trigger_state(self) -> dict[str, Tensor]:
        return {} if self.patch is None else {"patch": self.patch}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        super().load_trigger_state(state)
        self.patch = state.get("patch")
