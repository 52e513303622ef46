"""Presets, the build cache, and ``ensure_embedded``: world + tiny CLIP, built once, then loaded.

Cache layout (under :func:`toolbox.cache.cache_root`)::

    worlds/<world-hash>/         the world's splits (see :mod:`toolbox_plugins.world.world`)
    models/<model-hash>/         open_clip local dir: open_clip_config.json + safetensors, build.json

The model hash covers the world config, the model config and the training config, so
changing any of them builds anew; builds are atomic (temporary directory, then rename)
and guarded by a file lock, so parallel processes never see half a cache entry.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from toolbox import atomic
from toolbox.cache import cache_root, config_hash, entry_lock
from toolbox.lookup import lookup

from .world import WorldConfig, WorldPaths, write_world

log = logging.getLogger(__name__)

MODEL_FORMAT = "openclip-dir"

TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}

# ViT-type tiny CLIP (feasibility study: 7.6 M parameters, 0.8 M visual).
TINY_VIT: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 4, "head_width": 64},
    "text_cfg": TINY_TEXT,
}
# ResNet-type tiny CLIP: open_clip's ModifiedResNet (CLIP RN50's design) with one bottleneck per stage.
TINY_RESNET: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32, "head_width": 64},
    "text_cfg": TINY_TEXT,
}
SMOKE_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
SMOKE_VIT: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 4, "head_width": 64},
    "text_cfg": SMOKE_TEXT,
}
SMOKE_RESNET: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
    "text_cfg": SMOKE_TEXT,
}


@dataclass(frozen=True)
class Preset:
    name: str
    world: WorldConfig
    model_cfg: dict[str, Any]
    train: Any  # ContrastiveConfig (imported lazily: the presets are read before torch is needed)
    description: str = ""


def _presets() -> dict[str, Preset]:
    from toolbox.contrastive import ContrastiveConfig

    default_world = WorldConfig()
    smoke_world = WorldConfig(n_train=6_000, n_eval=280, n_retrieval=100, n_defender=256)
    # 3 epochs gave 94.1 % CA (211 s); 5 epochs keep the cold build well under 10 min.
    default_train = ContrastiveConfig(epochs=5, batch_size=256, lr=1e-3)
    # smoke: lr 2e-3 never left the log(batch) plateau; 1e-3 gave 81 % CA in 34 s (5e-4: 76 %).
    smoke_train = ContrastiveConfig(epochs=8, batch_size=128, lr=1e-3, warmup_steps=30)
    return {
        "default": Preset(
            "default", default_world, TINY_VIT, default_train, "quality preset: ViT tiny CLIP, 20k training pairs"
        ),
        "default-resnet": Preset(
            "default-resnet",
            default_world,
            TINY_RESNET,
            default_train,
            "quality preset, ResNet-type (ModifiedResNet) tiny CLIP",
        ),
        "smoke": Preset(
            "smoke", smoke_world, SMOKE_VIT, smoke_train, "tests: small world, smaller ViT, built in about a minute"
        ),
        "smoke-resnet": Preset("smoke-resnet", smoke_world, SMOKE_RESNET, smoke_train, "tests, ResNet-type"),
    }


PRESET_NAMES = ("default", "default-resnet", "smoke", "smoke-resnet")


def get_preset(name: str) -> Preset:
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(presets)}")
    return presets[name]


def ensure_world(cfg: WorldConfig) -> WorldPaths:
    """The world's directory, generated on first use."""
    root = cache_root() / "worlds" / config_hash(asdict(cfg))
    with entry_lock(root):
        if not (root / "world.json").exists():
            start = time.perf_counter()
            log.info("generating the procedural world in %s ...", root)
            with atomic.atomic_dir(root) as tmp:
                write_world(cfg, tmp)
            log.info("world ready (%.1fs)", time.perf_counter() - start)
    return WorldPaths(root)


@dataclass
class BuiltEmbedded:
    preset: Preset
    world: WorldPaths
    model_dir: Path
    build_info: dict[str, Any] = field(default_factory=dict)

    def data_defaults(self) -> dict[str, str]:
        w = self.world
        return {
            "classes": str(w.classes),
            "templates": str(w.templates),
            "clean_data": str(w.defender_dir),
            "eval_data": str(w.eval_labels),
            "retrieval_data": str(w.retrieval_json),
            "train_data": str(w.train_csv),
        }


def model_key(preset: Preset) -> str:
    return config_hash(asdict(preset.world), preset.model_cfg, asdict(preset.train))


def ensure_embedded(name: str, train_seed: int | None = None) -> BuiltEmbedded:
    """World + trained tiny CLIP for a preset: from the cache, or built now (with progress).
    ``train_seed`` trains the same preset from scratch with another seed (a zoo's clean members)."""
    preset = get_preset(name)
    if train_seed is not None:
        preset = replace(preset, train=replace(preset.train, seed=train_seed))
    world = ensure_world(preset.world)
    model_dir = cache_root() / "models" / model_key(preset)
    with entry_lock(model_dir):
        if not (model_dir / "build.json").exists():
            train_embedded(preset, world, model_dir)
    info = json.loads((model_dir / "build.json").read_text(encoding="utf-8"))
    return BuiltEmbedded(preset, world, model_dir, info)


def load_world_arrays(world: WorldPaths, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """The training split as a uint8 tensor plus its captions, read through the caption-CSV adapter."""
    data = lookup("dataset_adapter", "caption-csv")().load(str(world.train_csv), image_size)
    images = data.dataset.cache
    assert images is not None, "the training split is small enough to be held in memory"
    return images, [c[0] for c in data.captions or []]


def train_embedded(preset: Preset, world: WorldPaths, model_dir: Path) -> None:
    """Train the preset's tiny CLIP from scratch on the world; write it in open_clip's dir format."""
    from toolbox.contrastive import train_contrastive

    start = time.perf_counter()
    log.info("training the embedded tiny CLIP (%s) ...", preset.name)
    torch.manual_seed(preset.train.seed)
    adapter = lookup("model_adapter", MODEL_FORMAT)()  # the format the world writes its models in
    fresh = adapter.create(preset.model_cfg, torch.device("cpu"))
    model = fresh.model
    images, captions = load_world_arrays(world, model.image_size)
    tokens = model.tokenize(captions)
    history = train_contrastive(model, images, tokens, preset.train, desc=f"train {preset.name}")
    ca = quick_zero_shot_accuracy(model, world)
    seconds = time.perf_counter() - start
    adapter.save(fresh, model, model_dir)
    info = {
        "preset": preset.name,
        "description": preset.description,
        "world": asdict(preset.world),
        "model_cfg": preset.model_cfg,
        "train": asdict(preset.train),
        "history": history,
        "eval_ca_top1": ca,
        "train_seconds": round(seconds, 1),
        "world_dir": str(world.root),
    }
    atomic.write_json(model_dir / "build.json", info)
    log.info("tiny CLIP ready: zero-shot CA %.1f%% (%.0fs)", 100 * ca, seconds)


def quick_zero_shot_accuracy(model: Any, world: WorldPaths) -> float:
    from toolbox.zeroshot import class_embeddings, image_features

    data = lookup("dataset_adapter", "labels-csv")().load(str(world.eval_labels), model.image_size)
    templates = [t for t in world.templates.read_text(encoding="utf-8").splitlines() if t]
    weights = class_embeddings(model, data.classnames or [], templates, torch.device("cpu"))
    feats, labels = image_features(model, data, 256, torch.device("cpu"))
    return float(((feats @ weights.T).argmax(1) == labels).float().mean())


__all__ = ["PRESET_NAMES", "BuiltEmbedded", "Preset", "ensure_embedded", "ensure_world", "get_preset"]
