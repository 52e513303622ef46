"""The InverTune plugin's registrations, announced in the ``toolbox.plugins`` entry-point group.

The plugin registers itself exactly as a third-party package would; ``registry.yaml``
mirrors what these hooks register (a test keeps the two equal).
"""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_defenses(register) -> None:
    from .baselines import BASELINES
    from .defense import InverTune

    register(InverTune)
    for cls in BASELINES:
        register(cls)


@hookimpl
def register_attacks(register) -> None:
    from .attacks.catalog import ATTACKS

    for cls in ATTACKS:
        register(cls)


@hookimpl
def register_metrics(register) -> None:
    from .metrics import METRICS

    for cls in METRICS:
        register(cls)


@hookimpl
def register_model_adapters(register) -> None:
    from adapters.models import MODEL_ADAPTERS

    for cls in MODEL_ADAPTERS:
        register(cls)


@hookimpl
def register_dataset_adapters(register) -> None:
    from adapters.datasets import DATASET_ADAPTERS

    for cls in DATASET_ADAPTERS:
        register(cls)
