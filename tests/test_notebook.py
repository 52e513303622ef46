"""The Python API (``toolbox.run``, ``toolbox.load``): the documented example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import toolbox
from toolbox.errors import InputError
from toolbox.notebook import _param_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_params_are_written_as_the_cli_reads_them():
    assert _param_text(True) == "true" and _param_text(None) == "none" and _param_text(0.5) == "0.5"
    assert _param_text(("inversion", "patch")) == "inversion,patch"


def test_the_recorded_command_is_the_cli_line_of_the_call():
    from toolbox.cli import build_parser, sources_from
    from toolbox.notebook import equivalent_command
    from toolbox.runner import RunRequest, Sources

    req = RunRequest(
        defense="invertune",
        attack="badnet",
        sources=Sources(preset="smoke", seed=3, classes="c.txt", asr_include_target=True),
        out=Path("runs/x"),
        defense_params={"n_images": "256"},
        attack_params={"epochs": "3"},
        skip_unreadable=True,
        metrics=("worst", "other"),
    )
    cmd = equivalent_command(req)
    assert cmd[:2] == ["toolbox", "run"]
    args = build_parser().parse_args(cmd[1:])
    assert (args.defense, args.attack, args.preset, args.seed, args.out) == (
        "invertune",
        "badnet",
        "smoke",
        3,
        Path("runs/x"),
    )
    assert args.param == ["n_images=256"] and args.attack_param == ["epochs=3"]
    assert args.skip_unreadable and args.metric == ["worst", "other"]
    assert sources_from(args) == req.sources, "every source field round-trips through the command line"


def test_a_model_without_data_of_its_own_says_how_to_give_it(host, smoke_world, tmp_path):
    with pytest.raises(InputError, match=r"no clean images of its own: pass clean_data=.*data_sources"):
        toolbox.load(str(smoke_world.model_dir))


def test_bad_input_is_the_commands_error(host, tmp_path):
    with pytest.raises(InputError, match="no parameter 'nonsense'"):
        toolbox.run("invertune", preset="smoke", params={"nonsense": 1}, out=tmp_path / "x")
    with pytest.raises(AttributeError):
        toolbox.not_an_api  # noqa: B018


@pytest.mark.slow
def test_the_documented_example_runs(host, smoke_world, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102  (our own documentation)
    result, ranking = scope["result"], scope["ranking"]
    assert isinstance(result, toolbox.RunResult)
    assert result.path.resolve() == (tmp_path / "runs" / "notebook" / "result.json").resolve()
    assert result.doc["command"][:4] == ["toolbox", "run", "--defense", "invertune"]
    assert "--attack-param" in result.doc["command"] and "poison_rate=0.1" in result.doc["command"]
    # The example shows the API, not InverTune's accuracy: on the smoke world the default cascade can
    # name a natural attractor ("ferry") over the real target; the zoo pages measure that.
    ranked = [r["class"] for r in result.detection["ranking_top5"]]
    assert "mushroom" in ranked and result.target in ranked and result.backdoored in (True, False)
    if result.backdoored:  # purified: a model folder, and the trigger weaker
        assert (result.purified_model / "open_clip_config.json").is_file()
        assert result.after["asr"] < result.before["asr"]
    assert result.artifacts and all(p.exists() for p in result.artifacts.values())
    assert ranking.target in scope["suspect"].classnames and scope["suspect"].images(8).dtype == torch.uint8
    purified = scope["purified"]
    assert purified.classnames == scope["suspect"].classnames and len(purified.clean.dataset) > 0
    assert "anomaly index" in capsys.readouterr().out
