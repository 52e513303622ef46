"""The embedded oracle: a small segmentation net trained on scenes a registered world draws.

A small fully-convolutional net (:class:`TinySegNet`) trained on scenes the oracle draws itself, from
its own seed stream, with a world's drawing code (the first registered world that can draw every
class, :meth:`toolbox.api.World.render_scene`) and the object masks it returns. It never sees the
suspect's training data, so a poisoned sample cannot teach it the trigger. Cached like an attacked model.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox import atomic
from toolbox.api import World
from toolbox.cache import cache_root, config_hash, entry_lock
from toolbox.lookup import registered
from toolbox.progress import progress

from .oracle import SEED_STRIDE, NetOracle, read_logits

ORACLE_SEED_OFFSET = 5  # the embedded oracle's scenes: the world's splits use offsets 1-4 (world.py)
ORACLE_FORMAT = 1  # bump when the embedded oracle's recipe changes, so cached oracles rebuild


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinySegNet(nn.Module):
    """A small fully-convolutional segmenter for 32-px images (ours).

    Two conv-BN-ReLU stages at full resolution keep the object's outline; a pooled stage (1/2, then
    1/4 resolution) sees the whole object, gated by a global image-level context as LR-ASPP does (a
    32-px object is wider than a few convolutions reach); it is upsampled, concatenated with the
    full-resolution features (skip) and classified per pixel by a 1x1 head.
    """

    def __init__(self, n_outputs: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.full = nn.Sequential(_conv_bn_relu(3, w), _conv_bn_relu(w, w))
        self.pooled = nn.Sequential(
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            _conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w),
        )
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * w, 4 * w, 1), nn.Sigmoid())
        self.head = nn.Conv2d(w + 4 * w, n_outputs, 1)

    def forward(self, images: Tensor) -> Tensor:
        skip = self.full(images)
        deep = self.pooled(skip)
        deep = deep * self.context(deep)
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([skip, up], 1))


@dataclass(frozen=True)
class EmbeddedOracleRecipe:
    """How the embedded oracle is trained (every value ours; SegOracleConfig sets the first two)."""

    n_scenes: int = 8000  # balanced over the classes
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3  # Adam
    width: int = 32  # TinySegNet's
    holdout_fraction: float = 0.1  # of the scenes, never trained on: the recorded accuracies
    noise_std: float = 4.0  # the embedded world's default pixel noise (its SceneConfig.noise_std)


@dataclass
class Scenes:
    images: Tensor  # uint8 [N,3,H,W]
    targets: Tensor  # long [N,H,W]: label + 1 inside the object's mask, else 0
    labels: Tensor  # long [N]


def scene_world(classnames: Sequence[str]) -> World:
    """The first registered world that can draw every one of ``classnames`` (a plugin's world is found
    through the registry, never imported)."""
    closest: tuple[str, list[str]] | None = None
    for name, world_class in registered("world").items():
        world = world_class()
        missing = world.can_draw(classnames)
        if not missing:
            return world
        if closest is None or len(missing) < len(closest[1]):
            closest = (name, missing)
    if closest is None:
        missing, why = list(classnames), "no registered world draws scenes"
    else:
        missing, why = closest[1], f"no registered world draws them all; the closest, {closest[0]!r}, lacks these"
    raise ValueError(
        f"the embedded oracle draws a registered world's classes; it cannot draw {missing[:5]} ({why}; "
        f"pass -p oracle=CHECKPOINT.safetensors -p oracle_classes=FILE for another vocabulary)"
    )


def draw_scenes(world: World, classnames: list[str], image_size: int, n: int, seed: int, noise_std: float) -> Scenes:
    """``n`` scenes with balanced labels from the oracle's own stream, drawn by ``world``."""
    rng = random.Random(seed * SEED_STRIDE + ORACLE_SEED_OFFSET)
    labels = [i % len(classnames) for i in range(n)]
    rng.shuffle(labels)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    targets = torch.zeros(n, image_size, image_size, dtype=torch.long)
    for i, y in enumerate(progress(labels, desc="oracle: drawing scenes", unit="img")):
        image, mask = world.render_scene(classnames, y, rng, image_size, noise_std)  # uint8 [3,H,W], bool [H,W]
        images[i] = image
        targets[i][mask] = y + 1
    return Scenes(images=images, targets=targets, labels=torch.tensor(labels))


def train_segnet(
    net: TinySegNet, scenes: Scenes, recipe: EmbeddedOracleRecipe, seed: int, device: torch.device
) -> list[dict[str, float]]:
    """Per-pixel cross-entropy, Adam, seeded batches; returns per-epoch mean losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    n = len(scenes.images)
    steps = max(1, n // recipe.batch_size)
    history: list[dict[str, float]] = []
    net.to(device).train()
    bar = progress(total=steps * recipe.epochs, desc="oracle: training", unit="step")
    for epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for b in range(steps):
            idx = order[b * recipe.batch_size : (b + 1) * recipe.batch_size]
            x = scenes.images[idx].to(device).float().div_(255.0)
            loss = F.cross_entropy(net(x), scenes.targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
        history.append({"epoch": epoch + 1, "loss": round(running / steps, 5)})
    bar.close()
    net.eval()
    return history


@torch.no_grad()
def held_out_accuracy(oracle: NetOracle, scenes: Scenes, batch_size: int = 256) -> dict[str, float]:
    """Pixel accuracy (background included) and image accuracy (:func:`read_logits`'s label)."""
    pixels = images = 0
    for start in range(0, len(scenes.images), batch_size):
        x = scenes.images[start : start + batch_size].float().div_(255.0)
        logits = oracle.segment(x).cpu()
        pixels += int((logits.argmax(1) == scenes.targets[start : start + batch_size]).sum())
        images += int((read_logits(logits).label == scenes.labels[start : start + batch_size]).sum())
    n = len(scenes.images)
    return {
        "pixel_accuracy": round(pixels / (n * scenes.targets[0].numel()), 4),
        "image_accuracy": round(images / n, 4),
    }


def embedded_oracle(
    classnames: Sequence[str],
    image_size: int,
    device: torch.device,
    seed: int = 0,
    *,
    recipe: EmbeddedOracleRecipe = EmbeddedOracleRecipe(),
) -> NetOracle:
    """The embedded oracle: from the cache, or drawn by a registered world, trained and cached now."""
    classnames = list(classnames)
    world = scene_world(classnames)
    key_parts: tuple[Any, ...] = (
        {
            "oracle": "tinysegnet",
            "format": ORACLE_FORMAT,
            "classnames": classnames,
            "image_size": image_size,
            "seed": seed,
            "recipe": asdict(recipe),
        },
    )
    if device.type != "cpu":  # another device trains to other numbers; CPU keys stay as they are
        key_parts += ({"device": device.type},)
    entry = cache_root() / "oracles" / config_hash(*key_parts)
    with entry_lock(entry):
        if not (entry / "meta.json").exists():
            build_embedded(world, classnames, image_size, device, seed, recipe, entry)
    return load_embedded(entry, device)


def build_embedded(
    world: World,
    classnames: list[str],
    image_size: int,
    device: torch.device,
    seed: int,
    recipe: EmbeddedOracleRecipe,
    entry: Path,
) -> None:
    """Draw, train, measure on the held-out slice, and write ``entry`` atomically."""

    start = time.perf_counter()
    n_holdout = max(1, int(round(recipe.n_scenes * recipe.holdout_fraction)))
    scenes = draw_scenes(world, classnames, image_size, recipe.n_scenes, seed, recipe.noise_std)
    train = Scenes(scenes.images[n_holdout:], scenes.targets[n_holdout:], scenes.labels[n_holdout:])
    holdout = Scenes(scenes.images[:n_holdout], scenes.targets[:n_holdout], scenes.labels[:n_holdout])
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without moving the run's global stream
        torch.manual_seed(seed)
        net = TinySegNet(1 + len(classnames), recipe.width)
    history = train_segnet(net, train, recipe, seed, device)
    accuracy = held_out_accuracy(NetOracle(net, classnames, device), holdout)
    meta = {
        "source": "embedded",
        "classnames": classnames,
        "image_size": image_size,
        "seed": seed,
        "recipe": asdict(recipe),
        "n_train": len(train.images),
        "n_holdout": n_holdout,
        **accuracy,
        "history": history,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    with atomic.atomic_dir(entry) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        atomic.save_safetensors(state, str(tmp / "oracle.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_embedded(entry: Path, device: torch.device) -> NetOracle:
    import safetensors.torch

    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    with torch.random.fork_rng(devices=[]):  # the throwaway initial weights must not move the run's stream
        net = TinySegNet(1 + len(meta["classnames"]), meta["recipe"]["width"])
    net.load_state_dict(safetensors.torch.load_file(str(entry / "oracle.safetensors")))
    info = {
        "source": "embedded",
        "cache_key": entry.name,
        "pixel_accuracy": meta["pixel_accuracy"],
        "image_accuracy": meta["image_accuracy"],
        "n_train": meta["n_train"],
        "n_holdout": meta["n_holdout"],
    }
    return NetOracle(net, meta["classnames"], device, info)
