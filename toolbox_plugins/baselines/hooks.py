"""The baseline defenses (FT, CleanCLIP, CleanerCLIP, PAR), a plugin of their own (entry point
``baselines``)."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_defenses(register) -> None:
    from .defenses import BASELINES

    for cls in BASELINES:
        register(cls)
