"""Hook specifications: the whole contract between the host and its plugins.

A plugin is a module (or object) with ``@hookimpl`` functions, announced in the
``toolbox.plugins`` entry-point group. Each hook receives a ``register`` callback;
the plugin calls it once per class it provides::

    from toolbox.hookspecs import hookimpl

    @hookimpl
    def register_defenses(register):
        register(MyDefense)

The host owns the registry: it records which plugin registered what, reports name
clashes, and keeps going when one plugin's hook raises.
"""

from __future__ import annotations

from collections.abc import Callable

from pluggy import HookimplMarker, HookspecMarker

PROJECT = "toolbox"
ENTRY_POINT_GROUP = "toolbox.plugins"

hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)

# ``register(cls)`` or ``register(cls, name="other-name")``.
Register = Callable[..., None]


@hookspec
def register_defenses(register: Register) -> None:
    """Register :class:`toolbox.api.Defense` subclasses."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register :class:`toolbox.api.Attack` subclasses."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register metric classes (torchmetrics ``Metric`` subclasses with a ``name``)."""


@hookspec
def register_model_adapters(register: Register) -> None:
    """Register :class:`toolbox.api.ModelAdapter` subclasses (checkpoint formats)."""


@hookspec
def register_dataset_adapters(register: Register) -> None:
    """Register :class:`toolbox.api.DatasetAdapter` subclasses (dataset formats)."""


@hookspec
def register_dataset_defenses(register: Register) -> None:
    """Register :class:`toolbox.api.DatasetDefense` subclasses (they flag poisoned training samples)."""


@hookspec
def register_worlds(register: Register) -> None:
    """Register :class:`toolbox.api.World` subclasses (presets that build a clean model and its data)."""


@hookspec
def register_detectors(register: Register) -> None:
    """Register trigger-search detectors for a defense's cascade (InverTune's ``cascade.Detector``)."""
