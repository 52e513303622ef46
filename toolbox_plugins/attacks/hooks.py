"""The six attacks of the InverTune paper and the zoo's trigger families, a plugin of their own
(entry point ``attacks``)."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_attacks(register) -> None:
    from .adaptive import Evasive
    from .catalog import ATTACKS
    from .families import FAMILIES

    for cls in (*ATTACKS, *FAMILIES, Evasive):
        register(cls)
