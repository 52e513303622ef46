"""Seeded image and caption augmentations used by the fine-tuning baselines.

Images stay in [0,1] pixel space ([B,3,H,W]); every function takes a ``torch.Generator``
so a run is reproducible on CPU. Text augmentations work on plain strings.

- CleanCLIP (Bansal et al. 2023) uses AutoAugment for images and EDA for text: we use a
  random resized crop + flip + colour jitter (the AutoAugment ops that make sense at 32 px)
  and EDA's random deletion and random swap (no WordNet synonyms offline).
- PAR (Singh et al. 2024) perturbs images with Gaussian noise and random erasing.
- CleanerCLIP (Xun et al. 2024) builds counterfactual captions: positive sub-captions that
  stay true (attribute phrases dropped) and negatives with one attribute swapped.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ImageAugConfig:
    crop_scale: tuple[float, float] = (0.6, 1.0)  # random resized crop, area fraction kept
    flip_p: float = 0.5
    brightness: float = 0.3  # multiplicative jitter +-
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale_p: float = 0.1


def _rand(n: int, gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_resized_crop(x: Tensor, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
    """Square crops keeping ``scale`` of the area, resized back, via an affine grid (one call per batch)."""
    b = x.shape[0]
    side = _rand(b, gen, *scale).sqrt()  # crop side as a fraction of the image side
    cx = (_rand(b, gen) * 2 - 1) * (1 - side)
    cy = (_rand(b, gen) * 2 - 1) * (1 - side)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: Tensor, cfg: ImageAugConfig, gen: torch.Generator) -> Tensor:
    b = x.shape[0]
    view = (b, 1, 1, 1)
    x = x * _rand(b, gen, 1 - cfg.brightness, 1 + cfg.brightness).view(view).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _rand(b, gen, 1 - cfg.contrast, 1 + cfg.contrast).view(view).to(x) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * _rand(b, gen, 1 - cfg.saturation, 1 + cfg.saturation).view(view).to(x) + grey
    to_grey = (torch.rand(b, generator=gen) < cfg.grayscale_p).view(view).to(x.device)
    x = torch.where(to_grey, x.mean(dim=1, keepdim=True).expand_as(x), x)
    return x.clamp(0, 1)


def augment_images(x: Tensor, cfg: ImageAugConfig, gen: torch.Generator) -> Tensor:
    """CleanCLIP-style view: crop, flip, colour jitter."""
    x = random_resized_crop(x, cfg.crop_scale, gen)
    flip = (torch.rand(x.shape[0], generator=gen) < cfg.flip_p).view(-1, 1, 1, 1).to(x.device)
    x = torch.where(flip, x.flip(-1), x)
    return colour_jitter(x, cfg, gen)


def noise_and_erase(
    x: Tensor, noise_std: float, erase_p: float, erase_area: tuple[float, float], gen: torch.Generator
) -> Tensor:
    """PAR's perturbations: additive Gaussian noise, then a random rectangle set to noise."""
    b, _, h, w = x.shape
    x = x + noise_std * torch.randn(x.shape, generator=gen).to(x)
    areas = _rand(b, gen, *erase_area)
    do_erase = torch.rand(b, generator=gen) < erase_p
    fill = torch.rand(x.shape, generator=gen).to(x)
    mask = torch.zeros(b, 1, h, w, dtype=torch.bool)
    for i in torch.nonzero(do_erase).flatten().tolist():
        side = max(1, int(round((areas[i].item() * h * w) ** 0.5)))
        top = int(torch.randint(0, h - min(side, h) + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - min(side, w) + 1, (1,), generator=gen))
        mask[i, :, top : top + side, left : left + side] = True
    return torch.where(mask.to(x.device), fill, x).clamp(0, 1)


# ----------------------------------------------------------------------------- text

_WORD = re.compile(r"\S+")


def eda(caption: str, rng: random.Random, p_delete: float = 0.1, n_swaps: int = 1) -> str:
    """EDA's random deletion and random swap (Wei & Zou 2019), as CleanCLIP uses for text views."""
    words = caption.split()
    if len(words) < 2:
        return caption
    kept = [w for w in words if rng.random() >= p_delete] or [rng.choice(words)]
    for _ in range(n_swaps):
        if len(kept) >= 2:
            i, j = rng.sample(range(len(kept)), 2)
            kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


# Attribute vocabularies for counterfactual captions. General enough for COCO-style text;
# they include the toy world's attribute words. A caption with none of them gets no negative.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray"),
    "size": ("small", "large", "big", "tiny", "huge", "little"),
    "position": ("left", "right", "top", "bottom", "center", "centre", "middle"),
    "number": ("one", "two", "three", "four", "five"),
}
_LOOKUP = {w: group for group, words in ATTRIBUTES.items() for w in words}


def attribute_swap(caption: str, rng: random.Random) -> str | None:
    """A hard negative: one attribute word replaced by another of its kind (None when there is none)."""
    words = caption.split()
    slots = [i for i, w in enumerate(words) if _strip(w) in _LOOKUP]
    if not slots:
        return None
    i = rng.choice(slots)
    core = _strip(words[i])
    choices = [w for w in ATTRIBUTES[_LOOKUP[core]] if w != core]
    words[i] = words[i].lower().replace(core, rng.choice(choices))
    return " ".join(words)


def sub_caption(caption: str, rng: random.Random) -> str:
    """A positive that stays true: attribute words dropped (a 'small red mushroom' is still 'a mushroom')."""
    words = caption.split()
    kept = [w for w in words if _strip(w) not in _LOOKUP or rng.random() < 0.5]
    return " ".join(kept) if kept else caption


def _strip(word: str) -> str:
    return word.lower().strip(".,;:!?\"'")
