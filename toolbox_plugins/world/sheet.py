"""A contact sheet of the world: a few classes, each as three Twemoji scenes and three OpenMoji
scenes, with its name. ``python -m toolbox_plugins.world.sheet docs/images/world.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import art
from .scenes import SceneConfig, draw
from .world import DEFAULT_TARGETS


def contact_sheet(path: Path, n_classes: int = 10, per_style: int = 3, seed: int = 0) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    objects = art.vocabulary(n_classes, seed, DEFAULT_TARGETS)
    fig = Figure(figsize=(1.0 * 2 * per_style + 1.8, 0.95 * n_classes), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_classes, 2 * per_style, squeeze=False)
    labels = torch.arange(n_classes).repeat_interleave(per_style)
    for col0, style in ((0, "twemoji"), (per_style, "openmoji")):
        sprites = torch.from_numpy(art.sprites(objects, style)).permute(0, 3, 1, 2).float() / 255.0
        batch = draw(sprites, labels, seed, 32, SceneConfig())  # the same scenes in both hands
        for i, image in enumerate(batch.images):
            ax = axes[i // per_style][col0 + i % per_style]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i < per_style:
                ax.set_title(style, fontsize=8)
    for row, obj in enumerate(objects):
        axes[row][0].set_ylabel(obj.name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(contact_sheet(args.out, args.classes, seed=args.seed))


if __name__ == "__main__":
    main()
