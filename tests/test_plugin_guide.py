"""docs/plugins.md: its example plugin (a defense, an attack, a metric, a dataset adapter) registers and runs
end to end as documented, and its detector joins the cascade."""

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
    assert finding.target == "cat" and finding.record() == {"class": "cat", "colour": 0.5, "passed": False,
                                                            "gate_ratio": 0.0}
    x = torch.zeros(1, 3, 32, 32)
    assert float(finding.trigger(x)[0, :, -4:, -4:].min()) == 0.5 and float(finding.trigger(x)[0, :, :-4].max()) == 0


@pytest.mark.slow
def test_the_guides_attack_implants_as_documented(guide, smoke_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = run_documented("--attack corner-square", tmp_path)
    assert doc["attack"]["plugin"] == "guide-plugin" and doc["attack"]["params"]["epochs"] == 3
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
        assert "worst_class_accuracy_triggered" not in m  # no attack, no trigger
    assert doc["metric_config"]["extra"]["worst_class_accuracy"]["metric_class"].endswith("WorstClassAccuracy")
    assert doc["command"][-4:] == ["--metric", "worst_class_accuracy", "--out", "runs/worst"]


def test_the_guides_metric_computes_the_worst_class(guide):
    metric = guide.WorstClassAccuracy()
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    metric.update(logits, torch.tensor([0, 0, 1, 1]))
    assert float(metric.compute()) == 0.5


def test_a_builtin_or_unknown_metric_is_refused(guide, host, tmp_path):
    from toolbox.errors import InputError

    assert main(["run", "--defense", "none", "--preset", "smoke", "--metric", "nonsense", "--out",
                 str(tmp_path / "a")]) == 2
    with pytest.raises(InputError, match="built-in metric"):
        import toolbox

        toolbox.run("none", preset="smoke", metrics=["attack_success_rate"], out=tmp_path / "b")


def write_tensor_file(path: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str]) -> None:
    from safetensors.torch import save_file

    save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(path),
              metadata={"classnames": "\n".join(names)})


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


def test_the_guides_adapter_refuses_a_bad_file_in_one_line(guide, tmp_path):
    path = tmp_path / "bad.safetensors"
    write_tensor_file(path, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 5]), ["a", "b"])
    adapter = guide.TensorFileAdapter()
    assert adapter.detect(str(path))
    with pytest.raises(ValueError, match="labels must index"):
        adapter.load(str(path), 8)
    write_tensor_file(path, torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        adapter.load(str(path), 8)
