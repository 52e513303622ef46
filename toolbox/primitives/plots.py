"""PNG artifacts: the stage-1 shift chart and image grids (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

UPSCALE = 8  # tiny images are shown at 8x, nearest neighbour, so pixels stay pixels


def save_image_grid(images: Sequence[torch.Tensor], path: Path, columns: int | None = None) -> None:
    """Tile [3,H,W] tensors in [0,1] into one PNG (rows of ``columns``)."""
    columns = columns or len(images)
    h, w = images[0].shape[-2:]
    rows = (len(images) + columns - 1) // columns
    sheet = np.ones((rows * (h + 1), columns * (w + 1), 3), dtype=np.uint8) * 255
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        arr = (img.detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        sheet[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = arr
    pil = Image.fromarray(sheet)
    pil = pil.resize((pil.width * UPSCALE, pil.height * UPSCALE), Image.Resampling.NEAREST)
    pil.save(path)


def save_shift_chart(ranking: Sequence[tuple[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c, _ in ranking]
    values = [100 * v for _, v in ranking]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(values)), values, color=["#c0392b"] + ["#7f8c8d"] * (len(values) - 1))
    ax.set_xticks(range(len(values)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 frequency change (points)")
    ax.set_title("Stage 1: prediction shift under universal adversarial perturbations")
    ax.axhline(0, color="black", linewidth=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
