"""Files and functions a reader can hold: no module over 400 lines, no function over 80, outside
the tests (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolbox", "invertune_plugin", "adapters", "toolbox_plugins", "benchmarks")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _files() -> list[Path]:
    return sorted(f for p in PACKAGES for f in (ROOT / p).rglob("*.py"))


def test_no_module_over_the_limit():
    long = [
        f"{f.relative_to(ROOT)}: {n} lines"
        for f in _files()
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_no_function_over_the_limit():
    long = []
    for f in _files():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), filename=str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
