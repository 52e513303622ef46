"""`toolbox compare`, `toolbox leaderboard` and `toolbox submit` on the smoke preset."""

from __future__ import annotations

import json
import shutil

import pytest

from toolbox import compare as compare_mod
from toolbox.cli import main as toolbox
from toolbox.compare import CompareRequest, compare, der, markdown_table, split_params
from toolbox.runner import Sources
from toolbox.leaderboard import LeaderboardError, leaderboard, submit

TINY_FT = {"reference_images": "64", "data_ratio": "1", "batch_size": "32"}


def test_der_is_backdoorbench_simplified():
    assert der(0.9, 1.0, 0.9, 0.0) == pytest.approx(1.0)  # ASR removed for free
    assert der(0.9, 1.0, 0.9, 1.0) == pytest.approx(0.5)  # nothing changed
    assert der(0.9, 1.0, 0.7, 0.0) == pytest.approx(0.9)  # 20 CA points paid
    assert der(0.9, None, 0.9, 0.0) is None


def test_params_must_name_one_of_the_compared_plugins():
    assert split_params({"ft.lr": "1e-4"}, ["ft", "par"], "defense") == {"ft": {"lr": "1e-4"}}
    with pytest.raises(ValueError, match="NAME.KEY=VALUE"):
        split_params({"lr": "1e-4"}, ["ft"], "defense")
    with pytest.raises(ValueError, match="one of ft"):
        split_params({"par.lr": "1e-4"}, ["ft"], "defense")


@pytest.fixture
def cells_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_mod, "cache_root", lambda: tmp_path / "cache")
    return tmp_path / "cache"


def test_compare_writes_tables_and_reuses_cells(host, smoke_world, tmp_path, cells_cache):
    req = CompareRequest(attacks=["none"], defenses=["none", "ft"], out=tmp_path / "cmp", sources=Sources(preset="smoke"),
                         defense_params={"ft": dict(TINY_FT)})
    first = compare(req)
    assert [c.from_cache for c in first] == [False, False]
    for name in ("compare.md", "compare.csv", "compare.json", "compare_scatter.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [(c["attack"], c["defense"]) for c in doc["cells"]] == [("none", "none"), ("none", "ft")]
    table = markdown_table(first)
    assert "| ft |" in table and "**" in table  # the best defense's CA is bold
    second = compare(req)
    assert [c.from_cache for c in second] == [True, True]
    assert [c.after for c in second] == [c.after for c in first]
    # a changed parameter is a different cell
    req.defense_params["ft"]["lr"] = "2e-4"
    third = compare(req)
    assert [c.from_cache for c in third] == [True, False]


def test_compare_rejects_unknown_names_before_running(host, cells_cache, tmp_path, capsys):
    code = toolbox(["compare", "--attacks", "none", "--defenses", "none,nosuch", "--out", str(tmp_path)])
    assert code == 2 and "nosuch" in capsys.readouterr().err
    assert not cells_cache.exists()


def test_leaderboard_groups_metric_configs_and_submit_validates(host, smoke_world, tmp_path, cells_cache, capsys):
    req = CompareRequest(attacks=["none"], defenses=["none", "ft"], out=tmp_path / "cmp", sources=Sources(preset="smoke"),
                         defense_params={"ft": dict(TINY_FT)})
    cells = compare(req)
    board = tmp_path / "board"
    for c in cells:
        shutil.copytree(c.result_path.parent, board / c.defense, ignore=shutil.ignore_patterns("model", "artifacts"))
    text, skipped = leaderboard(board)
    assert text.count("## metric config") == 1 and "| 1 |" in text and "| 2 |" in text and not skipped

    # a result measured with other templates is grouped apart, and --strict refuses the mix
    other = json.loads((board / "ft" / "result.json").read_text())
    other["metric_config"]["ca"]["n_templates"] = 80
    (board / "other").mkdir()
    (board / "other" / "result.json").write_text(json.dumps(other))
    text, _ = leaderboard(board)
    assert text.count("## metric config") == 2
    with pytest.raises(LeaderboardError, match="different metric configs"):
        leaderboard(board, strict=True)
    assert toolbox(["leaderboard", str(board), "--strict"]) == 2

    sub_path = submit(board / "ft" / "result.json")
    sub = json.loads(sub_path.read_text())
    assert sub["schema"] == "toolbox.submission/1" and sub["seed"] == 0
    assert sub["model"]["sha256"] and sub["versions"]["torch"] and len(sub["result_sha256"]) == 64
    assert sub["metric_config"]["asr"]["exclude_target_class"] is True

    broken = json.loads((board / "ft" / "result.json").read_text())
    del broken["metrics"]
    (board / "broken.json").write_text(json.dumps(broken))
    assert toolbox(["submit", str(board / "broken.json")]) == 2
    assert "not a valid" in capsys.readouterr().err


def test_extra_metrics_and_workers_do_not_split_the_leaderboard():
    from toolbox.leaderboard import metric_config_hash

    base = {"ca": {"top_k": [1]}, "asr": {"top_k": [1]}, "settings": {"top_k": [1], "workers": 0}}
    more = {**base, "extra": {"worst": {}}, "settings": {"top_k": [1], "workers": 4, "extra": ["worst"]}}
    assert metric_config_hash(base) == metric_config_hash(more)
    assert metric_config_hash(base) != metric_config_hash({**base, "settings": {"top_k": [1, 5]}})
