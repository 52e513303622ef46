"""Dataset adapters: every format, every PIL mode, unreadable files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.datasets import (
    CaptionCsvAdapter,
    CocoCaptionsAdapter,
    ImageDirAdapter,
    ImageFolderAdapter,
    LabelsCsvAdapter,
)
from adapters.images import UnreadableImageError, load_image
from toolbox_plugins.world.world import WorldConfig, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(
        WorldConfig(n_classes=14, n_train=20, n_eval=28, n_retrieval=4, n_defender=3), tmp_path_factory.mktemp("w")
    )


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1", "RGB"])
def test_any_pil_mode_becomes_rgb_in_unit_range(tmp_path, mode):
    arr = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    if mode == "I;16":
        img = Image.fromarray(arr[..., 0].astype(np.uint16) * 200)  # 16-bit greyscale
    else:
        img = Image.fromarray(arr).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("I", "F", "CMYK") else "x.png")
    img.save(path)
    if mode == "I;16":
        assert Image.open(path).mode.startswith("I")
    t = load_image(path, 32)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_unreadable_image_is_named_or_skipped(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8), "red").save(d / "ok.png")
    (d / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        ImageDirAdapter().load(str(d), 16)
    data = ImageDirAdapter().load(str(d), 16, skip_unreadable=True)
    assert len(data.dataset) == 1 and data.skipped == [str(d / "bad.png")]


def test_imagefolder_and_labels_csv_agree(world):
    folder = ImageFolderAdapter()
    labels = LabelsCsvAdapter()
    assert folder.detect(str(world.eval_folder)) and labels.detect(str(world.eval_labels))
    a = folder.load(str(world.eval_folder), 32)
    b = labels.load(str(world.eval_labels), 32)
    assert len(a.dataset) == len(b.dataset) == 28
    by_path_a = {str(p): a.classnames[y] for p, y in zip(a.dataset.paths, a.dataset.targets)}
    by_path_b = {str(p): b.classnames[y] for p, y in zip(b.dataset.paths, b.dataset.targets)}
    assert by_path_a == by_path_b
    x, y = a.dataset[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)


def test_caption_csv_and_coco(world):
    cap = CaptionCsvAdapter()
    assert cap.detect(str(world.train_csv)) and not cap.detect(str(world.eval_labels))
    data = cap.load(str(world.train_csv), 24)
    assert data.kind == "captioned" and len(data.captions) == len(data.dataset) == 20
    assert data.dataset[3][0].shape == (3, 24, 24)
    coco = CocoCaptionsAdapter()
    assert coco.detect(str(world.retrieval_json))
    data = coco.load(str(world.retrieval_json), 32)
    assert len(data.dataset) == 4 and all(len(c) == 5 for c in data.captions)


def test_coco_resolves_images_subfolder_and_skips(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (10, 10), "blue").save(tmp_path / "images" / "a.jpg")
    (tmp_path / "images" / "b.jpg").write_bytes(b"\x00")
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "a blue square"},
            {"id": 2, "image_id": 2, "caption": "broken"},
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(doc))
    data = CocoCaptionsAdapter().load(str(tmp_path / "c.json"), 8, skip_unreadable=True)
    assert data.captions == [["a blue square"]] and len(data.skipped) == 1


def test_labels_csv_needs_class_names(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("image,label\na.png,0\n")
    with pytest.raises(ValueError, match="classes"):
        LabelsCsvAdapter().load(str(tmp_path / "labels.csv"), 8)
    data = LabelsCsvAdapter().load(str(tmp_path / "labels.csv"), 8, classnames=["thing"])
    assert data.classnames == ["thing"]
