"""DBOM's registration (entry point ``dbom``): a dataset defense, run by ``toolbox scan-data``."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_dataset_defenses(register) -> None:
    from .dbom import Dbom

    register(Dbom)
