"""The embedded world's registration (entry point ``world``): blockable alone, as long as a run
names its own ``--model`` and data."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_worlds(register) -> None:
    from .plugin import EmbeddedWorld

    register(EmbeddedWorld)


@hookimpl
def register_model_adapters(register) -> None:
    from .plugin import EmbeddedAdapter

    register(EmbeddedAdapter)
