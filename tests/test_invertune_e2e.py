"""InverTune end to end on the smoke world: a backdoored smoke model comes out with lower ASR,
the artifacts are written, and the result says what ran."""

from __future__ import annotations

import csv
import json

import pytest

from toolbox import results
from toolbox.cli import main

pytestmark = pytest.mark.slow

ATTACK = ["--attack", "badnet", "--attack-param", "poison_rate=0.1", "--attack-param", "epochs=6"]
# Fewer steps for CI; purify_when_clean so the test exercises the pipeline whatever the verdict
# heuristic (calibrated on the default preset) says about the smaller smoke model. The inversion
# detector alone: on the smoke world the patch detector's best bottom-right patch makes a clean
# "ferry" (a natural attractor) and wins the cascade; telling those apart is calibration's work.
FAST = [
    "-p",
    "cascade=inversion",
    "-p",
    "identify.race_steps=15",
    "-p",
    "invert.steps=200",
    "-p",
    "tune.steps=100",
    "-p",
    "n_images=256",
    "-p",
    "purify_when_clean=true",
    "-p",
    "detectors.inversion.candidates=2",
]


@pytest.fixture(scope="module")
def purified(tmp_path_factory, smoke_world):
    from toolbox import plugins

    plugins.reset_host()
    out = tmp_path_factory.mktemp("invertune")
    assert main(["run", "--defense", "invertune", "--preset", "smoke", "--out", str(out), *ATTACK, *FAST]) == 0
    return out, json.loads((out / "result.json").read_text())


def test_pipeline_lowers_asr_on_a_backdoored_smoke_model(purified):
    _, doc = purified
    before, after = doc["metrics"]["before"], doc["metrics"]["after"]
    assert before["asr"] > 0.5
    assert after["asr"] < before["asr"] / 2, (before["asr"], after["asr"])
    assert after["ca"] > before["ca"] - 0.1
    assert doc["detection"]["target"] == "mushroom"
    assert "asr_inverted" in before and "asr_inverted" in after
    inversion = doc["detection"]["cascade"][0]  # inverted toward both candidates, the chosen one first
    assert inversion["detector"] == "inversion"
    assert {f["class"] for f in inversion["findings"]} == {r["class"] for r in doc["detection"]["ranking_top5"][:2]}


def test_bf16_runs_every_stage_for_a_few_steps(purified, tmp_path):
    """bf16 autocast runs on the CPU too. A few steps of each stage (the quick profile), not a
    pipeline: where the CPU lacks native bf16 it is emulated, many times slower than fp32."""
    out = tmp_path / "bf16"
    argv = ["run", "--defense", "invertune", "--preset", "smoke", "--out", str(out), *ATTACK]
    assert main([*argv, "-p", "profile=quick", "-p", "precision=bf16"]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["defense"]["params"]["precision"] == "bf16" and doc["defense"]["params"]["profile"] == "quick"
    assert {"defense.identify", "defense.tune"} <= set(doc["timings_s"])
    after = doc["metrics"]["after"]
    assert 0.0 <= after["ca"] <= 1.0 and 0.0 <= after["asr"] <= 1.0  # finite, in range: nothing overflowed


def test_result_records_profile_stages_and_artifacts(purified):
    out, doc = purified
    results.validate(doc)
    assert doc["defense"]["params"]["profile"] == "default"
    assert doc["defense"]["params"]["invert"]["steps"] == 200
    assert {"defense.identify", "defense.invert", "defense.tune"} <= set(doc["timings_s"])
    for name in (
        "target_ranking",
        "target_shift_chart",
        "inverted_mask",
        "inverted_pattern",
        "inverted_example",
        "inverted_trigger",
        "layer_impact",
        "model",
    ):
        assert (out / doc["artifacts"][name]).exists(), name
    rows = list(csv.DictReader((out / doc["artifacts"]["target_ranking"]).open()))
    assert rows[0]["class"] == doc["detection"]["ranking_top5"][0]["class"]
    layers = list(csv.DictReader((out / doc["artifacts"]["layer_impact"]).open()))
    assert any(r["selected"] == "1" for r in layers)


def test_known_target_skips_identification(host, smoke_world, tmp_path):
    out = tmp_path / "given"
    argv = [
        "run",
        "--defense",
        "invertune",
        "--preset",
        "smoke",
        "--out",
        str(out),
        *ATTACK,
        "-p",
        "target=mushroom",
        "-p",
        "invert.steps=100",
        "-p",
        "tune.steps=20",
        "-p",
        "n_images=128",
    ]
    assert main(argv) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["detection"]["target_given"] is True and doc["detection"]["backdoored"] is None
    assert "defense.identify" not in doc["timings_s"]


def test_unknown_profile_and_parameter_exit_2(host, capsys):
    assert main(["run", "--defense", "invertune", "-p", "profile=fastest"]) == 2
    assert "profile" in capsys.readouterr().err
    assert main(["run", "--defense", "invertune", "-p", "invert.nosuch=1"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_bad_stage_settings_are_refused(host, capsys):
    assert main(["run", "--defense", "invertune", "-p", "detectors.inversion.rounds=0"]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err
    assert main(["run", "--defense", "invertune", "-p", "invert=0.8"]) == 2
    assert "group of settings" in capsys.readouterr().err
    assert main(["run", "--defense", "invertune", "-p", "detectors=0.8"]) == 2
    assert "named groups of settings" in capsys.readouterr().err
