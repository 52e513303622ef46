"""The InverTune defense's registration, announced in the ``toolbox.plugins`` entry-point group
exactly as a third-party package would. The paper's attacks and the baseline defenses are
plugins of their own (``attacks.hooks``, ``baselines.hooks``), so each can be blocked alone."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_defenses(register) -> None:
    from .defense import InverTune

    register(InverTune)


@hookimpl
def register_detectors(register) -> None:
    from .detectors import DETECTORS

    for cls in DETECTORS:
        register(cls)
