"""The patch family: solid, checkerboard, noise or a drawn shape, any size, anywhere; poisoning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from toolbox.primitives import triggers as T

from .base import TOY_PATCH_FRACTION, PoisoningAttack, check_unit
from .poisoning import PoisonSettings

Content = Literal["solid", "checkerboard", "noise", "shape"]


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
        on = [
            ((i - c) ** 2 + (j - c) ** 2 <= (size / 2.5) ** 2),
            ((i - c).abs() <= size / 8) | ((j - c).abs() <= size / 8),
            (j - c).abs() <= i / 2,
        ][shape]
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
        out[..., r : r + size, c : c + size] = self.patch.to(images)
        return out


@dataclass(frozen=True)
class PatchFamilyConfig(PoisonSettings):
    content: Content = "noise"
    patch_fraction: float = TOY_PATCH_FRACTION  # of the image side
    row: float = 1.0  # 0: top edge, 1: bottom edge
    col: float = 1.0  # 0: left edge, 1: right edge
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        check_unit(self.row, "row")
        check_unit(self.col, "col")
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        super().__post_init__()


class Patch(PoisoningAttack):
    name = "patch"
    summary = "Patch family: solid, checkerboard, noise or a drawn shape, any size, anywhere; poisoning."
    reference = "this project (zoo family stretching BadNet, Gu et al. 2017)"
    Config: ClassVar[type] = PatchFamilyConfig

    def build_trigger(self, image_size: int):
        c = self.config
        patch = content_patch(c.content, T.patch_pixels(image_size, c.patch_fraction), c.trigger_seed)
        return PlacedPatch(patch, c.row, c.col)
