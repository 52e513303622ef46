"""Shared fixtures: a fresh plugin host per test, throwaway plugins, fake distributions."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import toolbox  # noqa: F401  (torchvision fix first)
from toolbox import plugins


@pytest.fixture
def host(monkeypatch) -> Iterator[plugins.PluginHost]:
    """A freshly loaded plugin host; the process-wide one is restored afterwards."""
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    plugins.reset_host()
    yield plugins.get_host()
    plugins.reset_host()


@pytest.fixture
def register_plugin(host) -> Iterator:
    """``register_plugin(obj, name)`` registers a throwaway plugin, removed after the test."""
    names: list[str] = []

    def _register(obj, name: str) -> None:
        plugins.pm.register(obj, name=name)
        names.append(name)

    yield _register
    for name in names:
        if plugins.pm.has_plugin(name):
            plugins.pm.unregister(name=name)


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install a fake distribution (a dist-info with an entry point) on sys.path.

    ``fake_distribution("acme", "acme_plugin", source)`` writes module ``acme_plugin``
    with ``source`` and declares it in the ``toolbox.plugins`` group under ``acme``.
    """

    def _make(ep_name: str, module: str, source: str, version: str = "1.2.3") -> Path:
        site = tmp_path / f"site-{ep_name}"
        site.mkdir()
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{module.replace('_', '-')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[toolbox.plugins]\n{ep_name} = {module}\n")
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delitem(sys.modules, module, raising=False)
        plugins.reset_host()
        return site

    yield _make
    plugins.reset_host()


@pytest.fixture(scope="session")
def smoke_world():
    """The smoke preset's world and tiny CLIP (built once per machine, then cached)."""
    from toolbox_plugins.world.build import ensure_embedded

    return ensure_embedded("smoke")
