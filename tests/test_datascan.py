"""Dataset defenses (issue 25): the plugin kind, `toolbox scan-data`, and FLARE on a planted case."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from toolbox import outputs
from toolbox.api import DataScanOutcome, DatasetDefense
from toolbox.cli import main
from toolbox.datascan import detection_metrics
from toolbox.hookspecs import hookimpl

# the same attack settings as test_attacks' smoke BadNet: one cached attacked model serves both
BADNET = ["--attack", "badnet", "--attack-param", "poison_rate=0.1", "--attack-param", "epochs=3"]


def test_detection_metrics_count_against_the_poisoning_record():
    scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.0])
    flagged = scores > 0.5
    m = detection_metrics(scores, flagged, torch.tensor([0, 1, 2]))
    assert (m["n"], m["n_poisoned"], m["n_flagged"]) == (6, 3, 3)
    assert m["tpr"] == pytest.approx(2 / 3) and m["fpr"] == pytest.approx(1 / 3)
    assert m["auroc"] == pytest.approx(7 / 9)  # 7 of the 9 (poisoned, clean) pairs are ordered right
    assert detection_metrics(scores, flagged, torch.tensor([], dtype=torch.long))["auroc"] is None


def test_scan_outputs_and_run_outputs_share_a_folder(tmp_path):
    out = tmp_path / "out"
    run, scan = (outputs.RUN_OUTPUTS, "result.json"), (outputs.SCAN_OUTPUTS, "scan.json")

    def commit(names, main_file, text):
        with outputs.Staging(out, names, main_file) as stage:
            (stage.path / main_file).write_text(text)
            assert stage.commit() == out / main_file

    commit(*run, "run 1")
    commit(*scan, "scan 1")
    manifest = json.loads((out / outputs.MANIFEST).read_text())["outputs"]
    assert set(manifest) == {"result.json", "scan.json"}  # the scan kept vouching for the run's file
    commit(*run, "run 2")
    assert (out / "scan.json").read_text() == "scan 1"  # a run never touches a scan's outputs
    (out / "result.json").write_text("edited by hand")
    commit(*run, "run 3")  # a file the manifest does not vouch for is moved aside, never deleted
    assert (out / "result.json").read_text() == "run 3"
    assert [p.read_text() for p in out.glob("replaced-*/result.json")] == ["edited by hand"]


class FlagFirstTen(DatasetDefense):
    name = "flag-first-ten"
    summary = "test double: flags samples 0-9"

    def scan(self, ctx):
        n = len(ctx.data.dataset)
        scores = torch.zeros(n)
        scores[:10] = 1.0
        return DataScanOutcome(scores=scores, flagged=scores > 0, info={"n_flagged": 10})


class WrongLength(DatasetDefense):
    name = "wrong-length"

    def scan(self, ctx):
        return DataScanOutcome(scores=torch.zeros(3), flagged=torch.zeros(3, dtype=torch.bool))


class ToyDataDefenses:
    @staticmethod
    @hookimpl
    def register_dataset_defenses(register):
        register(FlagFirstTen)
        register(WrongLength)


@pytest.mark.slow
def test_a_dataset_defense_is_one_class_and_scan_data_scores_it(host, register_plugin, smoke_world, tmp_path):
    register_plugin(ToyDataDefenses, "toy-data-defenses")
    out = tmp_path / "scan"
    assert main(["scan-data", "--defense", "flag-first-ten", "--preset", "smoke", "--out", str(out), *BADNET]) == 0
    doc = json.loads((out / "scan.json").read_text())
    det = doc["metrics"]["detection"]
    assert doc["schema"] == "toolbox.scan/1" and doc["attack"]["name"] == "badnet"
    assert det["n"] == 6000 and det["n_poisoned"] == doc["attack"]["n_poisoned"] == 600 and det["n_flagged"] == 10
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 6000 and [r["flagged"] for r in rows[9:11]] == ["1", "0"]
    assert sum(int(r["poisoned"]) for r in rows) == 600
    # --retrain: the clean model trained on what is left, with the attack's own recipe, measured
    assert (
        main(["scan-data", "--defense", "flag-first-ten", "--preset", "smoke", "--out", str(out), "--retrain", *BADNET])
        == 0
    )
    retrain = json.loads((out / "scan.json").read_text())["metrics"]["retrain"]
    assert retrain["n_train"] == 5990
    assert retrain["poisoned_set"]["asr"] > 0.5  # the attacked model, as test_attacks measures it
    assert 0 <= retrain["purified_set"]["asr"] <= 1 and retrain["purified_set"]["ca"] > 0.5
    # a plugin whose answer does not cover the set fails the run, and writes nothing
    bad = tmp_path / "bad"
    assert main(["scan-data", "--defense", "wrong-length", "--preset", "smoke", "--out", str(bad), *BADNET]) == 3
    assert not bad.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--defense", "nope"], "unknown dataset defense 'nope'"),
        (["--defense", "flare", "--retrain"], "--retrain trains with the attack's own recipe"),
        (["--defense", "flare", "-p", "top_k=0"], "top_k"),
        (["--defense", "flare", "--attack", "badencoder"], "poisons no dataset"),
    ],
)
def test_scan_data_refuses_bad_input_before_loading(host, tmp_path, capsys, args, message):
    assert main(["scan-data", *args, "--preset", "smoke", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_flare_runs_end_to_end_on_the_smoke_world(host, smoke_world, tmp_path):
    """Structure only: the smoke ViT (two blocks) carries too little of the trigger for FLARE; the
    quality checks are the planted case below and benchmarks/flare.py."""
    out = tmp_path / "flare"
    assert (
        main(
            [
                "scan-data",
                "--defense",
                "flare",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "-p",
                "embed_samples=800",
                "-p",
                "min_cluster_size=20",
                *BADNET,
            ]
        )
        == 0
    )
    doc = json.loads((out / "scan.json").read_text())
    det, info = doc["metrics"]["detection"], doc["scan_info"]
    assert det["n"] == 6000 and det["auroc"] is not None and info["n_flagged"] == det["n_flagged"]
    assert info["subspaces_tried"][0]["embedded"] == 800 and len(info["layers"]) == 4
    assert doc["timings_s"]["scan.abnormality"] > 0 and doc["defense"]["params"]["embed_samples"] == 800


class PatchNet(torch.nn.Module):
    """A tiny image tower, three conv + BatchNorm layers with seeded random weights and one planted
    neuron: channel 0 of the first conv fires on bright pixels (the trigger's), and the later convs
    pass it on. BatchNorm statistics come from clean images, as a network trained on them keeps."""

    image_size = 32

    def __init__(self, clean: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[torch.nn.Module] = []
        for c_in in (3, 8, 8):
            layers += [torch.nn.Conv2d(c_in, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()]
        self.block = torch.nn.Sequential(*layers)
        with torch.no_grad():
            for i, conv in enumerate(m for m in self.block if isinstance(m, torch.nn.Conv2d)):
                conv.weight[0] = 0.0
                if i == 0:  # mean colour above 0.85: only the trigger's pixels are that bright
                    conv.weight[0, :, 1, 1], conv.bias[0] = 1 / 3, -0.85
                else:  # pass channel 0 on
                    conv.weight[0, 0, 1, 1], conv.bias[0] = 1.0, 0.0
            h = clean  # each BatchNorm's running statistics: its input on the clean images
            for m in self.block:
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(h.mean((0, 2, 3)))
                    m.running_var.copy_(h.var((0, 2, 3)))
                    m.eval()
                h = m(h)
        self.eval()

    def vision_layers(self):
        from collections import OrderedDict

        return OrderedDict(block=self.block)

    def encode_image(self, x, normalize=True):
        return self.block(x).mean((2, 3))


def test_flare_flags_the_poisoned_samples_of_a_planted_set():
    from toolbox.api import DataScanContext, ImageData, InMemoryImages
    from toolbox_plugins.flare.flare import Flare, FlareConfig

    g = torch.Generator().manual_seed(0)
    images = 0.3 + 0.4 * torch.rand(1200, 3, 32, 32, generator=g)
    poisoned = torch.randperm(1200, generator=g)[:60]
    triggered = images.clone()
    triggered[poisoned, :, -4:, -4:] = 1.0  # BadNet-like: a white 4-px patch, bottom-right
    model = PatchNet(images[:200])
    data = ImageData(InMemoryImages((triggered * 255).round().to(torch.uint8)), "unlabelled", "planted")
    out = Flare(FlareConfig(min_cluster_size=30)).scan(
        DataScanContext(
            data=data, model=model, classnames=[], templates=[], seed=0, device=torch.device("cpu"), workdir=None
        )
    )
    m = detection_metrics(out.scores, out.flagged, poisoned)
    assert m["tpr"] > 0.9 and m["fpr"] < 0.02 and m["auroc"] > 0.95, m
    assert out.info["layers"] == ["block.1", "block.4", "block.7"] and out.info["n_flagged"] == m["n_flagged"]


def test_flare_is_a_plugin_of_its_own_and_blockable_alone(host, monkeypatch):
    from toolbox import plugins

    assert "flare" in host.build_registry().names("dataset_defense")
    monkeypatch.setenv(plugins.BLOCK_ENV, "flare")
    plugins.reset_host()
    registry = plugins.get_host().build_registry()
    assert "flare" not in registry.names("dataset_defense") and "invertune" in registry.names("defense")


def test_the_guides_dataset_defense_example_runs():
    import re
    from pathlib import Path

    from toolbox.api import DataScanContext, ImageData, InMemoryImages
    from toolbox.datascan import check_outcome

    page = (Path(__file__).resolve().parents[1] / "docs" / "dataset-defenses.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - our own documentation
    data = ImageData(InMemoryImages(torch.zeros(5, 3, 8, 8, dtype=torch.uint8)), "unlabelled", "zeros")
    out = namespace["FlagNothing"]().scan(
        DataScanContext(
            data=data, model=None, classnames=[], templates=[], seed=0, device=torch.device("cpu"), workdir=None
        )
    )
    check_outcome(out, 5, "flag-nothing")
    assert not out.flagged.any()
