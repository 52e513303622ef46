"""The six attacks of the InverTune paper, a plugin of their own (entry point ``attacks``)."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_attacks(register) -> None:
    from .catalog import ATTACKS

    for cls in ATTACKS:
        register(cls)
