"""DBOM (toolbox_plugins/dbom): a known trigger planted in a small set is flagged, clean images are not."""

from __future__ import annotations

import json

import pytest
import torch

from toolbox.api import DataScanContext, ImageData, InMemoryImages
from toolbox.cli import main
from toolbox.lookup import lookup
from toolbox_plugins.dbom.dbom import Dbom, DbomConfig
from toolbox_plugins.dbom.prompts import SoftPrompts, token_embedding

PLANTED = 100  # of 600 scanned images


@pytest.fixture(scope="module")
def smoke():
    import toolbox

    return toolbox.load(preset="smoke", device="cpu")


def planted_set(smoke, attack: str) -> tuple[ImageData, torch.Tensor]:
    x = smoke.images(600, seed=1).float() / 255
    x[:PLANTED] = lookup("attack", attack)().apply_trigger(x[:PLANTED]).clamp(0, 1)
    poisoned = torch.arange(len(x)) < PLANTED
    return ImageData(InMemoryImages((x * 255).round().to(torch.uint8)), "unlabelled", "planted"), poisoned


def scan(smoke, data, tmp_path, **overrides):
    clean = ImageData(InMemoryImages(smoke.images(512, seed=0)), "unlabelled", "defender")
    ctx = DataScanContext(
        data, smoke.model, smoke.classnames, smoke.templates, 0, torch.device("cpu"), tmp_path, smoke.model, clean
    )
    return Dbom(DbomConfig(images=512, **overrides)).scan(ctx)


def test_dbom_flags_most_of_a_planted_known_trigger(smoke_world, smoke, tmp_path):
    """SIG's stripes, a family DBOM knows, on a sixth of a small set: most flagged, few clean ones."""
    data, poisoned = planted_set(smoke, "sig")
    out = scan(smoke, data, tmp_path)
    flagged = out.flagged
    tpr = float((flagged & poisoned).sum()) / PLANTED
    fpr = float((flagged & ~poisoned).sum()) / int((~poisoned).sum())
    assert tpr >= 0.8 and fpr <= 0.15, (tpr, fpr)
    assert out.scores[poisoned].mean() > out.scores[~poisoned].mean() + 0.3
    info = out.info
    unseen = info["primitives_set"]["unseen_pairs"]
    assert set(unseen) == {"badnet", "blended", "sig"} and all(unseen.values())
    held = [o for objs in unseen.values() for o in objs]
    assert len(held) == len(set(held)), "an object is held out for one trigger, seen with the others"
    assert info["primitives_test"]["per_trigger"]["sig"]["tpr"] >= 0.8
    assert (tmp_path / "dbom_predictions.csv").read_text().splitlines()[0] == "index,score,trigger,object,dbom_object"
    assert all(q.requires_grad for q in smoke.model.parameters()), "the frozen encoder's flags come back"


def test_bad_settings_and_models_are_clear_errors():
    from toolbox_plugins.dbom.primitives import known_triggers

    with pytest.raises(ValueError, match="known names at least one trigger family"):
        DbomConfig(known=())
    with pytest.raises(ValueError, match="top <= each repository"):
        DbomConfig(top=40)
    with pytest.raises(ValueError, match="each a registered attack, once"):
        DbomConfig(known=("badnet", "nosuch"))
    with pytest.raises(ValueError, match="each a registered attack, once"):
        DbomConfig(known=("badnet", "badnet"))
    with pytest.raises(ValueError, match="badclip's trigger cannot be applied before its backdoor"):
        known_triggers(("badclip",), 32)

    class NoEmbedding:
        pass

    with pytest.raises(ValueError, match="must expose its text tower's token embedding"):
        token_embedding(NoEmbedding())  # type: ignore[arg-type]


def test_soft_prompts_with_the_words_own_vectors_encode_the_sentence(smoke):
    """Placed where the placeholders were, the token vectors of "a photo of clean apple" give exactly
    the tower's own encoding of that sentence: positions, mask and pooling are the tower's."""
    prompts = SoftPrompts(smoke.model, 3)
    tokens = smoke.model.tokenize(["a photo of clean apple"])[0]
    assert int(tokens[6]) == int(tokens.max()), "one token per word (end of text at position 6)"
    rows = token_embedding(smoke.model)(tokens[None])[0].detach()
    with torch.no_grad():
        soft = prompts.encode(rows[1:4], rows[4:5], rows[5:6])
        plain = smoke.model.encode_text(tokens[None])
    assert torch.allclose(soft, plain, atol=1e-5)


def test_soft_prompts_place_learned_vectors_where_the_placeholders_were(smoke):
    prompts = SoftPrompts(smoke.model, 3)
    words = prompts.words(["clean", "red apple"])
    context = prompts.words(["a photo of"]).expand(3, -1)
    learned = prompts.encode(context, words[:1], words[1:])
    assert learned.shape[0] == 1 and torch.isfinite(learned).all()
    assert not torch.allclose(learned, prompts.encode(context, words[1:], words[:1]))  # order matters


@pytest.mark.slow
def test_scan_data_runs_dbom_on_an_attacks_poisoned_set(host, smoke_world, tmp_path):
    out = tmp_path / "scan"
    argv = ["scan-data", "--defense", "dbom", "--attack", "sig", "--preset", "smoke", "--out", str(out)]
    assert main([*argv, "-p", "images=512"]) == 0
    # the same seed, the same flags: two threads must not add the prompts' gradients in another order
    assert main([*argv[:-1], str(tmp_path / "again"), "-p", "images=512"]) == 0
    predictions = "scan-artifacts/dbom_predictions.csv"
    assert (out / predictions).read_bytes() == (tmp_path / "again" / predictions).read_bytes()
    doc = json.loads((out / "scan.json").read_text())
    det = doc["metrics"]["detection"]
    # smoke scale (256 defender images): the 0.5 threshold flags about a fifth of clean samples; recall and ranking hold
    assert det["tpr"] >= 0.7 and det["auroc"] >= 0.9 and doc["scan_info"]["known"] == ["badnet", "blended", "sig"]
    assert doc["scan_info"]["encoder"] == "base" and doc["clean_data"]["n"] >= 20
    assert main([*argv[:-2], "--out", str(tmp_path / "bad"), "-p", "known=nosuch"]) == 2
    assert main([*argv[:-2], "--out", str(tmp_path / "learned"), "-p", "known=badclip"]) == 2  # bad input


def test_dbom_is_listed_with_the_attacks_plugin_blocked(monkeypatch):
    """Its config checks ``known`` against the attacks; a listing without them still shows its defaults."""
    from toolbox import plugins

    monkeypatch.setenv(plugins.BLOCK_ENV, "attacks")
    plugins.reset_host()
    try:
        entry = plugins.get_host().build_registry().get("dataset_defense", "dbom")
        assert entry.params["known"] == ["badnet", "blended", "sig"] and entry.params["images"] == 2000
    finally:
        monkeypatch.delenv(plugins.BLOCK_ENV)
        plugins.reset_host()


def test_clean_data_for_a_defense_that_learns_from_none_is_refused(host, tmp_path):
    argv = ["scan-data", "--defense", "flare", "--preset", "smoke", "--clean-data", str(tmp_path)]
    argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2 and not (tmp_path / "o").exists()
