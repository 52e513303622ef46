"""What the loaded plugins registered, for plugins: a plugin finds another's component by kind and
name here (a world, a model adapter, a detector), never by importing it."""

from __future__ import annotations

from .api import Kind
from .plugins import get_host


def registered(kind: Kind) -> dict[str, type]:
    """Every registered class of ``kind``, by name."""
    registry = get_host().build_registry(quiet=True)
    return {name: reg.obj for name, reg in registry.entries[kind].items()}


def lookup(kind: Kind, name: str) -> type:
    """The class registered as ``name``; an unknown name is a ``KeyError`` that lists the known ones."""
    return get_host().build_registry(quiet=True).get(kind, name).obj


__all__ = ["lookup", "registered"]
