"""`toolbox compare`, `toolbox leaderboard` and `toolbox submit` on the smoke preset."""

from __future__ import annotations

import json
import shutil

import pytest

from toolbox import compare as compare_mod
from toolbox.cli import main as toolbox
from toolbox.compare import CompareRequest, compare, der, markdown_table, split_params
from toolbox.leaderboard import LeaderboardError, leaderboard, submit
from toolbox.runner import Sources

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
    req = CompareRequest(
        attacks=["none"],
        defenses=["none", "ft"],
        out=tmp_path / "cmp",
        sources=Sources(preset="smoke"),
        defense_params={"ft": dict(TINY_FT)},
    )
    first = compare(req)
    assert [c.from_cache for c in first] == [False, False]
    for name in ("compare.md", "compare.csv", "compare.json", "compare_scatter.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [(c["attack"], c["defense"]) for c in doc["cells"]] == [("none", "none"), ("none", "ft")]
    table = markdown_table(first)
    assert "| ft |" in table and "**" not in table  # a lone defense is the best of nothing
    second = compare(req)
    assert [c.from_cache for c in second] == [True, True]
    assert [c.after for c in second] == [c.after for c in first]
    # a changed parameter is a different cell
    req.defense_params["ft"]["lr"] = "2e-4"
    third = compare(req)
    assert [c.from_cache for c in third] == [True, False]


def one_ft_cell(tmp_path, **extra) -> CompareRequest:
    """The cheapest real cell: the clean smoke model, fine-tuned briefly."""
    return CompareRequest(
        attacks=["none"],
        defenses=["ft"],
        out=tmp_path / "cmp",
        sources=Sources(preset="smoke"),
        defense_params={"ft": dict(TINY_FT)},
        **extra,
    )


def test_a_cell_whose_code_changed_or_whose_stamp_is_pending_runs_again(
    host, smoke_world, tmp_path, cells_cache, monkeypatch
):
    req = one_ft_cell(tmp_path)
    (cell,) = compare(req)
    stamp = cells_cache / "cells" / f"{cell.key}.code.json"
    saved = json.loads(stamp.read_text())  # beside the entry, not inside the run's folder
    assert saved["code"]["defense"] and saved["result_sha256"] and stamp.stat().st_mode & 0o044
    assert compare(req)[0].from_cache
    monkeypatch.setattr(compare_mod, "code_fingerprint", lambda obj: "edited")  # same version, other code
    again = compare(req)
    assert not again[0].from_cache and again[0].key == cell.key
    assert json.loads(stamp.read_text())["code"] == {"defense": "edited"}
    stamp.write_text(json.dumps({"code": {"defense": "edited"}, "result_sha256": None}))  # killed mid-run
    assert not compare(req)[0].from_cache
    stamp.unlink()  # a cell saved before codes were recorded is reused, and stamped as this code's
    assert compare(req)[0].from_cache
    assert json.loads(stamp.read_text())["adopted"] is True
    monkeypatch.setattr(compare_mod, "code_fingerprint", lambda obj: "edited again")
    assert not compare(req)[0].from_cache  # so a later edit is seen


def test_kept_cells_resume_a_grid_on_a_machine_with_an_empty_cache(
    host, smoke_world, tmp_path, cells_cache, monkeypatch
):
    kept = tmp_path / "kept"
    req = one_ft_cell(tmp_path, keep_cells=kept)
    (cell,) = compare(req)
    assert sorted(p.name for p in kept.iterdir()) == [cell.key, f"{cell.key}.code.json"]
    assert [p.name for p in (kept / cell.key).iterdir()] == ["result.json"]  # the result, not the checkpoint
    shutil.rmtree(cells_cache)  # the next machine
    (again,) = compare(req)
    assert again.from_cache and again.after == cell.after
    shutil.rmtree(cells_cache)
    monkeypatch.setattr(compare_mod, "code_fingerprint", lambda obj: "edited")  # kept by other code: run again
    assert not compare(req)[0].from_cache
    assert json.loads((kept / f"{cell.key}.code.json").read_text())["code"] == {"defense": "edited"}
    shutil.rmtree(cells_cache)
    doc = json.loads((kept / cell.key / "result.json").read_text())
    doc["metrics"]["after"]["ca"] = 1.0  # edited by hand: its stamp no longer vouches for it
    (kept / cell.key / "result.json").write_text(json.dumps(doc))
    assert not compare(req)[0].from_cache
    with pytest.raises(ValueError, match="inside the input"):
        compare(CompareRequest(**{**req.__dict__, "out": kept / "tables"}))


def test_an_attacked_model_is_rebuilt_when_its_attacks_code_changed(tmp_path, caplog):
    from toolbox.runner.attack_cache import built_by

    entry = tmp_path / "attacked" / "k"
    assert not built_by(entry, "c1")  # nothing built yet
    entry.mkdir(parents=True)
    (entry / "attack.json").write_text(json.dumps({"build_seconds": 1.0, "info": {}, "code": "c1"}))
    assert built_by(entry, "c1") and not built_by(entry, "c2")
    (entry / "attack.json").write_text(json.dumps({"build_seconds": 1.0, "info": {}}))
    with caplog.at_level("WARNING"):
        assert built_by(entry, "c2")  # built before codes were recorded: taken as this code's, said so
    assert "records no attack code" in caplog.text
    assert json.loads((entry / "attack.json").read_text())["code_adopted"] is True
    assert not built_by(entry, "c3")  # so a later edit rebuilds it


def test_the_host_none_defense_is_not_fingerprinted(host):
    registry = host.build_registry(quiet=True)
    assert compare_mod.cell_code(registry, "none", "none") == {}  # the host's version, in the key, stands for it
    assert set(compare_mod.cell_code(registry, "badnet", "none")) == {"attack"}


def test_compare_rejects_unknown_names_before_running(host, cells_cache, tmp_path, capsys):
    code = toolbox(["compare", "--attacks", "none", "--defenses", "none,nosuch", "--out", str(tmp_path)])
    assert code == 2 and "nosuch" in capsys.readouterr().err
    assert not cells_cache.exists()


def test_leaderboard_groups_metric_configs_and_submit_validates(host, smoke_world, tmp_path, cells_cache, capsys):
    req = CompareRequest(
        attacks=["none"],
        defenses=["none", "ft"],
        out=tmp_path / "cmp",
        sources=Sources(preset="smoke"),
        defense_params={"ft": dict(TINY_FT)},
    )
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
    (board / "other").rename(tmp_path / "other")  # back to one metric config
    text, _ = leaderboard(board)
    assert text.count(str(board / "ft")) == 1, "a result and the submission made of it are one entry"

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


def test_an_attack_that_did_not_implant_is_named_under_the_table():
    from types import SimpleNamespace

    from toolbox.compare import not_implanted

    def cell(attack, asr, untriggered):
        return SimpleNamespace(attack=attack, doc={"metrics": {"before": {"asr": asr, "asr_untriggered": untriggered}}})

    cells = [cell("badnet", 0.02, 0.01), cell("badnet", 0.02, 0.01), cell("sig", 0.98, 0.01), cell("none", None, None)]
    assert not_implanted(cells) == ["badnet"]


def test_the_run_summary_says_when_the_attack_did_not_implant_and_whose_target_is_whose():
    from pathlib import Path as P

    from toolbox.cli import summary

    doc = {
        "metrics": {"before": {"ca": 0.8, "asr": 0.02, "asr_untriggered": 0.01}, "after": {"ca": 0.8, "asr": 0.02}},
        "metric_config": {},
        "detection": {"backdoored": True, "target": "traffic light"},
        "attack": {"name": "badnet", "target": "mushroom"},
        "timings_s": {"defense": 1.0},
        "artifacts": {},
    }
    text = summary(doc, P("r/result.json"))
    assert "verdict   backdoored, target 'traffic light' (the attack's: 'mushroom')" in text
    assert "did not implant: its trigger adds 1.0 points" in text
    doc["metrics"]["before"]["asr"] = 0.95
    assert "did not implant" not in summary(doc, P("r/result.json"))
