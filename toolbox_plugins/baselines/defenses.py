"""The paper's four baselines (Table 1, appendix B) as defense plugins.

Each fine-tunes a copy of the suspect model on clean image-caption pairs; they differ only
in the per-batch loss. Defaults: the paper's values where the paper gives them (recorded in
the config comments), and the toy world's where a tiny CLIP needs another.

- ``ft``: CLIP's contrastive loss on clean pairs (Bansal et al. 2023, "FT").
- ``cleanclip``: + in-modal self-supervised InfoNCE between each image and an augmented view,
  and each caption and an EDA view (Bansal et al. 2023), weights 1 and 1.
- ``cleanerclip``: CleanCLIP + counterfactual text: an image must match a positive
  sub-caption against the batch's captions plus attribute-swapped hard negatives (Xun et al. 2024).
- ``par``: CLIP loss on perturbed pairs minus a thresholded push of the embeddings away from
  the suspect model's (Singh et al. 2024): L = L_CLIP - w * (d_img + d_txt), d = mean squared L2
  between normalised embeddings of the model being tuned and the frozen suspect, set to 0
  once it exceeds ``threshold``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox import precision
from toolbox.api import ClipModel, Defense, DefenseContext, DefenseOutcome
from toolbox.contrastive import BatchLoss, clip_loss, train_contrastive

from .augment import ImageAugConfig, attribute_swap, augment_images, eda, noise_and_erase, sub_caption
from .finetune import FinetuneConfig, PairSet, clean_pairs, rounded


@dataclass(frozen=True)
class FTConfig(FinetuneConfig):
    pass


@dataclass(frozen=True)
class CleanCLIPConfig(FinetuneConfig):
    clip_weight: float = 1.0  # paper 1
    ssl_weight: float = 1.0  # paper 1
    eda_delete_p: float = 0.1  # EDA's alpha
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)


@dataclass(frozen=True)
class CleanerCLIPConfig(CleanCLIPConfig):
    counterfactual_weight: float = 1.0  # weight of the sub-caption vs hard-negative InfoNCE term
    negatives_per_caption: int = 1  # attribute-swapped captions added to the text pool per pair


@dataclass(frozen=True)
class PARConfig(FinetuneConfig):
    push_weight: float = 0.5  # PAR's code: loss = clip - 0.5 * (img_l2 + text_l2)
    threshold: float = 0.5  # squared L2 (unit embeddings, 0..4) beyond which the push stops; toy-world value
    noise_std: float = 0.05  # Gaussian pixel noise on the perturbed view
    erase_p: float = 0.5  # probability of a random erasing rectangle
    erase_area: tuple[float, float] = (0.02, 0.2)  # its area, as a fraction of the image
    eda_delete_p: float = 0.1


def _encode_pair(model: ClipModel, images: Tensor, captions: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    tokens = model.tokenize(captions).to(images.device)
    return model(images, tokens)


def ft_loss(cfg: FTConfig) -> BatchLoss:
    def loss(
        model: ClipModel, x: Tensor, captions: list[str], gen: torch.Generator, rng: random.Random
    ) -> tuple[Tensor, dict[str, float]]:
        img, txt, scale = _encode_pair(model, x, captions)
        value = clip_loss(img, txt, scale)
        return value, {"clip": value.item()}

    return loss


def cleanclip_loss(cfg: CleanCLIPConfig) -> BatchLoss:
    def loss(
        model: ClipModel, x: Tensor, captions: list[str], gen: torch.Generator, rng: random.Random
    ) -> tuple[Tensor, dict[str, float]]:
        img, txt, scale = _encode_pair(model, x, captions)
        img_aug = model.encode_image(augment_images(x, cfg.image_aug, gen))
        txt_aug = model.encode_text(model.tokenize([eda(c, rng, cfg.eda_delete_p) for c in captions]).to(x.device))
        multimodal = clip_loss(img, txt, scale)
        in_modal = 0.5 * (clip_loss(img, img_aug, scale) + clip_loss(txt, txt_aug, scale))
        return cfg.clip_weight * multimodal + cfg.ssl_weight * in_modal, {
            "clip": multimodal.item(),
            "ssl": in_modal.item(),
        }

    return loss


def cleanerclip_loss(cfg: CleanerCLIPConfig) -> BatchLoss:
    base = cleanclip_loss(cfg)

    def loss(
        model: ClipModel, x: Tensor, captions: list[str], gen: torch.Generator, rng: random.Random
    ) -> tuple[Tensor, dict[str, float]]:
        value, stats = base(model, x, captions, gen, rng)
        positives = [sub_caption(c, rng) for c in captions]
        negatives = [
            n for c in captions for _ in range(cfg.negatives_per_caption) if (n := attribute_swap(c, rng)) is not None
        ]
        texts = model.encode_text(model.tokenize(positives + negatives).to(x.device))
        img = model.encode_image(x)
        logits = model.logit_scale() * img @ texts.T  # [B, B + negatives]: row i's positive is column i
        counterfactual = F.cross_entropy(logits, torch.arange(len(x), device=x.device))
        stats.update(counterfactual=counterfactual.item(), negatives=float(len(negatives)))
        return value + cfg.counterfactual_weight * counterfactual, stats

    return loss


def thresholded(distance: Tensor, threshold: float) -> Tensor:
    """PAR's cut-off: the push counts only while the embeddings are within ``threshold``."""
    return torch.where(distance > threshold, torch.zeros_like(distance), distance)


def par_loss(cfg: PARConfig, suspect: ClipModel) -> BatchLoss:
    def loss(
        model: ClipModel, x: Tensor, captions: list[str], gen: torch.Generator, rng: random.Random
    ) -> tuple[Tensor, dict[str, float]]:
        x_pert = noise_and_erase(x, cfg.noise_std, cfg.erase_p, cfg.erase_area, gen)
        texts = [eda(c, rng, cfg.eda_delete_p) for c in captions]
        img, txt, scale = _encode_pair(model, x_pert, texts)
        with torch.no_grad():
            img_ref, txt_ref, _ = _encode_pair(suspect, x_pert, texts)
        contrastive = clip_loss(img, txt, scale)
        d_img = (img - img_ref).pow(2).sum(1).mean()
        d_txt = (txt - txt_ref).pow(2).sum(1).mean()
        push = thresholded(d_img, cfg.threshold) + thresholded(d_txt, cfg.threshold)
        return contrastive - cfg.push_weight * push, {
            "clip": contrastive.item(),
            "d_img": d_img.item(),
            "d_txt": d_txt.item(),
        }

    return loss


class FinetuneDefense(Defense):
    """Fine-tune a copy of the suspect model on clean pairs with :meth:`batch_loss`."""

    uses_train_data = True

    def batch_loss(self, ctx: DefenseContext) -> BatchLoss:
        raise NotImplementedError

    def defend(self, ctx: DefenseContext) -> DefenseOutcome:
        cfg: FinetuneConfig = self.config
        start = time.perf_counter()
        pairs: PairSet = clean_pairs(ctx, cfg)
        model = ctx.model.clone()
        for p in model.parameters():
            p.requires_grad_(True)
        loss = self.batch_loss(ctx)
        prepared = time.perf_counter()
        with precision.autocast(cfg.precision, ctx.device):
            history = train_contrastive(
                model,
                pairs.images,
                pairs.captions,
                cfg.schedule(ctx.seed),
                desc=f"{self.name}: fine-tune",
                loss=loss,
                check_finite=True,
            )
        info: dict[str, Any] = {
            **pairs.describe(),
            "data_ratio": cfg.data_ratio,
            "reference_images": cfg.reference_images,
            "history": rounded(history),
        }
        return DefenseOutcome(
            model=model, info=info, timings_s={"prepare": prepared - start, "finetune": time.perf_counter() - prepared}
        )


class FT(FinetuneDefense):
    name = "ft"
    summary = "FT: contrastive fine-tuning on clean image-caption pairs."
    reference = "Bansal et al., CleanCLIP (ICCV 2023), FT baseline; InverTune appendix B"
    Config: ClassVar[type] = FTConfig

    def batch_loss(self, ctx: DefenseContext) -> BatchLoss:
        return ft_loss(self.config)


class CleanCLIP(FinetuneDefense):
    name = "cleanclip"
    summary = "CleanCLIP: contrastive + in-modal self-supervised fine-tuning with augmented views."
    reference = "Bansal et al., CleanCLIP (ICCV 2023); InverTune appendix B"
    Config: ClassVar[type] = CleanCLIPConfig

    def batch_loss(self, ctx: DefenseContext) -> BatchLoss:
        return cleanclip_loss(self.config)


class CleanerCLIP(FinetuneDefense):
    name = "cleanerclip"
    summary = "CleanerCLIP: CleanCLIP plus counterfactual sub-caption positives and attribute-swapped negatives."
    reference = "Xun et al., CleanerCLIP (arXiv 2409.17601, 2024); InverTune appendix B"
    Config: ClassVar[type] = CleanerCLIPConfig

    def batch_loss(self, ctx: DefenseContext) -> BatchLoss:
        return cleanerclip_loss(self.config)


class PAR(FinetuneDefense):
    name = "par"
    summary = "PAR (Perturb and Recover): CLIP loss minus a thresholded push away from the suspect's embeddings."
    reference = "Singh et al., Perturb and Recover (arXiv 2412.00727, 2024); InverTune appendix B"
    Config: ClassVar[type] = PARConfig

    def batch_loss(self, ctx: DefenseContext) -> BatchLoss:
        suspect = ctx.model.clone()
        suspect.eval()
        for p in suspect.parameters():
            p.requires_grad_(False)
        return par_loss(self.config, suspect)


BASELINES: tuple[type[Defense], ...] = (FT, CleanCLIP, CleanerCLIP, PAR)
