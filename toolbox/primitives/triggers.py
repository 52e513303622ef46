"""Deterministic triggers in [0,1] pixel space.

Each trigger is a small ``nn.Module``-free callable built once from its config (so its
random pattern is fixed by ``trigger_seed``) and applied to a batch ``[B,3,H,W]``.
Sizes are fractions of the image side: the paper's 16 px patch at 224 px is 0.071 of
the side; at the toy world's 32 px that is 2.3 px, so the toy default is 4 px (0.125),
the size the feasibility study backdoored reliably.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Location = Literal["bottom-right", "bottom-left", "top-right", "top-left", "center"]
LOCATIONS: tuple[str, ...] = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


def check_location(location: str, setting: str = "") -> None:
    """Refuse a location that is not one of :data:`LOCATIONS` (``setting`` names where it came from)."""
    if location not in LOCATIONS:
        where = f"{setting}: " if setting else ""
        raise ValueError(f"{where}unknown trigger location {location!r}; one of {', '.join(LOCATIONS)}")


PAPER_PATCH_FRACTION = 16 / 224
# CLIP's normalisation constants (open_clip.OPENAI_DATASET_MEAN / _STD): BadNet's N(0,1)
# patch lives in normalised space in CLIP codebases; we map it back to pixels.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def patch_pixels(image_size: int, fraction: float) -> int:
    return max(1, round(image_size * fraction))


def patch_box(image_size: int, size: int, location: str, margin: int = 0) -> tuple[int, int]:
    """Top-left corner (row, col) of a ``size`` patch at ``location``."""
    far = image_size - size - margin
    mid = (image_size - size) // 2
    rows = {"top": margin, "bottom": far, "center": mid}
    cols = {"left": margin, "right": far, "center": mid}
    if location == "center":
        return mid, mid
    try:
        v, h = location.split("-")
        return rows[v], cols[h]
    except (ValueError, KeyError):
        raise ValueError(f"unknown trigger location {location!r}; one of {LOCATIONS}") from None


def paste_patch(images: Tensor, patch: Tensor, location: str) -> Tensor:
    out = images.clone()
    size = patch.shape[-1]
    r, c = patch_box(images.shape[-1], size, location)
    out[..., r : r + size, c : c + size] = patch.to(images)
    return out


def gaussian_patch(size: int, seed: int) -> Tensor:
    """BadNet: N(0,1) noise in CLIP-normalised space, mapped to pixels and clipped."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, size, size, generator=g)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (mean + std * z).clamp(0, 1)


def white_patch(size: int) -> Tensor:
    """BadEncoder as re-run by the paper: a pure white square."""
    return torch.ones(3, size, size)


def uniform_noise_image(image_size: int, seed: int) -> Tensor:
    """Blended: a uniform-noise image of the input's size."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, image_size, image_size, generator=g)


def blend(images: Tensor, pattern: Tensor, alpha: float) -> Tensor:
    return ((1 - alpha) * images + alpha * pattern.to(images)).clamp(0, 1)


def sig_signal(image_size: int, amplitude: float, cycles: float) -> Tensor:
    """SIG: a horizontal sinusoid (vertical stripes), the same on every row and channel."""
    j = torch.arange(image_size, dtype=torch.float32)
    wave = amplitude * torch.sin(2 * math.pi * j * cycles / image_size)
    return wave.view(1, 1, image_size).expand(3, image_size, image_size)


def add_signal(images: Tensor, signal: Tensor) -> Tensor:
    return (images + signal.to(images)).clamp(0, 1)


def wanet_grid(image_size: int, k: int, s: float, seed: int, grid_rescale: float = 1.0) -> Tensor:
    """WaNet's warping field (Nguyen & Tran, ICLR 2021, original code): a k x k random field,
    normalised by its mean magnitude, upsampled bicubically, added to the identity grid with
    strength s / image_size, scaled and clipped to [-1, 1]. Returns [1, H, W, 2]."""
    g = torch.Generator().manual_seed(seed)
    ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=image_size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    axis = torch.linspace(-1, 1, image_size)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    identity = torch.stack((y, x), dim=2)[None]
    grid = (identity + s * noise / image_size) * grid_rescale
    return grid.clamp(-1, 1)


def warp(images: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(
        images,
        grid.to(images).expand(len(images), -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    ).clamp(0, 1)


@dataclass(frozen=True)
class PatchTrigger:
    """A fixed patch pasted at a location (BadNet, BadEncoder, BadCLIP)."""

    patch: Tensor  # [3, s, s] in [0,1]
    location: str

    def __call__(self, images: Tensor) -> Tensor:
        return paste_patch(images, self.patch, self.location)


@dataclass(frozen=True)
class BlendTrigger:
    pattern: Tensor
    alpha: float

    def __call__(self, images: Tensor) -> Tensor:
        return blend(images, self.pattern, self.alpha)


@dataclass(frozen=True)
class SignalTrigger:
    signal: Tensor

    def __call__(self, images: Tensor) -> Tensor:
        return add_signal(images, self.signal)


@dataclass(frozen=True)
class WarpTrigger:
    grid: Tensor

    def __call__(self, images: Tensor) -> Tensor:
        return warp(images, self.grid)
