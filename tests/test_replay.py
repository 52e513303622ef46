"""The calibrated cascade's choice of trigger (the smallest tail) and its offline replay from a plain
run's record (invertune_plugin/replay.py, benchmarks/replay.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from invertune_plugin.cascade import Detector, Finding, run_cascade
from invertune_plugin.replay import replay, replay_gates
from toolbox.null import CleanNull, Statistic
from toolbox.zoo.outcome import MemberOutcome

ALPHA = 0.05
CLEAN = (-3.0, -2.5, -2.0, -2.8, -2.2, -2.6, -2.4, -2.7)  # each detector's strongest finding on clean models
STATS = {n: Statistic("linear", CLEAN) for n in ("inversion", "patch", "stripes")}
NULL = CleanNull("invertune", {}, STATS, tuple(f"ref-{i}" for i in range(len(CLEAN))))


def detector(name: str, found: list[tuple[str, float, bool]]) -> Detector:
    """A detector that finds (class, strength, past its gates) candidates, in that order."""

    class Planted(Detector):
        needs_race = False

        def search(self, ctx):
            return [
                Finding(name, c, None, passed, 1.0 if passed else 0.5, {"class": c}, strength=s)
                for c, s, passed in found
            ]

    Planted.name, Planted.label = name, name
    return Planted(None)


def cascade(*found: list[tuple[str, float, bool]]) -> list[Detector]:
    return [detector(n, f) for n, f in zip(("inversion", "patch", "stripes"), found)]


def tail(f: Finding) -> float:
    return NULL.adjusted(f.detector, round(f.strength, 4))


def calibrated(dets: list[Detector], pick: str) -> tuple:
    result = run_cascade(
        dets,
        SimpleNamespace(timings={}, ident=None),
        lambda f: tail(f) <= ALPHA,
        rank=tail if pick == "strongest" else None,
    )
    return result, record(result, len(dets))


def record(result, n: int) -> dict:
    return {"cascade": result.steps, "statistics_complete": len(result.steps) == n}


# patch finds a natural attractor the null calls; stripes, later, the planted trigger, far stronger
ATTRACTOR = ([("necktie", -2.9, False)], [("badger", 0.0, False), ("necktie", -3.0, False)], [("necktie", 3.0, True)])


def test_the_calibrated_trigger_is_the_smallest_tail_not_the_first_the_null_calls():
    assert tail(Finding("patch", "badger", None, False, 0.5, {}, strength=0.0)) <= ALPHA  # the attractor is called
    first, _ = calibrated(cascade(*ATTRACTOR), "first")
    assert (first.finding.target, [s["detector"] for s in first.steps]) == ("badger", ["inversion", "patch"])
    strongest, _ = calibrated(cascade(*ATTRACTOR), "strongest")
    assert strongest.finding.target == "necktie" and strongest.detector.name == "stripes"
    assert [s["detector"] for s in strongest.steps] == ["inversion", "patch", "stripes"]
    tie, _ = calibrated(cascade([("yarn", 3.0, True)], [("comet", 3.0, True)], []), "strongest")
    assert tie.finding.target == "yarn"  # equal tails: the earlier detector's


@pytest.mark.parametrize("pick", ["strongest", "first"])
@pytest.mark.parametrize(
    "found",
    [
        ATTRACTOR,
        ([("yarn", -2.9, False)], [("comet", -2.5, False)], [("skis", -2.7, False)]),  # clean: nothing called
        ([("comet", 4.0, True)], [("yarn", -2.4, False)], [("skis", -2.3, False)]),  # the first detector: both agree
    ],
)
def test_a_complete_plain_record_replays_to_what_the_calibrated_run_says(found, pick):
    plain = run_cascade(cascade(*found), SimpleNamespace(timings={}, ident=None), full=True)
    result, calibrated_record = calibrated(cascade(*found), pick)
    got = replay(record(plain, 3), NULL, ALPHA, pick)
    said = NULL.assess({s["detector"]: max(f["strength"] for f in s["findings"]) for s in result.steps}, ALPHA)
    assert got is not None and got.exact
    assert got.backdoored == (result.verdict.backdoored is True) and got.target == result.finding.target
    assert got.score == pytest.approx(-math.log10(said["bound"]), abs=1e-6)
    assert replay(calibrated_record, NULL, ALPHA, pick) == got  # a calibrated record replays to itself


def test_a_plain_record_the_gates_cut_short_says_what_it_can():
    cut = run_cascade(cascade(*ATTRACTOR[:1], [("necktie", 1.0, True)], []), SimpleNamespace(timings={}, ident=None))
    strongest = replay(record(cut, 3), NULL, ALPHA)  # the null calls patch's finding: backdoored, the rest unknown
    assert strongest.backdoored and not strongest.exact and not strongest.as_plain
    assert replay(record(cut, 3), NULL, ALPHA, "first").exact  # "first" stops where the record does
    quiet = run_cascade(cascade([("yarn", -2.9, True)], [], []), SimpleNamespace(timings={}, ident=None))
    assert replay(record(quiet, 3), NULL, ALPHA) is None  # the gates stopped where the null would not have
    assert replay({"target_given": True}, NULL, ALPHA) is None


def test_a_calibrated_record_replays_exactly_to_what_the_gates_say():
    for found in (ATTRACTOR, ([("comet", -2.9, False)], [("yarn", 0.5, True)], [("skis", 9.0, True)])):
        gates = run_cascade(cascade(*found), SimpleNamespace(timings={}, ident=None))
        _, calibrated_record = calibrated(cascade(*found), "strongest")
        got = replay_gates(calibrated_record)
        assert (got.backdoored, got.target) == (True, gates.finding.target) and got.score == round(gates.score, 4)
    nothing = ([("comet", -2.9, False)], [("yarn", -2.5, False)], [("skis", -2.7, False)])
    _, calibrated_record = calibrated(cascade(*nothing), "strongest")
    got = replay_gates({**calibrated_record, "backdoored": False})
    assert not got.backdoored and got.as_plain
    assert replay_gates({"cascade": calibrated_record["cascade"][:1], "statistics_complete": False}) is None


def test_the_benchmark_scores_a_kept_plain_evaluation_under_the_null(tmp_path, monkeypatch, capsys):
    """benchmarks/replay.py over kept outcomes: the attractor member is called with its real target."""
    spec = importlib.util.spec_from_file_location(
        "bench_replay", Path(__file__).parents[1] / "benchmarks" / "replay.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    members = {"z-0": ("backdoored", ATTRACTOR), "z-1": ("clean", ([("comet", -2.9, False)], [], []))}
    for member, (label, found) in members.items():
        plain = run_cascade(cascade(*found), SimpleNamespace(timings={}, ident=None), full=True)
        (tmp_path / "kept" / member / "run").mkdir(parents=True)
        detection = {**record(plain, 3), "null_key": {}, "backdoored": plain.verdict.backdoored}
        (tmp_path / "kept" / member / "run" / "result.json").write_text(json.dumps({"detection": detection}))
        row = MemberOutcome(
            member,
            label,
            "sig" if label == "backdoored" else "clean-finetune",
            "vit",
            None,
            1.0,
            plain.verdict.backdoored,
            plain.finding.target,
            0.9,
            0.9,
            0.99 if label == "backdoored" else None,
            None,
            1.0,
        )
        if label == "backdoored":
            row.true_target = "necktie"
        (tmp_path / "kept" / member / "outcome.json").write_text(json.dumps({"code": "c1", "outcome": row.to_dict()}))
    NULL.write(tmp_path / "null.json")
    monkeypatch.setattr("sys.argv", ["replay.py", str(tmp_path / "kept"), "--calibration", str(tmp_path / "null.json")])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "TP 1 · FP 0 · TN 1 · FN 0" in out and "| backdoored | right |" in out and "code c1" in out
    (tmp_path / "kept" / "z-1" / "outcome.json").write_text('{"code": "c1"}')
    monkeypatch.setattr("sys.argv", ["replay.py", str(tmp_path / "kept"), "--calibration", str(tmp_path / "null.json")])
    with pytest.raises(SystemExit, match="z-1: not a kept outcome"):
        bench.main()
    monkeypatch.setattr("sys.argv", ["replay.py", str(tmp_path / "kept")])
    with pytest.raises(SystemExit):
        bench.main()
    assert "needs --calibration" in capsys.readouterr().err
