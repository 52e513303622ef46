"""FLARE's registration (entry point ``flare``): a dataset defense, run by ``toolbox scan-data``."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_dataset_defenses(register) -> None:
    from .flare import Flare

    register(Flare)
