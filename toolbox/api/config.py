"""What every registered class is: a :class:`Component` with a ``Config`` dataclass, and how a
config is built from ``KEY=VALUE`` strings, checked and recorded as plain values."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..intake.numbers import (
    MAX_COUNT,
    MAX_MAGNITUDE,
    SEED_MAX,
    bounded_int,
    finite_float,
    parse_float,
    parse_int,
    show,
)

# The kinds of component a plugin registers, and the hook that registers each.
Kind = Literal[
    "defense", "attack", "metric", "model_adapter", "dataset_adapter", "dataset_defense", "world", "detector"
]
KINDS: tuple[Kind, ...] = (
    "defense",
    "attack",
    "metric",
    "model_adapter",
    "dataset_adapter",
    "dataset_defense",
    "world",
    "detector",
)
HOOK_FOR_KIND: dict[Kind, str] = {
    "defense": "register_defenses",
    "dataset_defense": "register_dataset_defenses",
    "attack": "register_attacks",
    "metric": "register_metrics",
    "model_adapter": "register_model_adapters",
    "dataset_adapter": "register_dataset_adapters",
    "world": "register_worlds",
    "detector": "register_detectors",
}


@dataclass(frozen=True)
class NoConfig:
    """Config of a component without parameters."""


class Component:
    """Base of everything a plugin registers."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()


def config_defaults(cls: type) -> dict[str, Any]:
    """Parameter defaults of a component class, as plain JSON-able values."""
    cfg = getattr(cls, "Config", None)
    if not isinstance(cfg, type) or not dataclasses.is_dataclass(cfg):
        return {}
    try:
        return _jsonable(dataclasses.asdict(cfg()))
    except ValueError:  # a check that needs another plugin (blocked, say) must not break a listing
        return {f.name: _jsonable(_default(f)) for f in dataclasses.fields(cfg) if f.init}


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def config_values(config: Any) -> dict[str, Any]:
    """A config instance as plain JSON-able values (recorded in results)."""
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        return {}
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def build_config(cls: type, overrides: Mapping[str, str] | None = None) -> Any:
    """Instantiate ``cls.Config`` with ``KEY=VALUE`` strings from the command line.

    A class may provide ``configure(overrides)`` (e.g. to start from a named profile);
    otherwise the defaults of ``cls.Config`` are overridden field by field.
    """
    configure = getattr(cls, "configure", None)
    if callable(configure):
        config = configure(dict(overrides or {}))
    else:
        config = apply_overrides(
            getattr(cls, "Config", NoConfig)(), overrides or {}, getattr(cls, "name", cls.__name__)
        )
    check_config(config, getattr(cls, "name", ""))
    return config


def check_config(config: Any, owner: str = "") -> None:
    """Refuse nonsense that would otherwise run and write a model: a NaN or infinite number
    anywhere, a number out of its range, or a negative value where the default is a count, size,
    rate or weight (>= 0). A field whose sign means something (an angle) says so:
    ``field(metadata={"signed": True})``; one with its own range says ``metadata={"min": a, "max": b}``.
    Integers are at most 10^7 (seeds 2^32 - 1), reals at most 1e9 in magnitude, unless the field says."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):  # an instance's values are checked
        return
    try:
        default = type(config)()
    except TypeError:  # a config with required fields has no default to compare with
        default = None
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{owner}.{f.name}" if owner else f.name
        if dataclasses.is_dataclass(value):
            check_config(value, name)
            continue
        if isinstance(value, Mapping):  # named groups of settings (e.g. one per detector)
            for key, inner in value.items():
                check_config(inner, f"{name}.{key}")
            continue
        ref = None if f.metadata.get("signed") else getattr(default, f.name, None)
        if isinstance(value, (list, tuple)):
            refs = ref if isinstance(ref, (list, tuple)) and ref else (None,)
            for i, item in enumerate(value):
                _check_number(item, f"{name}[{i}]", f, refs[min(i, len(refs) - 1)])
            continue
        _check_number(value, name, f, ref)


def _check_number(value: Any, name: str, f: dataclasses.Field, ref: Any) -> None:
    """One number of a config within its range (see :func:`check_config`); anything else passes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if isinstance(ref, (int, float)) and not isinstance(ref, bool) and ref >= 0 and value < 0:
        raise ValueError(f"{name} must be >= 0 (its default {ref} is a count, size, rate or weight), got {value}")
    seedlike = isinstance(value, int) and f.name.endswith("seed")
    cap = f.metadata.get("max", SEED_MAX if seedlike else MAX_COUNT if isinstance(value, int) else MAX_MAGNITUDE)
    low = f.metadata.get("min", 0 if seedlike else -cap)
    why = (
        "the field's own range"
        if "max" in f.metadata or "min" in f.metadata
        else "a seed"
        if seedlike
        else "the bound on an integer setting: a count, a step number or a size"
        if isinstance(value, int)
        else "the bound on a real-valued setting"
    )
    if isinstance(value, int):
        bounded_int(value, name, low, cap, why)
    else:
        finite_float(value, name, low, cap, why)


def apply_overrides(config: Any, overrides: Mapping[str, str], owner: str = "") -> Any:
    """A copy of dataclass ``config`` with ``KEY=VALUE`` strings applied; ``stage.key`` reaches
    into nested dataclasses. Values are parsed by the annotated type; unknown keys are errors
    that list the known ones."""
    if not overrides:
        return config
    cfg_cls = type(config)
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    nested: dict[str, dict[str, str]] = {}
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            known = ", ".join(sorted(fields)) or "(none)"
            raise ValueError(f"{owner or cfg_cls.__name__} has no parameter {head!r}; known: {known}")
        if rest:
            nested.setdefault(head, {})[rest] = raw
        elif isinstance(getattr(config, head), Mapping):
            raise ValueError(
                f"{owner or cfg_cls.__name__}.{head} holds named groups of settings; set one, "
                f"e.g. {head}.NAME.KEY=... (names: {', '.join(getattr(config, head)) or '(none)'})"
            )
        elif dataclasses.is_dataclass(getattr(config, head)):
            raise ValueError(
                f"{owner or cfg_cls.__name__}.{head} is a group of settings; set one of them, "
                f"e.g. {head}.{dataclasses.fields(getattr(config, head))[0].name}=..."
            )
        else:
            changes[head] = _parse_value(raw, hints.get(head, str), f"{owner}.{head}" if owner else head)
    for head, sub in nested.items():
        inner = changes.get(head, getattr(config, head))
        if isinstance(inner, Mapping):  # named groups: ``head.name.key``
            changes[head] = _override_groups(inner, sub, f"{owner}.{head}" if owner else head)
            continue
        if not dataclasses.is_dataclass(inner):
            raise ValueError(f"{owner or cfg_cls.__name__}.{head} has no sub-parameters")
        changes[head] = apply_overrides(inner, sub, f"{owner}.{head}" if owner else head)
    return dataclasses.replace(config, **changes)


def _override_groups(groups: Mapping[str, Any], overrides: Mapping[str, str], owner: str) -> dict[str, Any]:
    """A mapping of named dataclass groups with ``name.key`` overrides applied to each."""
    by_group: dict[str, dict[str, str]] = {}
    for key, raw in overrides.items():
        name, _, rest = key.partition(".")
        if name not in groups or not rest:
            raise ValueError(f"{owner} has no group {name!r} to set {key!r} in; known: {', '.join(groups) or '(none)'}")
        by_group.setdefault(name, {})[rest] = raw
    return {name: apply_overrides(group, by_group.get(name, {}), f"{owner}.{name}") for name, group in groups.items()}


def _parse_value(raw: str, hint: Any, name: str = "value") -> Any:
    """``raw`` as the annotated type; numbers are finite, ASCII-written and sized (:mod:`toolbox.intake.numbers`)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: not a boolean: {show(raw)}")
    if hint is int:
        return parse_int(raw, name)  # its range is the field's: check_config states it
    if hint is float:
        return parse_float(raw, name)
    if hint is str:
        return str(raw)
    if origin in (tuple, list):
        inner = args[0] if args else str
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        items = [_parse_value(p, inner, f"{name}[{i}]") for i, p in enumerate(parts)]
        return tuple(items) if origin is tuple else items
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"{name}: {show(raw)} is not one of {args}")
        return raw
    return raw
