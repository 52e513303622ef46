"""Every `toolbox ...` command shown in the README and in docs/ parses against the CLI, and every
`python benchmarks/...` one names a script that exists and options it defines."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from toolbox.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shown_commands(text: str) -> list[str]:
    """Commands in fenced shell blocks (continuations joined, comments dropped) and in inline code."""
    found = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            found += [part.strip() for part in line.split(" | ")]
    # inline code with options is a command too (a bare `toolbox compare` names one)
    found += [c for c in re.findall(r"`((?:toolbox |python benchmarks/)[^`]*)`", text) if " -" in c]
    return [c for c in found if c.startswith(("toolbox ", "python benchmarks/"))]


def without_optional(command: str) -> str:
    """A synopsis' optional parts (``[--out DIR]``, nested too) are left out."""
    while re.search(r"\[[^\[\]]*\]", command):
        command = re.sub(r"\s*\[[^\[\]]*\]", "", command)
    return command


COMMANDS = sorted(
    {
        (page.relative_to(ROOT).as_posix(), without_optional(c))
        for page in PAGES
        for c in shown_commands(page.read_text(encoding="utf-8"))
    }
)


def test_the_pages_show_commands():
    assert sum(c.startswith("toolbox ") for _, c in COMMANDS) >= 10
    assert any(c.startswith("python benchmarks/") for _, c in COMMANDS)


@pytest.mark.parametrize("page, command", COMMANDS)
def test_a_shown_command_is_valid(page, command):
    words = shlex.split(command)
    if words[0] == "toolbox":
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as exc:  # argparse's way of saying no
            pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")
        return
    script = ROOT / words[1]
    assert script.is_file(), f"{page}: {words[1]} does not exist"
    source = script.read_text(encoding="utf-8")
    for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert f'"{option}"' in source, f"{page}: {words[1]} defines no {option}"
