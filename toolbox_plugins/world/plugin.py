"""The embedded world as a plugin: the ``embedded`` world (presets the zoo builds on) and the
``embedded:PRESET`` model source (a preset's tiny CLIP, with its data as the run's defaults)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from toolbox.api import BuiltWorld, LoadedModel, ModelAdapter, World
from toolbox.lookup import lookup

from .build import MODEL_FORMAT, PRESET_NAMES, ensure_embedded, get_preset, model_key

PREFIX = "embedded:"


class EmbeddedWorld(World):
    name = "embedded"
    summary = "The procedural image-caption world and its tiny CLIPs (presets default, default-resnet, smoke, ...)."
    reference = "this project (toolbox_plugins/world)"
    presets = PRESET_NAMES

    def build(self, preset: str, train_seed: int | None = None) -> BuiltWorld:
        built = ensure_embedded(preset, train_seed)
        return BuiltWorld(
            preset=preset, model_source=str(built.model_dir), data=built.data_defaults(), info=built.build_info
        )

    def model_key(self, preset: str, train_seed: int | None = None) -> str:
        spec = get_preset(preset)
        if train_seed is not None:
            spec = replace(spec, train=replace(spec.train, seed=train_seed))
        return model_key(spec)

    def render_scene(
        self, classnames: Sequence[str], label: int, rng: Any, image_size: int, noise_std: float
    ) -> tuple[Tensor, Tensor]:
        from .draw import render

        scene = render(
            list(classnames),
            label,
            rng if isinstance(rng, random.Random) else random.Random(rng),
            image_size,
            noise_std=noise_std,
        )
        assert scene.mask is not None, "render() returns the object's mask"
        image = torch.from_numpy(np.asarray(scene.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return image, torch.from_numpy(scene.mask)

    def can_draw(self, classnames: Sequence[str]) -> list[str]:
        from .draw import DRAWERS

        return [c for c in classnames if c not in DRAWERS]


class EmbeddedAdapter(ModelAdapter):
    name = "embedded"
    summary = "embedded:PRESET: the procedural world's tiny CLIP, built on first use and cached."
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
        return loaded

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        return self._format().save(loaded, model, out_dir)
