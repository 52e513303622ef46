"""The host's own plugin: the `none` defense, so every run has a baseline row."""

from __future__ import annotations

from .api import Defense, DefenseContext, DefenseOutcome
from .hookspecs import hookimpl


class NoDefense(Defense):
    name = "none"
    summary = "No defense: reports the suspect model's own metrics (the baseline row)."
    reference = "-"

    def defend(self, ctx: DefenseContext) -> DefenseOutcome:
        return DefenseOutcome(model=ctx.model, info={"modified": False})


@hookimpl
def register_defenses(register) -> None:
    register(NoDefense)
