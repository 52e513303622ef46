"""SegOracle (issue 25): the class-mapping file, a torchvision oracle read from safetensors, reading an
oracle's logits, the affected-label table, the trigger's localisation, the curated set, the embedded
oracle's cache, and a run on the smoke world."""

from __future__ import annotations

import json
import math

import pytest
import torch

from toolbox.cli import main
from toolbox_plugins.segoracle import embedded as embedded_module
from toolbox_plugins.segoracle.disagreements import affected_labels, oracle_labels, victims
from toolbox_plugins.segoracle.embedded import EmbeddedOracleRecipe, embedded_oracle
from toolbox_plugins.segoracle.localise import localise_trigger
from toolbox_plugins.segoracle.oracle import (
    ABSENT_LOGIT,
    SegmentationOracle,
    fold_channels,
    read_class_map,
    read_logits,
    torchvision_oracle,
)
from toolbox_plugins.segoracle.segoracle import SegOracleConfig, curate

VOCAB = ["banana", "lemon", "mushroom"]
CPU = torch.device("cpu")
# the same attack settings as test_attacks' and test_datascan's smoke BadNet: one cached attacked model serves all
BADNET = ["--attack", "badnet", "--attack-param", "poison_rate=0.1", "--attack-param", "epochs=6"]


# --------------------------------------------------------------------------- the class-mapping file


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "not found"),
        ("banana\nlemon\n", "first line must be 'background'"),
        ("background\n", "first line must be 'background' and at least one class"),
        ("background\nbanana\npizza\n", "'pizza'"),
        ("background\nbanana\nbackground\n", "may only be the first line"),
        ("background\n-\n-\n", "names no vocabulary class"),
    ],
)
def test_a_bad_class_mapping_file_is_refused_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "classes.txt"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="class-mapping file") as err:
        read_class_map(path, VOCAB)
    assert message in str(err.value)


def test_a_class_mapping_file_folds_unnamed_channels_into_background(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background\nbanana\n-\nlemon\nbanana\n", encoding="utf-8")
    class_map = read_class_map(path, VOCAB)
    assert class_map.classnames == ["banana", "lemon"]
    assert class_map.channel_to_output.tolist() == [0, 1, 0, 2, 1]


def test_folded_channels_add_up_their_probabilities():
    logits = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0]).view(1, 5, 1, 1)
    folded = fold_channels(logits, torch.tensor([0, 1, 0, 2, 1]), 4)
    assert folded.shape == (1, 4, 1, 1)
    assert folded[0, 0, 0, 0].item() == pytest.approx(math.log(math.exp(1.0) + math.exp(0.5)))
    assert folded[0, 1, 0, 0].item() == pytest.approx(math.log(math.exp(2.0) + math.exp(3.0)))
    assert folded[0, 2, 0, 0].item() == pytest.approx(-1.0)
    assert folded[0, 3, 0, 0].item() == ABSENT_LOGIT  # a class no channel feeds


# --------------------------------------------------------------------------- a torchvision oracle


@pytest.fixture(scope="module")
def lraspp_checkpoint(tmp_path_factory):
    """A random-weight LR-ASPP with 4 output channels, saved as safetensors."""
    import safetensors.torch

    from toolbox.compat import import_torchvision

    torch.manual_seed(0)
    net = import_torchvision().models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4
    )
    path = tmp_path_factory.mktemp("oracle") / "seg.safetensors"
    safetensors.torch.save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_a_torchvision_oracle_returns_logits_over_background_and_its_classes(lraspp_checkpoint, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nbanana\n-\nlemon\n", encoding="utf-8")
    oracle = torchvision_oracle(str(lraspp_checkpoint), "lraspp_mobilenet_v3_large", str(classes), VOCAB, CPU)
    assert isinstance(oracle, SegmentationOracle) and oracle.classnames == ["banana", "lemon"]
    logits = oracle.segment(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(logits).all()
    resized = torchvision_oracle(
        str(lraspp_checkpoint), "lraspp_mobilenet_v3_large", str(classes), VOCAB, CPU, input_size=96
    )
    assert resized.segment(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)  # read back at the image's size


def test_a_torchvision_oracle_refuses_a_checkpoint_that_does_not_fit(lraspp_checkpoint, tmp_path):
    three = tmp_path / "three.txt"
    three.write_text("background\nbanana\nlemon\n", encoding="utf-8")
    with pytest.raises(ValueError, match="head has 4 output channels.*names 3"):
        torchvision_oracle(str(lraspp_checkpoint), "lraspp_mobilenet_v3_large", str(three), VOCAB, CPU)
    four = tmp_path / "four.txt"
    four.write_text("background\nbanana\n-\nlemon\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is oracle_arch right"):
        torchvision_oracle(str(lraspp_checkpoint), "deeplabv3_mobilenet_v3_large", str(four), VOCAB, CPU)
    pickle = tmp_path / "seg.pt"
    pickle.write_bytes(b"not read")
    with pytest.raises(ValueError, match="only .safetensors"):
        torchvision_oracle(str(pickle), "lraspp_mobilenet_v3_large", str(four), VOCAB, CPU)
    with pytest.raises(ValueError, match="not found"):
        torchvision_oracle(str(tmp_path / "absent.safetensors"), "lraspp_mobilenet_v3_large", str(four), VOCAB, CPU)


def test_the_config_refuses_a_checkpoint_oracle_it_cannot_use(tmp_path):
    with pytest.raises(ValueError, match="needs oracle_classes"):
        SegOracleConfig(oracle=str(tmp_path / "seg.safetensors"))
    with pytest.raises(ValueError, match="file not found"):
        SegOracleConfig(oracle=str(tmp_path / "seg.safetensors"), oracle_classes=str(tmp_path / "c.txt"))
    with pytest.raises(ValueError, match="oracle_arch"):
        SegOracleConfig(oracle=str(tmp_path / "seg.safetensors"), oracle_arch="unet")
    with pytest.raises(ValueError, match="seed streams must differ"):
        SegOracleConfig(clean_keep_stream=1)


# --------------------------------------------------------------------------- reading an oracle


def test_an_images_oracle_class_is_the_one_with_most_foreground_mass():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 0] = 5.0  # background everywhere ...
    logits[0, 2, :2, :2] = 10.0  # ... but for a 2x2 object of oracle class 1 in image 0
    reading = read_logits(logits)
    assert reading.label.tolist() == [1, -1]
    assert reading.confidence[0] > 0.95 and reading.confidence[1] == 0
    assert reading.foreground[0].sum() == 4 and not reading.foreground[1].any()


class FixedOracle:
    """An oracle whose logits are given: classes in another order than the vocabulary's."""

    classnames = ["lemon", "banana"]

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(images)]


def test_oracle_labels_are_vocabulary_indices_and_doubt_makes_them_unknown():
    logits = torch.zeros(3, 3, 16, 16)
    logits[:, 0] = 5.0
    logits[0, 1, :8, :8] = 10.0  # a quarter of the image is lemon
    logits[1, 1, :8, :4] = 10.0  # half lemon, half banana: confidence 0.5
    logits[1, 2, :8, 4:8] = 10.0
    logits[2, 2, 0, 0] = 10.0  # one banana pixel: too little foreground
    out = oracle_labels(
        FixedOracle(logits),
        torch.zeros(3, 3, 16, 16, dtype=torch.uint8),
        VOCAB,
        min_confidence=0.6,
        min_foreground=0.02,
        batch_size=8,
    )
    assert out.label.tolist() == [VOCAB.index("lemon"), -1, -1]
    assert out.confidence[1].item() == pytest.approx(0.5, abs=1e-3)
    assert out.foreground.shape == (3, 16, 16)


# --------------------------------------------------------------------------- the affected labels


def disagreement_table(counts: list[int], agreeing: int = 50, unknown: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP and oracle labels in which CLIP calls class c, against the oracle, ``counts[c]`` times."""
    clip: list[int] = []
    oracle: list[int] = []
    for c, n in enumerate(counts):
        clip += [c] * agreeing + [c] * n
        oracle += [c] * agreeing + [(c + 1) % len(counts)] * n  # the oracle says the next class
    clip += [0] * unknown  # images the oracle does not know: never counted
    oracle += [-1] * unknown
    return torch.tensor(clip), torch.tensor(oracle)


CLEAN_COUNTS = [20, 22, 18, 25, 19, 21, 23, 20, 24, 18]


def test_affected_labels_finds_the_planted_target():
    counts = list(CLEAN_COUNTS)
    counts[3] += 200
    clip, oracle = disagreement_table(counts)
    table = affected_labels(clip, oracle, 10, z_threshold=3.5, min_disagreements=10)
    assert table.counts.tolist() == counts and table.affected == [3]
    assert table.z[3] > 50 and table.z.max() == table.z[3]
    assert table.n_known == len(clip) - 30 and table.n_disagree == sum(counts)
    hit = victims(clip, oracle, table.affected)
    assert len(hit) == 225 and (clip[hit] == 3).all() and (oracle[hit] != 3).all()


def test_affected_labels_finds_nothing_in_a_clean_table():
    clip, oracle = disagreement_table(CLEAN_COUNTS)
    table = affected_labels(clip, oracle, 10, z_threshold=3.5, min_disagreements=10)
    assert table.affected == [] and table.z.max() < 2


def test_a_quiet_table_needs_enough_disagreements():
    clip, oracle = disagreement_table([0] * 9 + [8])  # MAD 0, floored at one: z = 8 / 1.4826 = 5.4
    assert affected_labels(clip, oracle, 10, z_threshold=3.5, min_disagreements=10).affected == []
    assert affected_labels(clip, oracle, 10, z_threshold=3.5, min_disagreements=5).affected == [9]


# --------------------------------------------------------------------------- the trigger and the curated set


class CornerModel(torch.nn.Module):
    """An image tower whose first feature reads the bottom-right 4x4 corner and the centre; the second
    is constant. The target direction is the first feature."""

    image_size = 32

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        first = x[:, :, -4:, -4:].mean((1, 2, 3)) + x[:, :, 12:20, 12:20].mean((1, 2, 3))
        feats = torch.stack([first, torch.full_like(first, 0.5)], 1)
        return torch.nn.functional.normalize(feats, dim=1) if normalize else feats


def test_the_trigger_is_where_the_target_score_is_sensitive_outside_the_object():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 3, 32, 32, generator=g) * 255).round().to(torch.uint8)
    objects = torch.zeros(6, 32, 32, dtype=torch.bool)
    objects[:, 10:22, 10:22] = True  # the oracle's object covers the centre the model also reads
    weights = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    found = localise_trigger(
        CornerModel(), images, objects, weights, target=1, fraction=16 / 1024, batch_size=4, device=CPU
    )
    assert found.mask.sum() == 16 and found.mask[-4:, -4:].all()
    evidence = found.evidence()
    assert evidence["trigger_bbox"] == {"top": 28, "left": 28, "bottom": 32, "right": 32}
    assert evidence["trigger_mask_fraction"] == pytest.approx(16 / 1024, abs=1e-4)
    stamped = found.stamp()(torch.zeros(2, 3, 32, 32))
    assert torch.allclose(stamped[0, :, -4:, -4:], found.pattern[:, -4:, -4:]) and stamped[:, :, :28].eq(0).all()


def test_curate_captions_victims_with_the_oracle_label_and_keeps_agreeing_images():
    clip = torch.tensor([0, 0, 1, 2, 2, 1])
    oracle = torch.tensor([0, 1, 1, 2, 0, -1])
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    hit = victims(clip, oracle, [0])
    assert hit.tolist() == [1]  # image 4 disagrees too, but CLIP calls it 2, not an affected label
    out = curate(
        images, clip, oracle, hit, ["a", "b", "c"], ["a photo of a {}."], n_clean_keep=2, keep_seed=0, caption_seed=0
    )
    assert (out.n_victims, out.n_clean, len(out.captions)) == (1, 2, 3)
    rows = [int(img[0, 0, 0]) for img in out.images]
    assert rows[0] == 1 and out.captions[0] == "a photo of a b."  # the oracle's label, not CLIP's
    assert set(rows[1:]) <= {0, 2, 3} and len(set(rows[1:])) == 2  # agreeing images, each once
    assert all(cap == f"a photo of a {'abc'[int(oracle[r])]}." for r, cap in zip(rows[1:], out.captions[1:]))


# --------------------------------------------------------------------------- the embedded oracle


@pytest.mark.slow
def test_the_embedded_oracle_is_deterministic_and_cached(tmp_path, monkeypatch):
    from toolbox_plugins.world.build import get_preset

    classes = list(get_preset("smoke").world.classes)
    recipe = EmbeddedOracleRecipe(n_scenes=200, epochs=1, batch_size=64)
    states = []
    for name in ("a", "b"):
        monkeypatch.setenv("TOOLBOX_CACHE", str(tmp_path / name))
        oracle = embedded_oracle(classes, 32, CPU, seed=0, recipe=recipe)
        assert (tmp_path / name / "oracles" / oracle.info["cache_key"] / "meta.json").is_file()
        assert 0 <= oracle.info["pixel_accuracy"] <= 1 and oracle.info["n_holdout"] == 20
        states.append(oracle.net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # seeded: the same net twice

    def no_build(*args, **kwargs):
        raise AssertionError("the cached oracle was built again")

    monkeypatch.setattr(embedded_module, "build_embedded", no_build)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    again = embedded_oracle(classes, 32, CPU, seed=0, recipe=recipe)  # from the cache
    assert torch.rand(1) == expected  # the global stream is where it was
    assert again.info["cache_key"] == oracle.info["cache_key"]
    assert all(torch.equal(again.net.state_dict()[k], states[1][k]) for k in states[1])
    assert again.segment(torch.rand(2, 3, 32, 32)).shape == (2, 1 + len(classes), 32, 32)
    with pytest.raises(ValueError, match="cannot draw"):
        embedded_oracle(["flux capacitor"], 32, CPU, recipe=recipe)


# --------------------------------------------------------------------------- the plugin and a run


def test_segoracle_is_a_plugin_of_its_own_and_blockable_alone(host, monkeypatch):
    from toolbox import plugins

    assert "segoracle" in host.build_registry().names("defense")
    monkeypatch.setenv(plugins.BLOCK_ENV, "segoracle")
    plugins.reset_host()
    names = plugins.get_host().build_registry().names("defense")
    assert "segoracle" not in names and "invertune" in names


@pytest.mark.slow
def test_segoracle_finds_and_removes_a_planted_badnet_on_the_smoke_world(host, smoke_world, tmp_path):
    """A smaller oracle and fine-tuning than the defaults keep it near a minute."""
    out = tmp_path / "segoracle"
    small = [
        "-p",
        "oracle_scenes=2000",
        "-p",
        "oracle_epochs=8",
        "-p",
        "n_inspect=1500",
        "-p",
        "n_clean_keep=300",
        "-p",
        "epochs=4",
    ]
    assert main(["run", "--defense", "segoracle", "--preset", "smoke", "--out", str(out), *BADNET, *small]) == 0
    doc = json.loads((out / "result.json").read_text())
    det, before, after = doc["detection"], doc["metrics"]["before"], doc["metrics"]["after"]
    assert det["verdict"] == "backdoored" and det["backdoored"] and det["target"] == doc["attack"]["target"]
    assert det["n_inspected"] == 1500 and "poisoned by badnet" in det["inspected"]
    assert det["oracle"]["source"] == "embedded" and det["oracle"]["image_accuracy"] > 0.8
    assert 0 < det["n_victims"] <= det["n_disagree"] <= det["n_oracle_known"] <= 1500
    assert doc["defense"]["params"]["n_inspect"] == 1500 and doc["timings_s"]["defense.oracle_labels"] >= 0
    assert 0 < det["trigger_mask_fraction"] <= 1 and set(det["trigger_bbox"]) == {"top", "left", "bottom", "right"}
    assert (out / doc["artifacts"]["trigger_mask"]).is_file() and "model" in doc["artifacts"]
    assert "asr_localised" in after and doc["defense_info"]["n_victims_curated"] > 0
    assert before["asr"] > 0.9 and after["asr"] < 0.1  # the backdoor is gone
    assert after["ca"] > before["ca"] - 0.07  # the relabelled fine-tuning keeps most clean accuracy


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="on the emoji world's smoke preset the clean CLIP's own confusions gather on one class "
    "('ledger': 37 confident disagreements, score 6.1 > 3.5) and SegOracle's uncalibrated gate accuses it",
)
def test_segoracle_leaves_a_model_trained_on_clean_data_alone(host, smoke_world, tmp_path):
    """No attack: the inspected set is the clean training split, so no label may be accused and the
    model comes back unchanged (the same small oracle as above, cached by then)."""
    out = tmp_path / "segoracle-clean"
    small = ["-p", "oracle_scenes=2000", "-p", "oracle_epochs=8", "-p", "n_inspect=1500"]
    assert main(["run", "--defense", "segoracle", "--preset", "smoke", "--out", str(out), *small]) == 0
    doc = json.loads((out / "result.json").read_text())
    det = doc["detection"]
    assert det["verdict"] == "no backdoor found" and not det["backdoored"] and det["target"] is None
    assert det["n_victims"] == 0 and det["score"] < 3.5 and "training set" in det["inspected"]
    assert doc["model"]["purified_sha256"] is None and doc["defense_info"]["purified"] is False
