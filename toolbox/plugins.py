"""Plugin manager and registry: discovery, allow/block lists, isolation of broken plugins.

Modelled on simonw/llm's ``plugins.py``: one module-level plugin manager ``pm``; the
host's built-ins (``DEFAULT_PLUGINS``: the ``none`` defense, the standard metrics, the model
and dataset adapters) are registered on it like any other plugin and always load; everything
else arrives through the ``toolbox.plugins`` entry-point group (InverTune, the attacks and the
baselines of this distribution included, each blockable alone). Tests add throwaway plugins
with ``pm.register(obj, name=...)`` and remove them afterwards.

Environment variables:

``TOOLBOX_LOAD_PLUGINS``  comma-separated allow-list of entry-point plugin names; when
                          set (even empty), only those are loaded.
``TOOLBOX_BLOCK_PLUGINS`` comma-separated block-list; those are never loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .api import HOOK_FOR_KIND, KINDS, Kind, config_defaults

ALLOW_ENV = "TOOLBOX_LOAD_PLUGINS"
BLOCK_ENV = "TOOLBOX_BLOCK_PLUGINS"
HOST_PLUGIN = "toolbox"
# The host's own plugin, registered first and never blocked; the distribution's other always-on
# plugins (the formats) arrive through DEFAULT_GROUP, so the host names no concrete format.
DEFAULT_PLUGINS = {HOST_PLUGIN: "toolbox.builtins"}
DEFAULT_GROUP = "toolbox.default_plugins"
# What a broken plugin may raise without taking the host down: SystemExit too (sys.exit() at
# import or in a hook); Ctrl-C still stops the run.
PLUGIN_FAILURES = (Exception, SystemExit)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """One registered class, and the plugin that registered it."""

    kind: Kind
    name: str
    obj: type
    plugin: str

    @property
    def class_path(self) -> str:
        return f"{self.obj.__module__}.{self.obj.__qualname__}"

    @property
    def summary(self) -> str:
        return str(getattr(self.obj, "summary", "") or "")

    @property
    def reference(self) -> str:
        return str(getattr(self.obj, "reference", "") or "")

    @property
    def params(self) -> dict[str, Any]:
        return config_defaults(self.obj)


class UnknownNameError(KeyError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.kind, self.name, self.known = kind, name, known

    def __str__(self) -> str:
        listed = ", ".join(self.known) or "(none registered)"
        return f"unknown {self.kind.replace('_', ' ')} {self.name!r}; registered: {listed}"


@dataclass
class Registry:
    """What the loaded plugins registered, by kind and name; the first registration wins."""

    entries: dict[str, dict[str, Registration]] = field(default_factory=lambda: {k: {} for k in KINDS})
    problems: list[str] = field(default_factory=list)

    def add(self, reg: Registration) -> None:
        existing = self.entries[reg.kind].get(reg.name)
        if existing is not None:
            self.problems.append(
                f"name clash: {reg.kind} {reg.name!r} from plugin {reg.plugin!r} ignored; "
                f"already registered by plugin {existing.plugin!r}"
            )
            return
        self.entries[reg.kind][reg.name] = reg

    def get(self, kind: Kind, name: str) -> Registration:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, self.names(kind)) from None

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.entries[kind])

    def __iter__(self) -> Iterator[Registration]:
        for kind in KINDS:
            yield from (self.entries[kind][n] for n in sorted(self.entries[kind]))


@dataclass
class PluginInfo:
    name: str
    version: str | None
    distribution: str | None
    hooks: list[str]
    status: str = "loaded"  # or "skipped"
    problem: str | None = None  # why it was skipped


def _env_list(env: Mapping[str, str], key: str) -> set[str] | None:
    if key not in env:
        return None
    return {p.strip() for p in env[key].split(",") if p.strip()}


def warn(message: str) -> None:
    log.warning("%s", message)


class PluginHost:
    """The plugin manager plus what the host knows about each plugin."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.dist_info: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self.load_problems: list[str] = []
        self.skipped: dict[str, str] = {}  # plugin name -> why it contributes nothing
        self._load_skipped: dict[str, str] = {}  # of those, the ones that failed to load at all
        self._entry_points_loaded = False

    def load_builtins(self) -> None:
        from . import __version__

        for name, module in DEFAULT_PLUGINS.items():
            self.pm.register(importlib.import_module(module), name=name)
            self.dist_info[name] = ("invertune-toolbox", __version__)
        for ep in importlib.metadata.entry_points(group=DEFAULT_GROUP):  # not subject to allow/block lists
            if not self.pm.has_plugin(ep.name):
                self.pm.register(ep.load(), name=ep.name)
                dist = getattr(ep, "dist", None)
                self.dist_info[ep.name] = (
                    (dist.metadata["Name"], dist.version) if dist is not None else ("invertune-toolbox", __version__)
                )

    def load_entry_points(self, env: Mapping[str, str] | None = None) -> None:
        """Load plugins from the entry-point group, honouring allow/block lists.

        A plugin that fails to import or to validate is reported and skipped.
        """
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        env = os.environ if env is None else env
        allow, block = _env_list(env, ALLOW_ENV), _env_list(env, BLOCK_ENV) or set()
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if ep.name in block or (allow is not None and ep.name not in allow):
                continue
            if self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            if dist is not None:
                self.dist_info[ep.name] = (dist.metadata["Name"], dist.version)
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except PLUGIN_FAILURES as err:  # a broken plugin must not break the host
                self._skip(ep.name, f"could not be loaded: {type(err).__name__}: {err}")
                continue
            try:
                self.pm.check_pending()
            except pluggy.PluginValidationError as err:
                self.pm.unregister(name=ep.name)
                self._skip(ep.name, f"implements unknown hooks: {err}")

    def _skip(self, name: str, why: str) -> None:
        self._load_skipped[name] = why
        self.skipped[name] = why
        message = f"plugin {name!r} is skipped: {why}"
        self.load_problems.append(message)
        warn(message)

    def plugins(self) -> list[PluginInfo]:
        """Every plugin the host knows of, loaded or skipped (with why); blocked ones are absent."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            dist, version = self.dist_info.get(name, (None, None))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            problem = self.skipped.get(name)
            out.append(
                PluginInfo(
                    name=name,
                    version=version,
                    distribution=dist,
                    hooks=hooks,
                    status="skipped" if problem else "loaded",
                    problem=problem,
                )
            )
        for name, problem in self.skipped.items():
            if not self.pm.has_plugin(name):  # failed before it was registered
                dist, version = self.dist_info.get(name, (None, None))
                out.append(
                    PluginInfo(
                        name=name, version=version, distribution=dist, hooks=[], status="skipped", problem=problem
                    )
                )
        return sorted(out, key=lambda p: p.name)

    def loaded_versions(self) -> dict[str, str | None]:
        """``plugin -> version`` of the plugins that contributed to this run (recorded in results)."""
        return {p.name: p.version for p in self.plugins() if p.status == "loaded"}

    def build_registry(self, *, quiet: bool = False) -> Registry:
        """Call every register_* hook; a plugin whose hook raises contributes nothing."""
        staged: dict[str, list[Registration]] = {}
        broken: dict[str, str] = {}
        for kind in KINDS:
            caller = getattr(self.pm.hook, HOOK_FOR_KIND[kind])
            for impl in caller.get_hookimpls():
                plugin_name = impl.plugin_name
                if plugin_name in broken:
                    continue
                bucket = staged.setdefault(plugin_name, [])

                def register(
                    obj: type,
                    name: str | None = None,
                    *,
                    _kind: Kind = kind,
                    _p: str = plugin_name,
                    _bucket: list[Registration] = bucket,
                ) -> None:
                    reg_name = name or getattr(obj, "name", None)
                    if not isinstance(reg_name, str) or not reg_name:
                        raise TypeError(f"{obj!r} has no name: give it a `name` attribute or pass name=")
                    _bucket.append(Registration(kind=_kind, name=reg_name, obj=obj, plugin=_p))

                try:
                    impl.function(register=register)
                except PLUGIN_FAILURES as err:
                    broken[plugin_name] = f"{HOOK_FOR_KIND[kind]} raised {type(err).__name__}: {err}"
        registry = Registry()
        self.skipped = {**self._load_skipped, **broken}  # as of this registry: a hook fixed since counts again
        for plugin_name, regs in staged.items():
            if plugin_name in broken:
                registry.problems.append(f"plugin {plugin_name!r} is skipped: {broken[plugin_name]}")
                continue
            for reg in regs:
                registry.add(reg)
        if not quiet:
            for problem in registry.problems:
                warn(problem)
        return registry


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, with built-ins and entry-point plugins loaded."""
    global _host
    if _host is None:
        _host = PluginHost()
        _host.load_builtins()
        _host.load_entry_points()
    return _host


def reset_host() -> None:
    """Forget the loaded plugins (tests change the allow/block environment)."""
    global _host
    _host = None


class _LazyPM:
    """``toolbox.plugins.pm``: the plugin manager, created on first use."""

    def __getattr__(self, item: str) -> Any:
        return getattr(get_host().pm, item)


pm: pluggy.PluginManager = _LazyPM()  # type: ignore[assignment]
