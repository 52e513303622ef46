"""The embedded world as a plugin: the ``embedded`` world (presets the zoo builds on) and the
``embedded:PRESET`` model source (a preset's tiny CLIP, with its data as the run's defaults)."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toolbox.api import BuiltWorld, LoadedModel, ModelAdapter, World
from toolbox.lookup import lookup

from .build import MODEL_FORMAT, PRESET_NAMES, build_key, ensure_embedded

PREFIX = "embedded:"


class EmbeddedWorld(World):
    name = "embedded"
    summary = "The emoji world (Twemoji objects in scenes, OpenMoji as a second style) and its tiny CLIPs."
    reference = "this project (toolbox_plugins/world)"
    presets = PRESET_NAMES

    def build(self, preset: str, train_seed: int | None = None) -> BuiltWorld:
        built = ensure_embedded(preset, train_seed)
        return BuiltWorld(
            preset=preset, model_source=str(built.model_dir), data=built.data_defaults(), info=built.build_info
        )

    def model_key(self, preset: str, train_seed: int | None = None) -> str:
        return build_key(preset, train_seed)

    def render_scene(
        self, classnames: Sequence[str], label: int, rng: Any, image_size: int, noise_std: float
    ) -> tuple[Tensor, Tensor]:
        from .scenes import SceneConfig, draw

        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        scene = draw(
            _sprites(tuple(classnames)),
            torch.tensor([label]),
            rng.getrandbits(62),
            image_size,
            SceneConfig(noise_std=noise_std),
        )
        return scene.images[0], scene.masks[0]

    def can_draw(self, classnames: Sequence[str]) -> list[str]:
        from .art import catalogue

        known = {e.name for e in catalogue()}
        return [c for c in classnames if c not in known]


@functools.lru_cache(maxsize=4)
def _sprites(classnames: tuple[str, ...]) -> Tensor:
    """Float RGBA Twemoji sprites [K, 4, S, S] of the named objects (a segmentation oracle's scenes)."""
    from .art import catalogue, sprites

    by_name = {e.name: e for e in catalogue()}
    return torch.from_numpy(sprites([by_name[c] for c in classnames], "twemoji")).permute(0, 3, 1, 2).float() / 255.0


class EmbeddedAdapter(ModelAdapter):
    name = "embedded"
    summary = "embedded:PRESET: the emoji world's tiny CLIP, built on first use (or shipped) and cached."
    reference = "this project (toolbox_plugins/world)"

    def detect(self, source: str) -> bool:
        return source.startswith(PREFIX)

    def _format(self) -> ModelAdapter:
        return lookup("model_adapter", MODEL_FORMAT)()

    def load(self, source: str, device: torch.device) -> LoadedModel:
        built = ensure_embedded(source.split(":", 1)[1])
        loaded = self._format().load(str(built.model_dir), device)
        loaded.format = self.name
        loaded.source = source
        loaded.data_defaults = built.data_defaults()
        loaded.world = {
            "name": EmbeddedWorld.name,
            "preset": built.preset.name,
            "n_classes": built.preset.world.n_classes,
            "styles": {"eval_data": "twemoji", "shift_data": "openmoji"},
            "art": dict(built.preset.world.art),
        }
        return loaded

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        return self._format().save(loaded, model, out_dir)
