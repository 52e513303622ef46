"""docs/plugins.md: its example plugin registers, runs end to end, and its detector joins the cascade."""

from __future__ import annotations

import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import torch

from toolbox.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def guide(register_plugin, monkeypatch):
    """The guide's Python blocks, executed as one module and registered like an installed plugin."""
    from invertune_plugin import cascade

    module = types.ModuleType("guide_plugin")
    monkeypatch.setitem(sys.modules, "guide_plugin", module)  # dataclasses look their module up there
    for block in blocks("python"):
        exec(compile(block, str(DOC), "exec"), module.__dict__)  # noqa: S102  (our own documentation)
    monkeypatch.setitem(cascade.DETECTORS, "corner", module.Corner)  # @cascade.register's entry, undone after
    register_plugin(module, "guide-plugin")
    return module


@pytest.mark.slow
def test_the_guides_defense_runs_as_documented(guide, smoke_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (command,) = [ln for b in blocks("bash") for ln in b.splitlines() if ln.startswith("toolbox run")]
    assert main(shlex.split(command)[1:]) == 0
    doc = json.loads((tmp_path / "runs" / "unchanged" / "result.json").read_text())
    assert doc["defense"]["plugin"] == "guide-plugin" and doc["detection"] == {"backdoored": True}
    assert (tmp_path / "runs" / "unchanged" / doc["artifacts"]["note"]).read_text().endswith("clean images seen\n")
    assert doc["metrics"]["after"]["ca"] == doc["metrics"]["before"]["ca"]


def test_the_guides_detector_joins_the_cascade_by_name(guide):
    from invertune_plugin.defense import InverTune

    cfg = InverTune.configure({"cascade": "inversion,corner", "detectors.corner.colour": "0.5"})
    corner = InverTune(cfg).detectors()[1]
    assert isinstance(corner, guide.Corner) and corner.config.colour == 0.5
    ctx = types.SimpleNamespace(ident=types.SimpleNamespace(target="cat"), images=torch.zeros(2, 3, 32, 32))
    (finding,) = corner.search(ctx)
    assert finding.target == "cat" and finding.record() == {"class": "cat", "colour": 0.5, "passed": False,
                                                            "gate_ratio": 0.0}
    x = torch.zeros(1, 3, 32, 32)
    assert float(finding.trigger(x)[0, :, -4:, -4:].min()) == 0.5 and float(finding.trigger(x)[0, :, :-4].max()) == 0
