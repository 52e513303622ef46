"""PNG artifacts: the stage-1 shift chart, image grids and the comparison scatter (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def ca_asr_scatter_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """A comparison's CA after (x) against ASR after (y) as PNG bytes: one colour per defense, one marker
    per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^vP*Xh<>"
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for r in rows:
        if r["ca_after"] is None or r["asr_after"] is None:
            continue
        ax.scatter(
            100 * r["ca_after"],
            100 * r["asr_after"],
            color=colours(defenses.index(r["defense"]) % 10),
            marker=markers[attacks.index(r["attack"]) % len(markers)],
            s=48,
            edgecolors="black",
            linewidths=0.4,
        )
    for i, d in enumerate(defenses):
        ax.scatter([], [], color=colours(i % 10), label=d)
    for j, a in enumerate(attacks):
        ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=a)
    ax.set_xlabel("clean accuracy after defense (%)")
    ax.set_ylabel("attack success rate after defense (%)")
    ax.set_title("CA vs ASR per (attack, defense)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
