"""Interfaces a plugin implements or receives. Small on purpose.

Every registered class is a :class:`Component`: a ``name``, a one-line ``summary``,
a ``reference`` (paper or source), and a ``Config`` dataclass whose field defaults
are the documented parameters (listed in ``registry.yaml``).

Import every name from ``toolbox.api``: the submodules are its layout, not its contract
(:mod:`.config` components and their configs, :mod:`.models`, :mod:`.data`, and
:mod:`.components` for defenses, attacks, dataset defenses and worlds).
"""

from __future__ import annotations

from ..errors import InputError  # raised by a plugin: the user's input or setting is bad (exit 2, not a failed run)
from .components import (
    Attack,
    AttackContext,
    BuiltWorld,
    DataScanContext,
    DataScanOutcome,
    DatasetDefense,
    Defense,
    DefenseContext,
    DefenseOutcome,
    PoisonedData,
    World,
)
from .config import (
    HOOK_FOR_KIND,
    KINDS,
    Component,
    Kind,
    NoConfig,
    apply_overrides,
    build_config,
    check_config,
    config_defaults,
    config_values,
)
from .data import DataKind, DatasetAdapter, ImageData, InMemoryImages
from .models import ClipModel, LoadedModel, ModelAdapter, state_dict_sha256

__all__ = [
    "HOOK_FOR_KIND",
    "KINDS",
    "Attack",
    "AttackContext",
    "BuiltWorld",
    "ClipModel",
    "Component",
    "DataKind",
    "DataScanContext",
    "DataScanOutcome",
    "DatasetAdapter",
    "DatasetDefense",
    "Defense",
    "DefenseContext",
    "DefenseOutcome",
    "ImageData",
    "InMemoryImages",
    "InputError",
    "Kind",
    "LoadedModel",
    "ModelAdapter",
    "NoConfig",
    "PoisonedData",
    "World",
    "apply_overrides",
    "build_config",
    "check_config",
    "config_defaults",
    "config_values",
    "state_dict_sha256",
]
