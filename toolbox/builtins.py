"""The host's own plugin: the `none` defense (every run has a baseline row) and the standard
metrics the evaluation protocol names (CA, ASR, retrieval recall and retrieval ASR)."""

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


@hookimpl
def register_metrics(register) -> None:
    from .metrics import METRICS

    for cls in METRICS:
        register(cls)
