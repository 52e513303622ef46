"""Every plugin of this distribution is blockable alone (TOOLBOX_BLOCK_PLUGINS): the rest still
loads cleanly, `--defense none` runs on a user's model, and InverTune runs on a user's model with
every other plugin blocked (the attacks included: its stages import none of them)."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from toolbox import plugins
from toolbox.cli import main
from toolbox.hookspecs import ENTRY_POINT_GROUP

OURS = ("invertune", "attacks", "baselines", "segoracle", "flare", "world", "dbom")


def _user_sources(world) -> list[str]:
    """The smoke world's model and data, named as a user names their own (no embedded: source)."""
    return [
        "--model",
        str(world.model_dir),
        "--clean-data",
        str(world.world.defender_dir),
        "--eval-data",
        str(world.world.eval_labels),
        "--classes",
        str(world.world.classes),
        "--templates",
        str(world.world.templates),
    ]


def test_this_distribution_announces_each_plugin_alone():
    names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert set(OURS) <= names


@pytest.mark.parametrize("blocked", OURS)
def test_blocking_one_plugin_leaves_the_others_loaded(blocked, host, monkeypatch):
    registry = host.build_registry()
    theirs = {(r.kind, r.name) for r in registry if r.plugin == blocked}
    assert theirs, f"{blocked} registers nothing"
    monkeypatch.setenv(plugins.BLOCK_ENV, blocked)
    plugins.reset_host()
    again = plugins.get_host()
    left = again.build_registry()
    assert not again.load_problems and not left.problems
    assert {(r.kind, r.name) for r in left} == {(r.kind, r.name) for r in registry} - theirs
    assert {p.name for p in again.plugins()} >= (set(OURS) - {blocked}) | {"toolbox", "adapters"}


@pytest.mark.slow
@pytest.mark.parametrize("blocked", OURS)
def test_defense_none_runs_on_a_users_model_with_one_plugin_blocked(blocked, host, smoke_world, tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.BLOCK_ENV, blocked)
    plugins.reset_host()
    out = tmp_path / "out"
    assert main(["run", "--defense", "none", *_user_sources(smoke_world), "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert blocked not in doc["versions"]["plugins"] and doc["metrics"]["before"]["ca"] > 0.5


@pytest.mark.slow
def test_invertune_runs_on_a_users_model_with_every_other_plugin_blocked(host, smoke_world, tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.BLOCK_ENV, ",".join(p for p in OURS if p != "invertune"))
    plugins.reset_host()
    out = tmp_path / "out"
    assert (
        main(["run", "--defense", "invertune", "-p", "profile=quick", *_user_sources(smoke_world), "--out", str(out)])
        == 0
    )
    doc = json.loads((out / "result.json").read_text())
    assert set(doc["versions"]["plugins"]) & set(OURS) == {"invertune"}
    assert doc["detection"]["verdict"] in ("backdoored", "no backdoor found")
    assert (out / doc["artifacts"]["trigger_masks"]).is_file()  # the host saved the outcome's masks
