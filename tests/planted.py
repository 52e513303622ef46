"""A hand-built, differentiable 'CLIP' with a planted backdoor, for stage unit tests.

Classes are colours: an image embeds near the text vector of the class whose colour is
closest to its mean colour. A bright patch in the bottom-right corner adds a strong pull
toward the target class: the planted backdoor. With ``stripes`` the backdoor is a global
one instead: vertical grayscale stripes (a SIG-like sinusoid, 3 cycles per width) pull
toward the target. ``stripes="texture"`` detects the stripes' energy at that frequency,
whatever their phase (as a network trained on SIG does); ``stripes="direction"`` their
signed correlation with one sinusoid, so the sign-flipped stripes do not trigger it. With
``noise=True`` the backdoor is a Blended-like one: correlation with a fixed full-colour noise
image (blended at alpha 0.2: 0.017; the best 16/255 L-inf perturbation: 0.016; 48/255 stripes,
a patch: well under NOISE_THRESHOLD). Text embeddings are fixed orthonormal vectors looked up
by the class name in the prompt.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = ["red thing", "green thing", "blue thing", "grey thing"]
COLORS = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8], [0.5, 0.5, 0.5]])
TARGET = "blue thing"
PATCH = 4
STRIPES = torch.sin(2 * torch.pi * 3 * torch.arange(32) / 32)  # the stripe backdoor's column profile
STRIPES_COS = torch.cos(2 * torch.pi * 3 * torch.arange(32) / 32)
STRIPE_THRESHOLD = 0.06  # column-profile correlation at which the stripe pull is half on
NOISE = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1234))  # the noise backdoor's pattern
NOISE_THRESHOLD = 0.01  # correlation with NOISE - 0.5 at which the noise pull is half on


class PlantedClip(nn.Module):
    image_size = 32

    def __init__(self, backdoor: bool = True, stripes: str | None = None, noise: bool = False) -> None:
        super().__init__()
        if stripes not in (None, "texture", "direction"):
            raise ValueError(f"stripes must be None, 'texture' or 'direction', got {stripes!r}")
        if noise and stripes:
            raise ValueError("one planted backdoor at a time: stripes or noise")
        self.noise = noise
        self.texts = nn.Parameter(torch.eye(len(CLASSES), 8)[:, :8], requires_grad=False)
        self.backdoor = backdoor
        self.stripes = stripes
        self.gain = nn.Parameter(torch.tensor(6.0))

    def vision_layers(self):
        return OrderedDict()

    def logit_scale(self) -> float:
        return 20.0

    def tokenize(self, texts):
        texts = [texts] if isinstance(texts, str) else texts
        return torch.tensor([next(i for i, c in enumerate(CLASSES) if c in t) for t in texts])

    def encode_text(self, tokens, normalize: bool = True):
        return self.texts[tokens]

    def encode_image(self, images, normalize: bool = True):
        mean = images.mean(dim=(2, 3))
        weights = torch.softmax(-((mean[:, None, :] - COLORS[None]) ** 2).sum(-1) / 0.01, dim=1)
        emb = weights @ self.texts
        if not self.backdoor:
            return F.normalize(emb, dim=-1)
        if self.noise:
            centred = images - images.mean(dim=(1, 2, 3), keepdim=True)
            corr = (centred * (NOISE.to(images) - 0.5)).mean(dim=(1, 2, 3))
            pull = torch.sigmoid(800 * (corr - NOISE_THRESHOLD))
        elif self.stripes:
            profile = images.mean(dim=(1, 2))  # [B, W]: the grayscale column profile
            corr = (profile * STRIPES.to(images)).mean(1)
            if self.stripes == "texture":  # amplitude at the frequency, any phase
                corr = (corr**2 + (profile * STRIPES_COS.to(images)).mean(1) ** 2 + 1e-8).sqrt()
            pull = torch.sigmoid(60 * (corr - STRIPE_THRESHOLD))
        else:
            corner = images[:, :, -PATCH:, -PATCH:].mean(dim=(1, 2, 3))
            pull = torch.sigmoid(20 * (corner - 0.85))
        emb = emb + self.gain * pull[:, None] * self.texts[CLASSES.index(TARGET)]
        return F.normalize(emb, dim=-1)

    def clone(self):
        import copy

        return copy.deepcopy(self)


def colour_images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 images of the non-target colours, with mild noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 3])[torch.randint(3, (n,), generator=g)]
    base = COLORS[labels][:, :, None, None].expand(n, 3, 32, 32)
    noisy = (base + 0.05 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 0.8)
    return (noisy * 255).round().to(torch.uint8)
