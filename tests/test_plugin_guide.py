"""docs/plugins.md: its example plugin (a defense, an attack, a metric, a dataset adapter) registers and runs
end to end as documented, and its detector joins the cascade."""

from __future__ import annotations

import json
import math
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
    module = types.ModuleType("guide_plugin")
    monkeypatch.setitem(sys.modules, "guide_plugin", module)  # dataclasses look their module up there
    for block in blocks("python"):
        exec(compile(block, str(DOC), "exec"), module.__dict__)  # noqa: S102  (our own documentation)
    register_plugin(module, "guide-plugin")
    return module


ATTACK_LINE = "--attack corner-square --attack-param poison_rate=0.1 --attack-param epochs=6 --preset smoke --out"


def documented(marker: str) -> list[str]:
    """The guide's one ``toolbox run`` line that contains ``marker``, as argv."""
    (command,) = [ln for b in blocks("bash") for ln in b.splitlines() if ln.startswith("toolbox run") and marker in ln]
    return shlex.split(command)[1:]


def run_documented(marker: str, root: Path) -> dict:
    argv = documented(marker)
    assert main(argv) == 0
    return json.loads((root / argv[argv.index("--out") + 1] / "result.json").read_text())


@pytest.mark.slow
def test_the_guides_defense_runs_as_documented(guide, smoke_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = run_documented("--defense unchanged", tmp_path)
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
    assert finding.target == "cat" and finding.record() == {
        "class": "cat",
        "colour": 0.5,
        "passed": False,
        "gate_ratio": 0.0,
        "strength": round(math.log(1e-6), 4),  # none given: the gate ratio's log, floored
    }
    x = torch.zeros(1, 3, 32, 32)
    assert float(finding.trigger(x)[0, :, -4:, -4:].min()) == 0.5 and float(finding.trigger(x)[0, :, :-4].max()) == 0


@pytest.mark.slow
def test_the_guides_attack_implants_as_documented(guide, smoke_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = run_documented(ATTACK_LINE, tmp_path)
    assert doc["attack"]["plugin"] == "guide-plugin" and doc["attack"]["params"]["epochs"] == 6
    assert doc["attack"]["info"]["n_poisoned"] > 0
    before = doc["metrics"]["before"]
    assert before["asr"] - before["asr_untriggered"] > 0.5, "the corner square is a backdoor, not a collapse"


@pytest.mark.slow
def test_the_guides_metric_is_measured_as_documented(guide, smoke_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = run_documented("--metric worst_class_accuracy", tmp_path)
    for when in ("before", "after"):
        m = doc["metrics"][when]
        assert 0 <= m["worst_class_accuracy"] <= m["ca"]
        assert 0 <= m["worst_class_accuracy_triggered"] <= m["ra"], "triggered images go to the target"
    assert doc["metric_config"]["extra"]["worst_class_accuracy"]["metric_class"].endswith("WorstClassAccuracy")


def test_the_guides_metric_computes_the_worst_class(guide):
    metric = guide.WorstClassAccuracy()
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    metric.update(logits, torch.tensor([0, 0, 1, 1]))
    assert float(metric.compute()) == 0.5


def test_every_run_line_of_the_guide_is_one_a_test_runs():
    lines = [ln for b in blocks("bash") for ln in b.splitlines() if ln.startswith("toolbox run")]
    markers = [
        "--defense unchanged",
        ATTACK_LINE,
        "--metric worst_class_accuracy",
        "--eval-data smoke-eval.safetensors",
    ]
    assert sorted(" ".join(documented(m)) for m in markers) == sorted(ln[len("toolbox ") :] for ln in lines)


def test_the_guides_imports_are_the_public_contract():
    import toolbox

    allowed = set(toolbox.PUBLIC_MODULES) | {"invertune_plugin", "invertune_plugin.cascade"}
    imported = {m for b in blocks("python") for m in re.findall(r"^(?:from|import) ([\w.]+)", b, flags=re.M)}
    ours = {m for m in imported if m.split(".")[0] in ("toolbox", "invertune_plugin", "adapters")}
    assert ours and ours <= allowed, ours - allowed


def test_a_builtin_unknown_reserved_or_repeated_metric_is_refused(guide, host, tmp_path, capsys):
    import toolbox
    from toolbox.errors import InputError

    assert (
        main(["run", "--defense", "none", "--preset", "smoke", "--metric", "nonsense", "--out", str(tmp_path / "a")])
        == 2
    )
    assert "unknown metric 'nonsense'" in capsys.readouterr().err
    for names, message in ((["attack_success_rate"], "built-in metric"), (["worst_class_accuracy"] * 2, "twice")):
        with pytest.raises(InputError, match=message):
            toolbox.run("none", preset="smoke", metrics=names, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["ca_worst", "asr", "ra_x", "retrieval_mine", "worst_triggered"])
def test_a_metric_named_like_a_builtin_key_is_refused(guide, host, name):
    from toolbox.errors import InputError
    from toolbox.evaluation import check_extra_metrics
    from toolbox.plugins import Registration, Registry

    registry = Registry()
    registry.add(Registration(kind="metric", name=name, obj=guide.WorstClassAccuracy, plugin="guide"))
    with pytest.raises(InputError, match="collide"):
        check_extra_metrics([name], registry)


def test_a_metric_that_fails_is_named_and_nan_is_null(guide):
    from toolbox.errors import InputError
    from toolbox.evaluation import MetricConfig, extra_metrics
    from toolbox.plugins import Registration, Registry

    class Empty(guide.WorstClassAccuracy):
        def compute(self):
            return torch.tensor(float("nan"))

    class Vector(guide.WorstClassAccuracy):
        def compute(self):
            return torch.zeros(3)

    registry = Registry()
    for name, cls in (("empty", Empty), ("vector", Vector)):
        registry.add(Registration(kind="metric", name=name, obj=cls, plugin="guide"))
    logits, labels = torch.eye(2), torch.tensor([0, 1])
    assert extra_metrics(logits, labels, MetricConfig(extra=("empty",)), registry, "_x") == {"empty_x": None}
    with pytest.raises(InputError, match="metric 'vector' .plugin 'guide'. failed"):
        extra_metrics(logits, labels, MetricConfig(extra=("vector",)), registry)


def test_the_schema_holds_builtin_keys_to_fractions_and_lets_a_metric_be_any_number():
    import jsonschema

    from toolbox.results import result_schema

    schema = result_schema()
    metric_set = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/metric_set"}
    jsonschema.validate({"ca": 0.5, "asr": None, "worst": 3.5, "worst_triggered": None}, metric_set)
    for bad in ({"ca": 0.5, "asr": 0.1, "ca_top5": 1.5}, {"ca": 0.5, "asr": 0.1, "retrieval_asr@10": -1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, metric_set)


def write_tensor_file(path: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str]) -> None:
    from safetensors.torch import save_file

    save_file(
        {"images": images.contiguous(), "labels": labels.contiguous()},
        str(path),
        metadata={"classnames": "\n".join(names)},
    )


@pytest.mark.slow
def test_the_guides_adapter_reads_the_same_images_as_the_built_in(guide, smoke_world, tmp_path, monkeypatch):
    from adapters.datasets import LabelsCsvAdapter

    size = smoke_world.preset.model_cfg["vision_cfg"]["image_size"]
    ref = LabelsCsvAdapter().load(str(smoke_world.world.eval_labels), size)
    labels = torch.tensor([ref.dataset[i][1] for i in range(len(ref.dataset))])
    write_tensor_file(tmp_path / "smoke-eval.safetensors", ref.uint8(), labels, ref.classnames)
    monkeypatch.chdir(tmp_path)
    doc = run_documented("--eval-data smoke-eval.safetensors", tmp_path)
    argv = ["run", "--defense", "none", "--preset", "smoke", "--out", "runs/builtin"]
    assert main(argv) == 0
    builtin = json.loads((tmp_path / "runs" / "builtin" / "result.json").read_text())
    assert doc["metrics"]["before"]["ca"] == builtin["metrics"]["before"]["ca"]
    assert doc["data"]["eval_data"]["n"] == len(labels)


def test_the_guides_adapter_refuses_a_bad_file_in_one_line(guide, smoke_world, tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    write_tensor_file(path, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 5]), ["a", "b"])
    adapter = guide.TensorFileAdapter()
    assert adapter.detect(str(path))
    assert (
        main(
            ["run", "--defense", "none", "--preset", "smoke", "--eval-data", str(path), "--out", str(tmp_path / "out")]
        )
        == 2
    )
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]  # one line, no traceback
    assert str(path) in line and "labels must index the class names" in line and not (tmp_path / "out").exists()
    write_tensor_file(path, torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        adapter.load(str(path), 8)
