"""The model and dataset formats, a host built-in plugin (``toolbox.plugins.DEFAULT_PLUGINS``):
registered like any plugin, so a third-party format is one more ``register_model_adapters``."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_model_adapters(register) -> None:
    from .models import MODEL_ADAPTERS

    for cls in MODEL_ADAPTERS:
        register(cls)


@hookimpl
def register_dataset_adapters(register) -> None:
    from .datasets import DATASET_ADAPTERS

    for cls in DATASET_ADAPTERS:
        register(cls)
