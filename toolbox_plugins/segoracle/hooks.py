"""SegOracle's registration (entry point ``segoracle``): a defense, run by ``toolbox run``."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_defenses(register) -> None:
    from .segoracle import SegOracle

    register(SegOracle)
