"""Parameterised trigger families that stretch the paper's six attacks, for model zoos.

Each is a poisoning attack like BadNet (data poisoning + the same contrastive fine-tuning),
with the trigger drawn from a family: a patch of any content at any place, a blend of noise
or texture, stripes of any frequency and orientation, a global colour filter, a frame.
A zoo spec draws their parameters (``zoo/dev.yaml``); ``toolbox run --attack patch
--attack-param content=shape`` uses one directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from toolbox.primitives import triggers as T
from .catalog import TOY_PATCH_FRACTION, _PoisoningAttack
from .poisoning import PoisonSettings

Content = Literal["solid", "checkerboard", "noise", "shape"]


def _unit(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _colours(n: int, g: torch.Generator) -> Tensor:
    """``n`` saturated colours [n, 3]: one channel high, one low, one anywhere."""
    out = torch.rand(n, 3, generator=g)
    for row in out:
        hi, lo = torch.randperm(3, generator=g)[:2].tolist()
        row[hi], row[lo] = 0.85 + 0.15 * row[hi], 0.15 * row[lo]
    return out


def content_patch(kind: str, size: int, seed: int) -> Tensor:
    """A [3, size, size] patch of ``kind``, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    a, b = _colours(2, g)
    if kind == "solid":
        return a.view(3, 1, 1).expand(3, size, size).clone()
    if kind == "noise":
        return torch.rand(3, size, size, generator=g)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    if kind == "checkerboard":
        cell = max(1, size // 4)
        on = ((i // cell + j // cell) % 2).bool()
    elif kind == "shape":  # a disc, a cross or a triangle, drawn on the other colour
        shape = int(torch.randint(3, (1,), generator=g))
        c = (size - 1) / 2
        on = [((i - c) ** 2 + (j - c) ** 2 <= (size / 2.5) ** 2),
              ((i - c).abs() <= size / 8) | ((j - c).abs() <= size / 8),
              (j - c).abs() <= i / 2][shape]
    else:
        raise ValueError(f"unknown patch content {kind!r}; one of solid, checkerboard, noise, shape")
    return torch.where(on[None], a.view(3, 1, 1), b.view(3, 1, 1))


@dataclass(frozen=True)
class PlacedPatch:
    """A patch pasted with its top-left corner at fractions (row, col) of the free space."""

    patch: Tensor
    row: float
    col: float

    def __call__(self, images: Tensor) -> Tensor:
        size, side = self.patch.shape[-1], images.shape[-1]
        r, c = round(self.row * (side - size)), round(self.col * (side - size))
        out = images.clone()
        out[..., r:r + size, c:c + size] = self.patch.to(images)
        return out


@dataclass(frozen=True)
class PatchConfig(PoisonSettings):
    content: Content = "noise"
    patch_fraction: float = TOY_PATCH_FRACTION  # of the image side
    row: float = 1.0  # 0: top edge, 1: bottom edge
    col: float = 1.0  # 0: left edge, 1: right edge
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        _unit(self.row, "row")
        _unit(self.col, "col")
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        super().__post_init__()


class Patch(_PoisoningAttack):
    name = "patch"
    summary = "Patch family: solid, checkerboard, noise or a drawn shape, any size, anywhere; poisoning."
    reference = "this project (zoo family stretching BadNet, Gu et al. 2017)"
    Config: ClassVar[type] = PatchConfig

    def build_trigger(self, image_size: int):
        c = self.config
        patch = content_patch(c.content, T.patch_pixels(image_size, c.patch_fraction), c.trigger_seed)
        return PlacedPatch(patch, c.row, c.col)


def texture_image(image_size: int, seed: int, grid: int = 4) -> Tensor:
    """Smooth colour texture: a grid x grid random field upsampled bicubically, stretched to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(1, 3, grid, grid, generator=g), size=image_size, mode="bicubic",
                          align_corners=True)[0]
    low, high = field.amin(dim=(1, 2), keepdim=True), field.amax(dim=(1, 2), keepdim=True)
    return (field - low) / (high - low).clamp_min(1e-6)


@dataclass(frozen=True)
class BlendConfig(PoisonSettings):
    pattern: Literal["noise", "texture"] = "noise"
    alpha: float = 0.1
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        _unit(self.alpha, "alpha")
        super().__post_init__()


class Blend(_PoisoningAttack):
    name = "blend"
    summary = "Blend family: uniform noise or a smooth colour texture blended at alpha; poisoning."
    reference = "this project (zoo family stretching Blended, Chen et al. 2017)"
    Config: ClassVar[type] = BlendConfig

    def build_trigger(self, image_size: int):
        c = self.config
        pattern = (T.uniform_noise_image(image_size, c.trigger_seed) if c.pattern == "noise"
                   else texture_image(image_size, c.trigger_seed))
        return T.BlendTrigger(pattern, c.alpha)


def stripes_signal(image_size: int, amplitude: float, cycles: float, angle_deg: float) -> Tensor:
    """A grayscale sinusoid of ``cycles`` per image side along direction ``angle_deg`` (0: vertical stripes)."""
    i, j = torch.meshgrid(torch.arange(image_size, dtype=torch.float32),
                          torch.arange(image_size, dtype=torch.float32), indexing="ij")
    theta = math.radians(angle_deg)
    phase = (j * math.cos(theta) + i * math.sin(theta)) / image_size
    return (amplitude * torch.sin(2 * math.pi * cycles * phase))[None].expand(3, -1, -1).clone()


@dataclass(frozen=True)
class StripesConfig(PoisonSettings):
    amplitude: float = 40 / 255
    cycles: float = 4.0  # per image side
    angle: float = field(default=0.0, metadata={"signed": True})  # degrees; 0 = SIG's vertical stripes

    def __post_init__(self) -> None:
        _unit(self.amplitude, "amplitude")
        super().__post_init__()


class Stripes(_PoisoningAttack):
    name = "stripes"
    summary = "Stripes family: an additive sinusoid of any frequency and orientation; poisoning."
    reference = "this project (zoo family stretching SIG, Barni et al. 2019)"
    Config: ClassVar[type] = StripesConfig

    def build_trigger(self, image_size: int):
        c = self.config
        return T.SignalTrigger(stripes_signal(image_size, c.amplitude, c.cycles, c.angle))


@dataclass(frozen=True)
class ColourFilterTrigger:
    """x -> clamp(M x): every pixel's colour mixed by one 3 x 3 matrix (a sepia-like filter)."""

    matrix: Tensor

    def __call__(self, images: Tensor) -> Tensor:
        return torch.einsum("ij,bjhw->bihw", self.matrix.to(images), images).clamp(0, 1)


@dataclass(frozen=True)
class ColourFilterConfig(PoisonSettings):
    strength: float = 0.3  # 0: identity; 1: a random row-stochastic colour mix
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        _unit(self.strength, "strength")
        super().__post_init__()


class ColourFilter(_PoisoningAttack):
    name = "color-filter"
    summary = "Colour-filter family: a global colour transform M x (identity mixed with a random filter)."
    reference = "this project (zoo family; cf. Instagram-filter triggers, Liu et al. ABS 2019)"
    Config: ClassVar[type] = ColourFilterConfig

    def build_trigger(self, image_size: int):
        g = torch.Generator().manual_seed(self.config.trigger_seed)
        mix = torch.rand(3, 3, generator=g)
        mix = mix / mix.sum(dim=1, keepdim=True)
        s = self.config.strength
        return ColourFilterTrigger((1 - s) * torch.eye(3) + s * mix)


@dataclass(frozen=True)
class FrameTrigger:
    frame: Tensor  # [3, H, W], used where mask is 1
    mask: Tensor  # [1, H, W]

    def __call__(self, images: Tensor) -> Tensor:
        m = self.mask.to(images)
        return m * self.frame.to(images) + (1 - m) * images


@dataclass(frozen=True)
class BorderConfig(PoisonSettings):
    content: Content = "solid"
    width_fraction: float = 1 / 16  # of the image side (2 px at 32 px)
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.width_fraction < 0.5:
            raise ValueError(f"width_fraction must be in (0, 0.5), got {self.width_fraction}")
        super().__post_init__()


class Border(_PoisoningAttack):
    name = "border"
    summary = "Border family: a frame of solid, checkerboard or noise content around the image; poisoning."
    reference = "this project (zoo family)"
    Config: ClassVar[type] = BorderConfig

    def build_trigger(self, image_size: int):
        c = self.config
        width = T.patch_pixels(image_size, c.width_fraction)
        mask = torch.ones(1, image_size, image_size)
        mask[:, width:image_size - width, width:image_size - width] = 0
        return FrameTrigger(content_patch(c.content, image_size, c.trigger_seed), mask)


FAMILIES = (Patch, Blend, Stripes, ColourFilter, Border)
