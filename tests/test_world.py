"""The procedural world: ImageNet vocabulary, determinism, real on-disk formats."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from toolbox.compat import import_open_clip
from toolbox_plugins.world.world import WorldConfig, write_world

TINY = WorldConfig(n_train=30, n_eval=28, n_retrieval=6, n_defender=5, seed=5)


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


def test_classes_are_imagenet_nouns():
    names = set(import_open_clip().IMAGENET_CLASSNAMES)
    cfg = WorldConfig()
    assert len(cfg.classes) >= 10
    assert set(cfg.classes) <= names
    assert "mushroom" in cfg.classes and "banana" in cfg.classes


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = write_world(TINY, tmp_path / "again")
    assert digest(world.root) == digest(again.root)
    other = write_world(WorldConfig(n_train=30, n_eval=28, n_retrieval=6, n_defender=5, seed=6), tmp_path / "o")
    assert digest(other.root) != digest(world.root)


def test_formats_on_disk(world):
    rows = list(csv.DictReader(world.train_csv.open()))
    assert len(rows) == TINY.n_train and set(rows[0]) == {"image", "caption"}
    assert all((world.train_csv.parent / r["image"]).is_file() for r in rows)
    labels = list(csv.DictReader(world.eval_labels.open()))
    assert len(labels) == TINY.n_eval
    classes = (world.eval_labels.parent / "classes.txt").read_text().split("\n")[:-1]
    for r in labels:  # labels.csv index matches the folder the image sits in
        assert Path(r["image"]).parent.name == classes[int(r["label"])].replace(" ", "_")
    coco = json.loads(world.retrieval_json.read_text())
    per_image = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert len(coco["images"]) == TINY.n_retrieval
    assert all(len(c) == 5 and len(set(c)) == 5 for c in per_image.values())
    assert len(list(world.defender_dir.glob("*.png"))) == TINY.n_defender


def test_captions_name_the_object(world):
    rows = list(csv.DictReader(world.train_csv.open()))
    classes = WorldConfig().classes
    assert all(any(c in r["caption"] for c in classes) for r in rows)


def test_unknown_class_is_rejected():
    with pytest.raises(ValueError, match="no drawer"):
        WorldConfig(classes=("mushroom", "unicorn"))


def test_scenes_carry_their_object_mask_and_images_are_unchanged():
    """The mask (a segmentation oracle's target) is drawn without the scene's random stream, so every
    image, and with it every cached world and model, is what it was before masks existed."""
    import random

    from toolbox_plugins.world.draw import DRAWERS, render

    names, digest = list(DRAWERS), hashlib.sha256()
    for label in range(len(names)):
        scene = render(names, label, random.Random(label), 32)
        digest.update(scene.image.tobytes())
        assert scene.mask.shape == (32, 32) and 0.01 < scene.mask.mean() < 0.5
    assert digest.hexdigest() == "e437ef2589e158fe5712cef1b7a41d6cbd538066cd3549d15bc1d2bb2123982e"
