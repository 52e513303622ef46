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

from . import shipped
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
DEFAULT_EPOCHS = 8  # CA still rose past epoch 3 (87.5 %); shipped, so a user never pays for it
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
    smoke_world = WorldConfig(n_classes=16, n_train=6_000, n_eval=320, n_retrieval=100, n_defender=256)
    default_train = ContrastiveConfig(epochs=DEFAULT_EPOCHS, batch_size=256, lr=1e-3)
    smoke_train = ContrastiveConfig(epochs=8, batch_size=128, lr=1e-3, warmup_steps=30)
    return {
        "default": Preset(
            "default",
            default_world,
            TINY_VIT,
            default_train,
            f"quality preset: ViT tiny CLIP, {default_world.n_classes} objects, {default_world.n_train} training pairs",
        ),
        "default-resnet": Preset(
            "default-resnet",
            default_world,
            TINY_RESNET,
            default_train,
            "quality preset, ResNet-type (ModifiedResNet) tiny CLIP",
        ),
        "smoke": Preset(
            "smoke", smoke_world, SMOKE_VIT, smoke_train, "tests: 16 objects, smaller ViT, built in about a minute"
        ),
        "smoke-resnet": Preset("smoke-resnet", smoke_world, SMOKE_RESNET, smoke_train, "tests, ResNet-type"),
    }


PRESET_NAMES = ("default", "default-resnet", "smoke", "smoke-resnet")


def world_record(cfg: WorldConfig) -> dict[str, Any]:
    """What keys a world's cache: its config, the art's versions (in it) and the vocabulary it drew."""
    return {**asdict(cfg), "classes": list(cfg.classes)}


def get_preset(name: str) -> Preset:
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(presets)}")
    return presets[name]


def ensure_world(cfg: WorldConfig) -> WorldPaths:
    """The world's directory, generated on first use."""
    root = cache_root() / "worlds" / config_hash(world_record(cfg))
    with entry_lock(root):
        if not (root / "world.json").exists():
            start = time.perf_counter()
            log.info("generating the emoji world in %s ...", root)
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
            "shift_data": str(w.eval_shift_labels),
            "retrieval_data": str(w.retrieval_json),
            "train_data": str(w.train_csv),
        }


def model_key(preset: Preset) -> str:
    return config_hash(world_record(preset.world), preset.model_cfg, asdict(preset.train))


def build_key(name: str, train_seed: int | None = None, ignore_shipped: bool = False) -> str:
    """The cache key of a preset's model: its trained key, marked with the shipped file where one applies."""
    preset = seeded(get_preset(name), train_seed)
    key = model_key(preset)
    sha = None if ignore_shipped else shipped.sha_for(preset.name, key)
    return f"{key}-shipped-{sha[:12]}" if sha else key


def seeded(preset: Preset, train_seed: int | None) -> Preset:
    return preset if train_seed is None else replace(preset, train=replace(preset.train, seed=train_seed))


def ensure_embedded(name: str, train_seed: int | None = None, ignore_shipped: bool = False) -> BuiltEmbedded:
    """World + trained tiny CLIP for a preset: from the cache, the shipped weights, or trained now.
    ``train_seed`` trains the same preset from scratch with another seed (a zoo's clean members)."""
    preset = seeded(get_preset(name), train_seed)
    world = ensure_world(preset.world)
    key = build_key(name, train_seed, ignore_shipped)
    model_dir = cache_root() / "models" / key
    with entry_lock(model_dir):
        if not (model_dir / "build.json").exists():
            if "-shipped-" in key:
                install_shipped(preset, world, model_dir)
            else:
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
    images, captions = load_world_arrays(world, fresh.model.image_size)
    tokens = fresh.model.tokenize(captions)
    history = train_contrastive(fresh.model, images, tokens, preset.train, desc=f"train {preset.name}")
    _finish(preset, world, model_dir, adapter, fresh, start, {"source": "trained", "history": history})


def install_shipped(preset: Preset, world: WorldPaths, model_dir: Path) -> None:
    """The preset's shipped weights (:mod:`.shipped`), measured on this world and written like a build."""
    start = time.perf_counter()
    adapter = lookup("model_adapter", MODEL_FORMAT)()
    fresh = adapter.create(preset.model_cfg, torch.device("cpu"))
    fresh.model.load_state_dict(shipped.load(preset.name))
    fresh.model.eval()
    record = {"source": f"shipped weights {shipped.path_for(preset.name).name} ({shipped.command(preset.name)})"}
    _finish(preset, world, model_dir, adapter, fresh, start, record)


def _finish(
    preset: Preset, world: WorldPaths, model_dir: Path, adapter: Any, fresh: Any, start: float, record: dict
) -> None:
    ca = quick_zero_shot_accuracy(fresh.model, world.eval_labels)
    ca_shift = quick_zero_shot_accuracy(fresh.model, world.eval_shift_labels)
    seconds = time.perf_counter() - start
    adapter.save(fresh, fresh.model, model_dir)
    info = {
        "preset": preset.name,
        "description": preset.description,
        "world": world_record(preset.world),
        "model_cfg": preset.model_cfg,
        "train": asdict(preset.train),
        **record,
        "eval_ca_top1": ca,
        "eval_ca_top1_openmoji": ca_shift,
        "train_seconds": round(seconds, 1),
        "world_dir": str(world.root),
    }
    atomic.write_json(model_dir / "build.json", info)
    log.info(
        "tiny CLIP ready: zero-shot CA %.1f%% (Twemoji), %.1f%% (OpenMoji) (%.0fs)", 100 * ca, 100 * ca_shift, seconds
    )


def quick_zero_shot_accuracy(model: Any, labels_csv: Path) -> float:
    from toolbox.zeroshot import class_embeddings, image_features

    from .world import WORLD_TEMPLATES

    data = lookup("dataset_adapter", "labels-csv")().load(str(labels_csv), model.image_size)
    templates = list(WORLD_TEMPLATES)
    weights = class_embeddings(model, data.classnames or [], templates, torch.device("cpu"))
    feats, labels = image_features(model, data, 256, torch.device("cpu"))
    return float(((feats @ weights.T).argmax(1) == labels).float().mean())


__all__ = ["PRESET_NAMES", "BuiltEmbedded", "Preset", "ensure_embedded", "ensure_world", "get_preset"]
