"""`toolbox run` end to end on the smoke preset, and the result document it writes."""

from __future__ import annotations

import csv
import json

import jsonschema
import pytest
import torch

from toolbox import results
from toolbox.api import Defense, DefenseOutcome
from toolbox.cli import main
from toolbox.hookspecs import hookimpl

pytestmark = pytest.mark.slow


class ShiftDefense(Defense):
    """A throwaway defense that returns a changed copy of the model (so it is saved)."""

    name = "shift-test"
    summary = "test-only"

    def defend(self, ctx):
        model = ctx.model.clone()
        with torch.no_grad():
            model.clip.logit_scale.add_(0.01)
        (ctx.workdir / "note.txt").write_text("hello")
        return DefenseOutcome(
            model=model, detection={"backdoored": False}, artifacts={"note": "note.txt"}, timings_s={"shift": 0.0}
        )


class ShiftPlugin:
    @hookimpl
    def register_defenses(self, register):
        register(ShiftDefense)


def test_throwaway_defense_runs_end_to_end(register_plugin, smoke_world, tmp_path, capsys):
    register_plugin(ShiftPlugin(), "shift-plugin")
    out = tmp_path / "run"
    assert main(["run", "--defense", "shift-test", "--preset", "smoke", "--out", str(out), "--seed", "3"]) == 0
    doc = json.loads((out / "result.json").read_text())
    results.validate(doc)
    assert doc["defense"] == {"name": "shift-test", "params": {}, "plugin": "shift-plugin"}
    assert doc["seed"] == 3 and doc["model"]["id"] == "embedded:smoke"
    assert doc["artifacts"]["note"] == "artifacts/note.txt"
    assert (out / doc["artifacts"]["model"] / "open_clip_config.json").is_file()
    assert doc["model"]["purified_sha256"] != doc["model"]["sha256"]
    assert "defense.shift" in doc["timings_s"]
    assert "plugins" in doc["versions"] and "shift-plugin" in doc["versions"]["plugins"]
    row = next(csv.DictReader((out / "result.csv").open()))
    assert float(row["test_acc"]) == pytest.approx(doc["metrics"]["after"]["ca"])
    out_text = capsys.readouterr().out
    assert "CA (top-1)" in out_text and "artifacts/note.txt" in out_text


def test_none_defense_reports_ca_and_retrieval(host, smoke_world, tmp_path):
    out = tmp_path / "none"
    assert main(["run", "--defense", "none", "--preset", "smoke", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    before = doc["metrics"]["before"]
    assert before["ca"] >= 0.6, "the smoke model must be well above chance (1/16)"
    assert 0 <= before["ca_shift"] <= 1  # the OpenMoji split, the same classes in another hand
    assert doc["metric_config"]["ca_shift"]["source"].endswith("eval-openmoji/labels.csv")
    world = doc["model"]["world"]
    assert world["name"] == "embedded" and world["preset"] == "smoke" and world["n_classes"] == 16
    assert world["styles"] == {"eval_data": "twemoji", "shift_data": "openmoji"}
    assert 0 <= before["retrieval_recall@10"] <= 1
    assert before["asr"] is None and doc["attack"] is None
    assert doc["metrics"]["after"] == before
    assert "model" not in doc["artifacts"]  # nothing changed, nothing written
    assert doc["metric_config"]["asr"]["exclude_target_class"] is True
    assert doc["data"]["clean_data"]["n"] == smoke_world.preset.world.n_defender


def test_same_seed_same_numbers(host, smoke_world, tmp_path):
    docs = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        assert main(["run", "--defense", "none", "--preset", "smoke", "--out", str(out), "--seed", "7"]) == 0
        docs.append(json.loads((out / "result.json").read_text()))
    assert docs[0]["metrics"] == docs[1]["metrics"]


def test_schema_rejects_out_of_range_and_missing_fields():
    good = {
        "schema": "toolbox.result/1",
        "created": "x",
        "versions": {"tool": "0", "plugins": {}, "torch": "x", "open_clip": "x"},
        "model": {"id": "m", "arch": "a", "sha256": "0" * 64},
        "attack": None,
        "defense": {"name": "none", "params": {}},
        "metric_config": {"ca": {}, "asr": {}},
        "metrics": {"before": {"ca": 0.5, "asr": None}, "after": {"ca": 0.5, "asr": 0.1}},
        "detection": None,
        "timings_s": {},
        "seed": 0,
        "device": "cpu",
        "artifacts": {},
        "data": {},
    }
    results.validate(good)
    bad = json.loads(json.dumps(good))
    bad["metrics"]["after"]["asr"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        results.validate(bad)
    bad = json.loads(json.dumps(good))
    del bad["model"]["sha256"]
    with pytest.raises(jsonschema.ValidationError):
        results.validate(bad)


def test_interrupted_write_leaves_no_file(tmp_path):
    from toolbox import atomic

    target = tmp_path / "result.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_unlabelled_eval_data_is_refused(host, smoke_world, tmp_path, capsys):
    out = tmp_path / "x"
    argv = [
        "run",
        "--defense",
        "none",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--eval-data",
        str(smoke_world.world.defender_dir),
    ]
    assert main(argv) == 2
    assert "must be labelled" in capsys.readouterr().err


def test_a_new_run_clears_what_an_earlier_run_left(register_plugin, smoke_world, tmp_path):
    register_plugin(ShiftPlugin(), "shift-plugin")
    out = tmp_path / "same"
    assert main(["run", "--defense", "shift-test", "--preset", "smoke", "--out", str(out)]) == 0
    assert (out / "model").exists() and (out / "artifacts" / "note.txt").exists()
    assert main(["run", "--defense", "none", "--preset", "smoke", "--out", str(out)]) == 0
    assert not (out / "model").exists() and not (out / "artifacts" / "note.txt").exists()
