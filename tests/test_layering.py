"""Plugins and adapters use only the host's public contract (``toolbox.PUBLIC_MODULES``), and
adapters do not depend on the plugin. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import toolbox

ROOT = Path(__file__).resolve().parents[1]
TOOLBOX_DIR = ROOT / "toolbox"


def _imports(path: Path) -> list[str]:
    """Every absolute import in ``path`` (in functions too), as dotted module names; ``from pkg
    import sub`` counts as ``pkg.sub`` when ``sub`` is a toolbox submodule."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            if node.module == "toolbox":
                names += [f"toolbox.{a.name}" for a in node.names
                          if (TOOLBOX_DIR / f"{a.name}.py").exists() or (TOOLBOX_DIR / a.name).is_dir()]
    return names


def _sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    return files


def test_plugin_and_adapters_import_only_the_public_contract():
    bad = [f"{path.relative_to(ROOT)}: imports {name}"
           for package in ("adapters", "invertune_plugin") for path in _sources(package)
           for name in _imports(path)
           if (name == "toolbox" or name.startswith("toolbox.")) and name not in toolbox.PUBLIC_MODULES]
    assert not bad, "host machinery imported outside the public contract:\n" + "\n".join(bad)


def test_adapters_do_not_import_the_plugin():
    bad = [f"{path.relative_to(ROOT)}: imports {name}" for path in _sources("adapters") for name in _imports(path)
           if name == "invertune_plugin" or name.startswith("invertune_plugin.")]
    assert not bad, "adapters depend on the plugin:\n" + "\n".join(bad)
