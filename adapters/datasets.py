"""Dataset formats -> :class:`toolbox.api.ImageData`.

ImageFolder trees, CleanCLIP's ``labels.csv`` (+ class names), CleanCLIP/CC3M-style
image-caption CSVs, COCO-captions JSON, and plain folders of images. Every format
yields [0,1] tensors at the model's input size.

Small datasets (under ``EAGER_LIMIT_BYTES`` as uint8) are decoded once into memory;
larger ones are decoded lazily. ``skip_unreadable`` reads every image up front, drops
the ones that fail and lists them in ``ImageData.skipped``; without it, the first
unreadable image raises an error that names the file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from toolbox.api import DatasetAdapter, ImageData

from .images import UnreadableImageError, is_image_file, load_image

EAGER_LIMIT_BYTES = 1 << 30


class FileImages(Dataset):
    """``(image, target)`` pairs from image files; target is a label or an index."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], size: int, *,
                 skip_unreadable: bool = False) -> None:
        self.size = size
        self.skipped: list[str] = []
        paths, targets = list(paths), list(targets)
        self.cache: torch.Tensor | None = None
        eager = len(paths) * 3 * size * size <= EAGER_LIMIT_BYTES
        if eager or skip_unreadable:
            keep, images = [], []
            for i, p in enumerate(paths):
                try:
                    img = load_image(p, size)
                except UnreadableImageError:
                    if not skip_unreadable:
                        raise
                    self.skipped.append(str(p))
                    continue
                keep.append(i)
                if eager:
                    images.append(img.mul(255).round().to(torch.uint8))
            paths, targets = [paths[i] for i in keep], [targets[i] for i in keep]
            if eager:
                self.cache = torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        self.paths, self.targets = paths, targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.cache is not None:
            return self.cache[i].float().div_(255.0), self.targets[i]
        return load_image(self.paths[i], self.size), self.targets[i]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return []


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def _classnames_file(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


class ImageFolderAdapter(DatasetAdapter):
    """``root/<class>/<image>``; classes in sorted folder order (torchvision's convention).

    Class names: ``classes.txt`` in the root (one per line, in sorted-folder order) if present,
    else ``classnames`` if given (the i-th sorted folder is the i-th name: ImageNet wnid
    folders, say), else the folder names themselves.
    """

    name = "imagefolder"
    kind = "labelled"
    summary = "ImageFolder tree: root/<class>/<image>, classes in sorted folder order."
    reference = "torchvision.datasets.ImageFolder"

    def detect(self, source: str) -> bool:
        root = Path(source)
        return root.is_dir() and any(d.is_dir() for d in root.iterdir()) and \
            not (root / "open_clip_config.json").exists()

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        root = Path(source)
        folders = sorted(d for d in root.iterdir() if d.is_dir())
        if (root / "classes.txt").exists():
            names = _classnames_file(root / "classes.txt")
        elif classnames is not None:
            names = list(classnames)
        else:
            names = [d.name for d in folders]
        if len(names) != len(folders):
            raise ValueError(f"{root} has {len(folders)} class folders but {len(names)} class names")
        paths, targets = [], []
        for label, folder in enumerate(folders):
            for p in sorted(folder.iterdir()):
                if is_image_file(p):
                    paths.append(p)
                    targets.append(label)
        ds = FileImages(paths, targets, image_size, skip_unreadable=skip_unreadable)
        return ImageData(ds, "labelled", str(root), classnames=names, skipped=ds.skipped)


class LabelsCsvAdapter(DatasetAdapter):
    """CleanCLIP's evaluation format: ``labels.csv`` with ``image,label`` (label = class index),
    class names from ``classes.txt`` beside it or from ``--classes``."""

    name = "labels-csv"
    kind = "labelled"
    summary = "CleanCLIP labels.csv (image,label) with a class-names file."
    reference = "CleanCLIP (Bansal et al., ICCV 2023) data layout"

    def detect(self, source: str) -> bool:
        p = Path(source)
        return p.is_file() and p.suffix == ".csv" and {"image", "label"} <= set(_csv_header(p))

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        path = Path(source)
        rows = _read_csv(path)
        names_file = path.parent / "classes.txt"
        names = _classnames_file(names_file) if names_file.exists() else (list(classnames) if classnames else None)
        if names is None:
            raise ValueError(f"{path}: no classes.txt beside it and no --classes given")
        targets = [int(r["label"]) for r in rows]
        if targets and max(targets) >= len(names):
            raise ValueError(f"{path}: label {max(targets)} but only {len(names)} class names")
        ds = FileImages([_resolve(path.parent, r["image"]) for r in rows], targets, image_size,
                        skip_unreadable=skip_unreadable)
        return ImageData(ds, "labelled", str(path), classnames=names, skipped=ds.skipped)


class CaptionCsvAdapter(DatasetAdapter):
    """CleanCLIP / CC3M-style training CSV: columns ``image,caption`` (paths relative to the CSV)."""

    name = "caption-csv"
    kind = "captioned"
    summary = "Image-caption CSV (image,caption), CleanCLIP/CC3M style."
    reference = "CleanCLIP train.csv layout"

    def detect(self, source: str) -> bool:
        p = Path(source)
        return p.is_file() and p.suffix == ".csv" and {"image", "caption"} <= set(_csv_header(p))

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        path = Path(source)
        rows = _read_csv(path)
        paths = [_resolve(path.parent, r["image"]) for r in rows]
        ds = FileImages(paths, list(range(len(rows))), image_size, skip_unreadable=skip_unreadable)
        kept = set(ds.targets)
        captions = [[r["caption"]] for i, r in enumerate(rows) if i in kept]
        ds.targets = list(range(len(ds.paths)))  # re-index after skipping
        return ImageData(ds, "captioned", str(path), captions=captions, skipped=ds.skipped)


class CocoCaptionsAdapter(DatasetAdapter):
    """COCO captions JSON (``images`` + ``annotations`` with ``image_id``/``caption``);
    images resolved relative to the JSON's folder (or its ``images/`` subfolder)."""

    name = "coco-captions"
    kind = "captioned"
    summary = "COCO-captions JSON (images + annotations), several captions per image."
    reference = "COCO Captions (Chen et al., 2015) annotation format"

    def detect(self, source: str) -> bool:
        p = Path(source)
        if not (p.is_file() and p.suffix == ".json"):
            return False
        try:
            head = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(head, dict) and "images" in head and "annotations" in head

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        path = Path(source)
        doc = json.loads(path.read_text(encoding="utf-8"))
        by_id: dict[int, list[str]] = {}
        for ann in doc["annotations"]:
            by_id.setdefault(ann["image_id"], []).append(ann["caption"])
        images = [im for im in doc["images"] if im["id"] in by_id]

        def where(name: str) -> Path:
            direct = _resolve(path.parent, name)
            return direct if direct.exists() else path.parent / "images" / name

        ds = FileImages([where(im["file_name"]) for im in images], list(range(len(images))), image_size,
                        skip_unreadable=skip_unreadable)
        kept_paths = set(map(str, ds.paths))
        captions = [by_id[im["id"]] for im in images if str(where(im["file_name"])) in kept_paths]
        ds.targets = list(range(len(ds.paths)))
        return ImageData(ds, "captioned", str(path), captions=captions, skipped=ds.skipped)


class ImageDirAdapter(DatasetAdapter):
    """A flat folder of images (the defender's arbitrary clean images)."""

    name = "image-dir"
    kind = "unlabelled"
    summary = "A flat folder of unlabelled images."
    reference = "-"

    def detect(self, source: str) -> bool:
        p = Path(source)
        return p.is_dir() and any(is_image_file(f) for f in p.iterdir())

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        paths = sorted(f for f in Path(source).iterdir() if is_image_file(f))
        ds = FileImages(paths, list(range(len(paths))), image_size, skip_unreadable=skip_unreadable)
        ds.targets = list(range(len(ds.paths)))
        return ImageData(ds, "unlabelled", str(source), skipped=ds.skipped)


DATASET_ADAPTERS: tuple[type[DatasetAdapter], ...] = (
    CocoCaptionsAdapter, LabelsCsvAdapter, CaptionCsvAdapter, ImageDirAdapter, ImageFolderAdapter)
