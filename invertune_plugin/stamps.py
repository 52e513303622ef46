"""Random stamps for stage 3's trigger-free consistency term (ours): each image of a batch gets a patch
of random size, place and content (a colour, noise, a checkerboard) or a faint blended noise. The
tuned model is held to embed a stamped image where the suspect embedded the clean one, so it
unlearns answering to small stamps in general, not only to the one trigger stage 2 reconstructed.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RandomStamps:
    def __init__(
        self, seed: int, fraction: tuple[float, float] = (0.06, 0.2), alpha: tuple[float, float] = (0.05, 0.2)
    ) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.fraction, self.alpha = fraction, alpha

    def _uniform(self, n: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen)

    def __call__(self, images: Tensor) -> Tensor:
        b, c, h, w = images.shape
        out = images.clone()
        kinds = torch.randint(4, (b,), generator=self.gen)  # 0 colour, 1 noise, 2 checkerboard patch; 3 blend
        sizes = (self._uniform(b, *self.fraction) * h).round().clamp(min=2).long()
        alphas = self._uniform(b, *self.alpha)
        for i in range(b):
            kind, s = int(kinds[i]), int(sizes[i])
            noise = torch.rand(c, h, w, generator=self.gen).to(images)
            if kind == 3:
                out[i] = (1 - alphas[i]) * images[i] + alphas[i] * noise
                continue
            r = int(torch.randint(h - s + 1, (1,), generator=self.gen))
            q = int(torch.randint(w - s + 1, (1,), generator=self.gen))
            if kind == 0:
                patch = torch.rand(c, 1, 1, generator=self.gen).to(images).expand(c, s, s)
            elif kind == 1:
                patch = noise[:, :s, :s]
            else:
                cells = (torch.arange(s)[:, None] // max(s // 4, 1) + torch.arange(s)[None] // max(s // 4, 1)) % 2
                patch = cells.to(images).expand(c, s, s)
            out[i, :, r : r + s, q : q + s] = patch
        return out
