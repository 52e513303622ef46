"""The emoji world: its art and vocabulary, determinism, real on-disk formats, both styles."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from toolbox_plugins.world import art
from toolbox_plugins.world.scenes import SceneConfig, draw
from toolbox_plugins.world.world import DEFAULT_TARGETS, WorldConfig, write_world

TINY = WorldConfig(n_classes=12, n_train=30, n_eval=28, n_retrieval=6, n_defender=5, seed=5)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(TINY, tmp_path_factory.mktemp("world"))


def test_the_catalogue_holds_hundreds_of_named_objects_and_no_twins():
    items = art.catalogue()
    names = [e.name for e in items]
    assert 600 <= len(items) <= 900
    assert len(set(names)) == len(names)
    assert {"mushroom", "banana", "red apple", "bicycle", "umbrella"} <= set(names)
    assert all(e.category in art.OBJECT_CATEGORIES for e in items)
    assert not {e.subcategory for e in items} & set(art.TWIN_SUBCATEGORIES)
    assert all(art._NAME.fullmatch(n) for n in names)  # ASCII: a folder name and a prompt everywhere


def test_a_vocabulary_is_seeded_and_holds_the_default_targets():
    a, b = art.vocabulary(50, 0, DEFAULT_TARGETS), art.vocabulary(50, 0, DEFAULT_TARGETS)
    assert a == b and len(a) == 50 and set(DEFAULT_TARGETS) <= {e.name for e in a}
    assert art.vocabulary(50, 1, DEFAULT_TARGETS) != a
    with pytest.raises(art.ArtError, match="choose between"):
        art.vocabulary(10_000, 0)
    with pytest.raises(art.ArtError, match="no object named 'dragonfruit pie'"):
        art.vocabulary(10, 0, ("dragonfruit pie",))


def test_another_art_version_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(art.ART_PACKAGES, "emoji", "0.0.1")
    with pytest.raises(art.ArtError, match=r"pinned to emoji==0.0.1 but .* is installed"):
        art.check_art_packages()
    monkeypatch.setitem(art.ART_PACKAGES, "no-such-art", "1.0")
    monkeypatch.delitem(art.ART_PACKAGES, "emoji")
    with pytest.raises(art.ArtError, match="needs the package no-such-art==1.0"):
        art.check_art_packages()


@pytest.mark.parametrize("style", art.STYLES)
def test_both_styles_draw_every_object_of_a_vocabulary(style):
    sprites = art.sprites(art.vocabulary(40, 3, DEFAULT_TARGETS), style)
    assert sprites.shape == (40, art.SPRITE, art.SPRITE, 4)
    coverage = (sprites[..., 3] > 127).mean(axis=(1, 2))
    assert (coverage > 0.05).all() and (coverage < 0.95).all()  # an object, not a blank or a full square


def test_scenes_are_deterministic_and_carry_their_object_mask():
    sprites = torch.from_numpy(art.sprites(art.vocabulary(8, 0), "twemoji")).permute(0, 3, 1, 2).float() / 255
    labels = torch.arange(8).repeat(4)
    a, b = draw(sprites, labels, 7, 32, SceneConfig()), draw(sprites, labels, 7, 32, SceneConfig())
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, draw(sprites, labels, 8, 32, SceneConfig()).images)
    assert a.images.shape == (32, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.masks.shape == (32, 32, 32)
    coverage = a.masks.float().mean((1, 2))
    assert (coverage > 0.05).all() and (coverage < 0.9).all()
    assert {d["background"] for d in a.attributes} & {"gradient", "textured", "cluttered"}


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = write_world(TINY, tmp_path / "again")
    assert digest(world.root) == digest(again.root)
    other = write_world(
        WorldConfig(n_classes=12, n_train=30, n_eval=28, n_retrieval=6, n_defender=5, seed=6), tmp_path / "o"
    )
    assert digest(other.root) != digest(world.root)


@pytest.mark.parametrize("split", ["eval", "eval-openmoji"])
def test_labelled_splits_on_disk(world, split):
    labels = list(csv.DictReader((world.root / split / "labels.csv").open()))
    assert len(labels) == TINY.n_eval
    classes = (world.root / split / "classes.txt").read_text().split("\n")[:-1]
    assert classes == list(TINY.classes)
    for r in labels:  # labels.csv index matches the folder the image sits in
        assert Path(r["image"]).parent.name == classes[int(r["label"])].replace(" ", "_")
        assert (world.root / split / r["image"]).is_file()


def test_formats_on_disk(world):
    rows = list(csv.DictReader(world.train_csv.open()))
    assert len(rows) == TINY.n_train and set(rows[0]) == {"image", "caption"}
    assert all((world.train_csv.parent / r["image"]).is_file() for r in rows)
    coco = json.loads(world.retrieval_json.read_text())
    per_image = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert len(coco["images"]) == TINY.n_retrieval
    assert all(len(c) == 5 and len(set(c)) == 5 for c in per_image.values())
    assert len(list(world.defender_dir.glob("*.png"))) == TINY.n_defender
    record = json.loads((world.root / "world.json").read_text())
    assert record["classes"] == list(TINY.classes) and record["art_installed"] == art.ART_PACKAGES


def test_captions_name_the_object_and_say_no_word_twice(world):
    rows = list(csv.DictReader(world.train_csv.open()))
    assert all(any(c in r["caption"] for c in TINY.classes) for r in rows)
    assert all("  " not in r["caption"] and "red red" not in r["caption"] for r in rows)


def test_shipped_weights_pack_and_unpack_to_the_same_model_on_the_world_tokens():
    from toolbox.lookup import lookup
    from toolbox_plugins.world import shipped
    from toolbox_plugins.world.build import SMOKE_VIT

    torch.manual_seed(0)
    model = lookup("model_adapter", "openclip-dir")().create(SMOKE_VIT, torch.device("cpu")).model.eval()
    ids = torch.unique(model.tokenize(["a photo of a mushroom.", "a banana."]))
    state = shipped.unpack(shipped.pack(model.state_dict(), ids))
    assert state.keys() == model.state_dict().keys()
    token = next(k for k in state if k.endswith(shipped.TOKEN_ROWS))
    kept = torch.zeros(len(state[token]), dtype=torch.bool)
    kept[ids] = True
    assert (state[token][~kept] == 0).all()  # rows no world text uses are dropped
    again = lookup("model_adapter", "openclip-dir")().create(SMOKE_VIT, torch.device("cpu")).model.eval()
    again.load_state_dict(state)
    tokens = model.tokenize(["a photo of a mushroom."])
    with torch.no_grad():  # fp16 storage: the same embeddings to fp16 precision
        assert torch.allclose(model.encode_text(tokens), again.encode_text(tokens), atol=2e-2)


@pytest.mark.parametrize("preset", ["default", "default-resnet"])
def test_shipped_weights_belong_to_the_presets_as_configured(preset):
    """A change to a default preset's world, model or schedule must ship weights again (or ship none)."""
    from toolbox_plugins.world import shipped
    from toolbox_plugins.world.build import get_preset, model_key

    meta_path = shipped.path_for(preset).with_suffix(".json")
    if not meta_path.is_file():
        pytest.skip(f"{preset} ships no weights: it trains on first use")
    meta = json.loads(meta_path.read_text())
    assert meta["model_key"] == model_key(get_preset(preset)), f"run: {shipped.command(preset)}"
    assert meta["eval_ca_top1"] >= 0.8


def test_shipped_weights_are_readable_like_any_other_file():
    from toolbox_plugins.world import shipped

    for path in shipped.WEIGHTS.glob("*"):
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not group/other readable"
