"""The layering rule, in every direction (docs/architecture.md): the host imports no plugin and no
concrete format; a plugin imports the host's public contract (``toolbox.PUBLIC_MODULES``, the
shared primitives included) and its own package, never another plugin. Read from the source with
``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import toolbox

ROOT = Path(__file__).resolve().parents[1]
TOOLBOX_DIR = ROOT / "toolbox"
# Each plugin package of this distribution: its files may import only the contract and themselves.
PLUGINS = {
    "invertune_plugin": ROOT / "invertune_plugin",
    "adapters": ROOT / "adapters",
    **{
        f"toolbox_plugins.{p.name}": p
        for p in sorted((ROOT / "toolbox_plugins").iterdir())
        if (p / "__init__.py").is_file()
    },
}
PLUGIN_ROOTS = ("invertune_plugin", "adapters", "toolbox_plugins")


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, text: str | None = None) -> list[str]:
    """Every import in ``path`` (in functions too), as absolute dotted names; ``from pkg import sub``
    counts as ``pkg.sub`` when ``sub`` is a module of ``pkg``."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    text = path.read_text(encoding="utf-8") if text is None else text
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.append(base)
            folder = ROOT.joinpath(*base.split("."))
            names += [
                f"{base}.{a.name}"
                for a in node.names
                if (folder / f"{a.name}.py").exists() or (folder / a.name / "__init__.py").exists()
            ]
    return names


def _sources(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, folder
    return files


def _is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_host_imports_no_plugin_and_no_format():
    bad = [
        f"{path.relative_to(ROOT)}: imports {name}"
        for path in _sources(TOOLBOX_DIR)
        for name in _imports(path)
        if any(_is_under(name, p) for p in PLUGIN_ROOTS)
    ]
    assert not bad, "the host imports a plugin:\n" + "\n".join(bad)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_a_plugin_imports_only_the_public_contract_and_itself(plugin):
    bad = []
    for path in _sources(PLUGINS[plugin]):
        for name in _imports(path):
            if _is_under(name, "toolbox") and name not in toolbox.PUBLIC_MODULES:
                bad.append(f"{path.relative_to(ROOT)}: imports host machinery {name}")
            elif (
                any(_is_under(name, p) for p in PLUGIN_ROOTS)
                and not _is_under(name, plugin)
                and name != "toolbox_plugins"
            ):
                bad.append(f"{path.relative_to(ROOT)}: imports another plugin, {name}")
    assert not bad, "\n".join(bad)


def test_shared_primitives_import_no_host_machinery_and_no_plugin():
    """The primitives are what plugins share: they stand on torch and each other alone."""
    bad = [
        f"{path.relative_to(ROOT)}: imports {name}"
        for path in _sources(TOOLBOX_DIR / "primitives")
        for name in _imports(path)
        if (_is_under(name, "toolbox") and not _is_under(name, "toolbox.primitives"))
        or any(_is_under(name, p) for p in PLUGIN_ROOTS)
    ]
    assert not bad, "\n".join(bad)


def test_every_public_module_exists():
    missing = [
        m
        for m in toolbox.PUBLIC_MODULES
        if not (
            ROOT.joinpath(*m.split(".")).with_suffix(".py").is_file()
            or (ROOT.joinpath(*m.split(".")) / "__init__.py").is_file()
        )
    ]
    assert not missing, missing


def test_the_layering_scan_sees_relative_and_absolute_imports():
    """The checker itself: a relative import out of a plugin is resolved, not missed."""
    probe = ROOT / "toolbox_plugins" / "attacks" / "probe.py"
    names = _imports(probe, "from ..segoracle import hooks\nfrom toolbox import plugins\n")
    assert "toolbox_plugins.segoracle.hooks" in names and "toolbox.plugins" in names
