"""Perturbation families for universal adversarial perturbations (UAPs): how a parameter starts,
acts on [0, 1] images and stays valid. InverTune's stage 1 races them; an adaptive attack imitates
them; a detector refines them. Owned by no plugin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .triggers import add_signal, paste_patch

# A stage-1 race's default families (InverTune's defaults; the evasive attack's decoys imitate them).
RACE_PATCH_LOCATIONS: tuple[str, ...] = ("bottom-right", "top-left", "center")
RACE_PATCH_FRACTION = 0.125  # 4 px at 32 px: trigger-sized (the paper's 16/224 = 0.071)
RACE_GLOBAL_EPS = 32 / 255  # 16/255 reached at most 0.33 on non-Blended models


@dataclass(frozen=True)
class PerturbationFamily:
    """One perturbation family of the race: how its parameter starts, acts and stays valid."""

    kind: str
    init: Callable[[torch.Generator], Tensor]
    apply: Callable[[Tensor, Tensor], Tensor]
    project: Callable[[Tensor], None]  # in place, after each optimiser step
    location: str | None = None  # patch families: where the patch sits
    pixels: Callable[[Tensor], Tensor] | None = None  # patch families: the parameter as a [3, s, s] patch in [0, 1]
    delta: Callable[[Tensor], Tensor] | None = None  # additive families: the parameter as a [1 or 3, H, W] perturbation


def no_projection(_: Tensor) -> None:
    return None


def patch_uap(size: int, location: str) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
    param = torch.zeros(3, size, size)
    return param, lambda x, p: paste_patch(x, torch.sigmoid(p), location)


def linf_family(image_size: int, eps: float, name: str = "linf") -> PerturbationFamily:
    """Full-colour L-inf perturbations x + eps * tanh(p), p of the image's shape, clamped: the race's
    global family, and the L-inf detector's."""

    def delta(p: Tensor) -> Tensor:
        return eps * torch.tanh(p)

    return PerturbationFamily(
        f"{name}@{eps * 255:.0f}/255",
        lambda g: torch.randn(3, image_size, image_size, generator=g) * 0.5,
        lambda x, p: add_signal(x, delta(p)),
        no_projection,
        delta=delta,
    )


def profile_family(
    name: str, image_size: int, eps: float, delta: Callable[[Tensor, Tensor, float], Tensor]
) -> PerturbationFamily:
    """A grayscale global family of two length-``image_size`` profiles (rows u, columns v):
    x + delta(u, v, eps) on every channel, clamped; ``delta`` maps them to [H, W] in [-eps, eps]."""

    def scaled(p: Tensor) -> Tensor:  # [..., 2H] -> [..., 1, H, W]: leading dims are a batch of parameters
        return delta(p[..., :image_size], p[..., image_size:], eps).unsqueeze(-3)

    return PerturbationFamily(
        f"{name}@{eps * 255:.0f}/255",
        lambda g: torch.randn(2 * image_size, generator=g) * 0.5,
        lambda x, p: add_signal(x, scaled(p)),
        no_projection,
        delta=scaled,
    )


def separable_family(image_size: int, eps: float) -> PerturbationFamily:
    """Grayscale separable global perturbations: x + eps * tanh(u) tanh(v)^T on every channel, clamped."""
    return profile_family(
        "separable", image_size, eps, lambda u, v, e: e * torch.tanh(u)[..., :, None] * torch.tanh(v)[..., None, :]
    )


def stripe_family(image_size: int, eps: float) -> PerturbationFamily:
    """Grayscale stripe perturbations: x + eps * tanh(r_i + c_j) on every channel, clamped. A column
    profile alone (r = 0) is vertical stripes, a row profile alone horizontal ones."""
    return profile_family("stripes", image_size, eps, lambda r, c, e: e * torch.tanh(r[..., :, None] + c[..., None, :]))


GLOBAL_FAMILIES: dict[str, Callable[[int, float], PerturbationFamily]] = {
    "stripes": stripe_family,
    "separable": separable_family,
}
