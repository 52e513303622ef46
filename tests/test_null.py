"""The clean null (toolbox/null.py): tail probabilities, the combination rule, the file and its refusals."""

from __future__ import annotations

import json
import os
import random

import pytest

from toolbox.errors import InputError
from toolbox.null import MIN_REFERENCES, CleanNull, Statistic, from_results, leave_one_out, read_null, select

KEY = {"architecture": "abc", "image_size": 32, "classes": 4}


def null_of(values: dict[str, list[float]], scale: str = "log") -> CleanNull:
    n = len(next(iter(values.values())))
    return CleanNull(
        "invertune",
        dict(KEY),
        {k: Statistic(scale, tuple(v)) for k, v in values.items()},
        tuple(f"m{i}" for i in range(n)),
    )


def test_tail_is_a_decreasing_probability_centred_on_the_null():
    stat = Statistic("log", (0.2, 0.25, 0.3, 0.22, 0.27, 0.24))
    tails = [stat.tail(v) for v in (0.01, 0.1, 0.24, 0.5, 1.0, 3.0)]
    assert all(0 <= t <= 1 for t in tails) and tails == sorted(tails, reverse=True)
    assert stat.tail(0.245) == pytest.approx(0.5, abs=0.08)  # near the log-mean: about half
    assert stat.tail(3.0) < 1e-3  # a ratio twelve times the clean ones is far in the tail (spread floored)
    assert stat.empirical_tail(1.0) == pytest.approx(1 / 7) and stat.empirical_tail(0.0) == 1.0


def test_score_is_bonferroni_over_every_statistic_of_the_null_even_unmeasured():
    null = null_of({"a": [0.2, 0.3, 0.25, 0.22, 0.28], "b": [1.0, 1.1, 0.9, 1.05, 0.95]})
    only_a = null.assess({"a": 0.6})
    assert only_a["statistics"]["b"]["tail"] is None
    assert only_a["score"] == pytest.approx(min(1.0, 2 * null.statistics["a"].tail(0.6)))
    both = null.assess({"a": 0.6, "b": 5.0}, alpha=0.05)
    assert both["score"] == pytest.approx(2 * null.statistics["b"].tail(5.0)) and both["backdoored"] is True
    assert null.assess({"a": 0.25, "b": 1.0})["backdoored"] is False
    assert null.assess({})["score"] == 1.0
    calm = null.assess({"a": 0.2, "b": 0.9})
    assert calm["score"] == 1.0 < calm["bound"]  # the uncapped bound still ranks models the score ties at 1
    assert null.adjusted("b", 5.0) == pytest.approx(both["score"])


def test_leave_one_out_false_positives_stay_near_alpha_on_a_normal_null():
    """200 lognormal clean references: each scored by the null of the others is called at about alpha."""
    rng = random.Random(0)
    null = null_of({"a": [rng.lognormvariate(0, 0.3) for _ in range(200)]})
    rows = leave_one_out(null, alpha=0.05)
    rate = sum(r["called"] for r in rows) / len(rows)
    assert 0.02 <= rate <= 0.09


def detection(values: dict[str, float], key=KEY) -> dict:
    return {"null_key": dict(key), "statistics": {k: {"value": v, "scale": "log"} for k, v in values.items()}}


def test_from_results_needs_one_key_every_statistic_and_enough_references():
    refs = [(f"m{i}", detection({"a": 0.2 + 0.01 * i, "b": 1.0})) for i in range(MIN_REFERENCES)]
    null = from_results("invertune", refs, {"created": "now"})
    assert null.statistics["a"].values[0] == 0.2 and len(null.references) == MIN_REFERENCES
    with pytest.raises(InputError, match="fewer than 5"):
        from_results("invertune", refs[:4], {})
    with pytest.raises(InputError, match="one null key"):
        from_results("invertune", [*refs, ("odd", detection({"a": 0.2, "b": 1.0}, {**KEY, "classes": 5}))], {})
    with pytest.raises(InputError, match="lacks statistics b"):
        from_results("invertune", [*refs, ("short", detection({"a": 0.2}))], {})


def test_file_round_trips_and_refuses_another_key(tmp_path):
    null = null_of({"a": [0.2, 0.3, 0.25, 0.22, 0.28]})
    path = tmp_path / "null.json"
    null.write(path)
    back = read_null(path)
    assert back.statistics == null.statistics and back.key == KEY and back.references == null.references
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # readable like any other output
    back.check_key(dict(KEY), "invertune")
    with pytest.raises(InputError, match=r"holds for this run's settings.*classes: null 4, this run 200"):
        back.check_key({**KEY, "classes": 200}, "invertune")
    with pytest.raises(InputError, match="no calibration file given is a null of defense 'flare'"):
        back.check_key(dict(KEY), "flare")
    other = CleanNull("invertune", {**KEY, "architecture": "resnet"}, back.statistics, back.references)
    assert select([other, back], KEY, "invertune") is back  # one file per architecture: the one that fits


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            '{"schema": "toolbox.null/1", "defense": "x", "key": {}, "statistics": {"a": {"scale": "log", '
            '"values": [NaN, 1, 1, 1, 1]}}, "references": ["1", "2", "3", "4", "5"]}',
            "NaN",
        ),
        ('{"schema": "toolbox.result/1"}', "not a valid toolbox.null/1"),
        (
            '{"schema": "toolbox.null/1", "defense": "x", "key": {}, "statistics": {"a": {"scale": "cubic", '
            '"values": [1, 1, 1, 1, 1]}}, "references": ["1", "2", "3", "4", "5"]}',
            "statistics.a.scale",
        ),
        (
            '{"schema": "toolbox.null/1", "defense": "x", "key": {}, "statistics": {"a": {"scale": "log", '
            '"values": [1, 1, 1]}}, "references": ["1", "2", "3"]}',
            "fewer than 5",
        ),
        (
            '{"schema": "toolbox.null/1", "defense": "x", "key": {}, "statistics": {"a": {"scale": "log", '
            '"values": [1, 1, 1, 1, 1]}}, "references": ["1", "2"]}',
            "5 values for 2 references",
        ),
        ("[1, 2", "not JSON"),
    ],
)
def test_a_bad_calibration_file_is_one_clear_error(tmp_path, text, why):
    path = tmp_path / "null.json"
    path.write_text(text)
    with pytest.raises(InputError, match=why):
        read_null(path)


def test_a_fifo_or_a_folder_is_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="FIFO"):
        read_null(tmp_path / "pipe")  # would block forever if opened
    with pytest.raises(InputError, match="directory"):
        read_null(tmp_path)


def test_run_refuses_a_calibration_for_a_defense_without_statistics(host, tmp_path, capsys):
    from toolbox.cli import main

    path = tmp_path / "null.json"
    null_of({"a": [0.2, 0.3, 0.25, 0.22, 0.28]}).write(path)
    assert main(["run", "--defense", "none", "--preset", "smoke", "--calibration", str(path)]) == 2
    assert "reports no statistics to calibrate" in capsys.readouterr().err
    doc = json.loads(path.read_text())
    doc["defense"] = "other"
    path.write_text(json.dumps(doc))
    assert main(["run", "--defense", "invertune", "--preset", "smoke", "--calibration", str(path)]) == 2
    assert "a null of defense 'other', not of 'invertune'" in capsys.readouterr().err


def test_a_statistic_without_spread_is_fitted_with_the_least_spread():
    """Clean references all at one value (nothing found): with no spread any departure would be
    significant, with ranks none could be (1 / (n + 1) > alpha / k); the floored spread is between."""
    floor = Statistic("log", (0.0,) * 8)
    assert floor.degenerate and floor.tail(0.0) == pytest.approx(0.5)
    assert floor.tail(0.0012) > 0.2  # a hair above the clean value is no evidence
    assert null_of({"a": [0.0] * 8}).assess({"a": 5.0})["backdoored"] is True  # far past it is
    flat = Statistic("log", (0.0,) * 11 + (0.02,))  # most references at one value
    assert flat.degenerate and flat.tail(0.05) < flat.empirical_tail(0.05) == pytest.approx(1 / 13)


def test_calibration_values_are_bounded(tmp_path):
    path = tmp_path / "null.json"
    null_of({"a": [0.2, 0.3, 0.25, 0.22, 0.28]}).write(path)
    doc = json.loads(path.read_text())
    doc["statistics"]["a"]["values"][0] = 1e200
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="not a valid toolbox.null/1"):
        read_null(path)
    doc["statistics"] = {"a\nb": doc["statistics"]["a"]}
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="not a valid toolbox.null/1"):
        read_null(path)
