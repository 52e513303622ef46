"""Scenes: one object (an emoji sprite, alpha-composited) on a varied background, drawn a batch at a
time with torch. Scale, position, rotation, flip, colour jitter and pixel noise vary per scene; the
object's alpha is its segmentation mask. A scene is a pure function of its generator's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BACKGROUNDS = ("plain", "gradient", "textured", "cluttered")

# (name, rgb) anchors for naming colours in captions
COLOR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (200, 30, 30)),
    ("orange", (240, 140, 20)),
    ("yellow", (240, 220, 40)),
    ("green", (40, 160, 50)),
    ("blue", (40, 80, 210)),
    ("purple", (130, 50, 170)),
    ("pink", (240, 130, 180)),
    ("brown", (120, 70, 30)),
    ("white", (240, 240, 240)),
    ("gray", (128, 128, 128)),
    ("black", (20, 20, 20)),
)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes vary. Fractions are of the image side; angles in degrees."""

    scale: tuple[float, float] = (0.5, 0.9)  # the object's side
    clutter_scale: tuple[float, float] = (0.2, 0.4)
    clutter_objects: int = 3
    clutter_opacity: float = 0.3  # low contrast: the clutter must not read as the scene's object
    max_rotation: float = 20.0
    brightness: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.7, 1.3)
    noise_std: float = 4.0  # pixel noise, in 0-255 units
    supersample: int = 2  # drawn this many times larger, then averaged: no aliasing at 32 px


@dataclass
class Batch:
    images: Tensor  # uint8 [n, 3, H, W]
    masks: Tensor  # bool [n, H, W]: the object's alpha > 0.5
    labels: Tensor  # long [n]
    attributes: list[dict[str, str]]  # per scene: size, position, background, color (caption words)


def color_name(rgb: Tensor) -> str:
    """The nearest named colour to an RGB triple in [0, 1]."""
    anchors = torch.tensor([c for _, c in COLOR_NAMES], dtype=torch.float32) / 255.0
    return COLOR_NAMES[int(((anchors - rgb.float()) ** 2).sum(1).argmin())][0]


def sprite_colors(sprites: Tensor) -> list[str]:
    """Each sprite's colour name: the alpha-weighted mean of its opaque pixels."""
    rgb, alpha = sprites[:, :3], sprites[:, 3:]
    mean = (rgb * alpha).sum((2, 3)) / alpha.sum((2, 3)).clamp_min(1e-6)
    return [color_name(m) for m in mean]


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _place(sprites: Tensor, scale: Tensor, shift: Tensor, angle: Tensor, flip: Tensor, side: int) -> Tensor:
    """Sprites [n, 4, S, S] scaled, rotated, flipped and shifted onto an empty [n, 4, side, side] canvas."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output point p maps to sprite point q = F R(-angle) (p - shift) / scale (affine_grid's convention).
    m00, m01 = flip * cos / scale, flip * sin / scale
    m10, m11 = -sin / scale, cos / scale
    theta = torch.stack(
        [
            torch.stack([m00, m01, -(m00 * shift[:, 0] + m01 * shift[:, 1])], 1),
            torch.stack([m10, m11, -(m10 * shift[:, 0] + m11 * shift[:, 1])], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [len(sprites), 4, side, side], align_corners=False)
    return F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _backgrounds(g: torch.Generator, kinds: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """[n, 3, side, side] backgrounds of the given kinds, and each scene's dominant colour."""
    n = len(kinds)
    c1, c2 = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    phi = _uniform(g, n, 0.0, 2 * math.pi)
    t = ((xs[None] * torch.cos(phi)[:, None, None] + ys[None] * torch.sin(phi)[:, None, None]) + 1.5) / 3.0
    gradient = c1[:, :, None, None] * (1 - t[:, None]) + c2[:, :, None, None] * t[:, None]
    coarse = torch.rand(n, 3, 4, 4, generator=g) - 0.5
    fine = torch.rand(n, 3, 9, 9, generator=g) - 0.5
    blotches = F.interpolate(coarse, size=side, mode="bicubic", align_corners=False) * 0.5
    blotches += F.interpolate(fine, size=side, mode="bilinear", align_corners=False) * 0.25
    plain = c1[:, :, None, None].expand(n, 3, side, side)
    textured = (c1[:, :, None, None] + blotches).clamp(0, 1)
    pick = kinds[:, None, None, None]
    # "cluttered" starts from a gradient; its clutter is composited by the caller.
    out = torch.where(pick == 0, plain, torch.where(pick == 2, textured, gradient))
    return out, c1


def _jitter(g: torch.Generator, rgb: Tensor, cfg: SceneConfig) -> Tensor:
    n = len(rgb)
    bright = _uniform(g, n, *cfg.brightness)[:, None, None, None]
    sat = _uniform(g, n, *cfg.saturation)[:, None, None, None]
    gray = rgb.mean(1, keepdim=True)
    return ((gray + (rgb - gray) * sat) * bright).clamp(0, 1)


def _position(shift: Tensor) -> list[str]:
    words = []
    for x, y in shift.tolist():
        if max(abs(x), abs(y)) < 0.15:
            words.append("center")
        elif abs(x) >= abs(y):
            words.append("right" if x > 0 else "left")
        else:
            words.append("bottom" if y > 0 else "top")
    return words


def draw(sprites: Tensor, labels: Tensor, seed: int, image_size: int, cfg: SceneConfig) -> Batch:
    """Scenes of ``labels`` drawn from float RGBA ``sprites`` [K, 4, S, S]; all randomness from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n, side = len(labels), image_size * cfg.supersample
    scale = _uniform(g, n, *cfg.scale)
    room = 1.0 - scale  # the object stays inside the picture
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * room[:, None]
    angle = _uniform(g, n, -cfg.max_rotation, cfg.max_rotation) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    kinds = torch.randint(len(BACKGROUNDS), (n,), generator=g)
    canvas, base = _backgrounds(g, kinds, side)

    clutter = kinds == BACKGROUNDS.index("cluttered")
    for _ in range(cfg.clutter_objects):
        other = torch.randint(len(sprites), (n,), generator=g)
        c_scale = _uniform(g, n, *cfg.clutter_scale)
        c_shift = torch.rand(n, 2, generator=g) * 2 - 1
        c_angle = _uniform(g, n, -math.pi, math.pi)
        placed = _place(sprites[other], c_scale, c_shift, c_angle, torch.ones(n), side)
        alpha = placed[:, 3:] * cfg.clutter_opacity * clutter[:, None, None, None]
        canvas = canvas * (1 - alpha) + placed[:, :3] * alpha

    obj = _place(sprites[labels], scale, shift, angle, flip, side)
    rgb, alpha = _jitter(g, obj[:, :3], cfg), obj[:, 3:]
    canvas = canvas * (1 - alpha) + rgb * alpha
    if cfg.supersample > 1:
        canvas = F.avg_pool2d(canvas, cfg.supersample)
        alpha = F.avg_pool2d(alpha, cfg.supersample)
    noise = torch.randn(canvas.shape, generator=g) * (cfg.noise_std / 255.0)
    images = ((canvas + noise).clamp(0, 1) * 255).round().to(torch.uint8)

    positions = _position(shift)
    attributes = [
        {
            "size": "small" if s < sum(cfg.scale) / 2 else "large",
            "position": positions[i],
            "background": color_name(base[i]) if k == 0 else BACKGROUNDS[k],
        }
        for i, (s, k) in enumerate(zip(scale.tolist(), kinds.tolist()))
    ]
    return Batch(images, alpha[:, 0] > 0.5, labels, attributes)
