"""Dataset formats -> :class:`toolbox.api.ImageData`.

ImageFolder trees, CleanCLIP's ``labels.csv`` (+ class names), CleanCLIP/CC3M-style
image-caption CSVs, COCO-captions JSON, and plain folders of images. Every format
yields [0,1] tensors at the model's input size.

Small datasets (under ``EAGER_LIMIT_BYTES`` as uint8) are decoded once into memory;
larger ones are decoded lazily, batch by batch, so memory does not grow with the dataset.
``skip_unreadable`` reads every image up front, drops the ones that fail and lists them in
``ImageData.skipped``; without it, the first unreadable image raises an error that names the file.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from toolbox.api import DatasetAdapter, ImageData
from toolbox.intake.files import MAX_TABLE_BYTES, is_regular, open_text, read_json, read_text

from .images import UnreadableImageError, is_image_file, load_image

EAGER_LIMIT_BYTES = 256 << 20  # 1,783 images at 224 px decoded once; a larger set streams from disk


class FileImages(Dataset):
    """``(image, target)`` pairs from image files; target is a label or an index."""

    def __init__(
        self, paths: Sequence[Path], targets: Sequence[int], size: int, *, skip_unreadable: bool = False
    ) -> None:
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


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV; a row missing one of ``columns`` (or with it empty) is an error naming the row."""
    with open_text(path, "dataset table", MAX_TABLE_BYTES) as fh:  # a regular file only: a FIFO would hang
        rows = list(csv.DictReader(fh))
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        empty = [c for c in columns if not (row.get(c) or "").strip()]
        if empty:
            raise ValueError(f"{path}: line {n} has no {' and no '.join(empty)}")
    return rows


def _csv_header(path: Path) -> list[str]:
    try:
        with open_text(path, "dataset table", MAX_TABLE_BYTES) as fh:
            return next(csv.reader(fh), [])
    except (OSError, ValueError, csv.Error):  # the intake's InputError is a ValueError; so is a bad UTF-8 byte
        return []


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def _classnames_file(path: Path) -> list[str]:
    return [ln.strip() for ln in read_text(path, "class names file").splitlines() if ln.strip()]


class ImageFolderAdapter(DatasetAdapter):
    """``root/<class>/<image>``; classes in sorted folder order (torchvision's convention).

    Class names: ``classes.txt`` in the root (one per line, in sorted-folder order) if present;
    else, given a vocabulary ``classnames``, folders named by class are labelled by name, and
    folders none of which is a class name (ImageNet's wnids) by position when the counts agree;
    else the folder names themselves. Anything else is refused rather than guessed.
    """

    name = "imagefolder"
    kind = "labelled"
    summary = "ImageFolder tree: root/<class>/<image>, classes in sorted folder order."
    reference = "torchvision.datasets.ImageFolder"

    def detect(self, source: str) -> bool:
        root = Path(source)
        return (
            root.is_dir() and any(d.is_dir() for d in root.iterdir()) and not (root / "open_clip_config.json").exists()
        )

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        root = Path(source)
        folders = sorted(d for d in root.iterdir() if d.is_dir())
        names, labels = self._labels(root, [d.name for d in folders], classnames)
        paths, targets = [], []
        for folder in folders:
            for p in sorted(folder.iterdir()):
                if is_image_file(p):
                    paths.append(p)
                    targets.append(labels[folder.name])
        ds = FileImages(paths, targets, image_size, skip_unreadable=skip_unreadable)
        return ImageData(ds, "labelled", str(root), classnames=names, skipped=ds.skipped)

    @staticmethod
    def _labels(root: Path, folders: list[str], classnames: Sequence[str] | None) -> tuple[list[str], dict[str, int]]:
        """The class names, and ``folder -> label`` (an index into them)."""
        by_position = {f: i for i, f in enumerate(folders)}
        if (root / "classes.txt").exists():
            names = _classnames_file(root / "classes.txt")
            if len(names) != len(folders):
                raise ValueError(f"{root} has {len(folders)} class folders but classes.txt names {len(names)}")
            return names, by_position
        if classnames is None:
            return list(folders), by_position
        vocab = list(classnames)
        if all(f in vocab for f in folders):  # folders named by class: label by name, never by position
            return vocab, {f: vocab.index(f) for f in folders}
        if len(folders) == len(vocab) and not any(f in vocab for f in folders):
            return vocab, by_position  # ImageNet's wnid folders (n01440764, ...): the i-th is the i-th name
        unknown = [f for f in folders if f not in vocab]
        raise ValueError(
            f"{root}: class folders {unknown[:5]} are not in the class vocabulary ({len(vocab)} "
            f"classes) and there is no classes.txt saying what they are"
        )


class LabelsCsvAdapter(DatasetAdapter):
    """CleanCLIP's evaluation format: ``labels.csv`` with ``image,label`` (label = class index),
    class names from ``classes.txt`` beside it or from ``--classes``."""

    name = "labels-csv"
    kind = "labelled"
    summary = "CleanCLIP labels.csv (image,label) with a class-names file."
    reference = "CleanCLIP (Bansal et al., ICCV 2023) data layout"

    def detect(self, source: str) -> bool:
        p = Path(source)
        return p.suffix == ".csv" and is_regular(p) and {"image", "label"} <= set(_csv_header(p))

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        path = Path(source)
        rows = _read_csv(path, ("image", "label"))
        names_file = path.parent / "classes.txt"
        names = _classnames_file(names_file) if names_file.exists() else (list(classnames) if classnames else None)
        if names is None:
            raise ValueError(f"{path}: no classes.txt beside it and no --classes given")
        targets = []
        for n, r in enumerate(rows, start=2):
            label = r["label"].strip()
            if not label.isdigit() or int(label) >= len(names):
                raise ValueError(f"{path}: line {n}: label {label!r} is not a class index in 0..{len(names) - 1}")
            targets.append(int(label))
        ds = FileImages(
            [_resolve(path.parent, r["image"]) for r in rows], targets, image_size, skip_unreadable=skip_unreadable
        )
        return ImageData(ds, "labelled", str(path), classnames=names, skipped=ds.skipped)


class CaptionCsvAdapter(DatasetAdapter):
    """CleanCLIP / CC3M-style training CSV: columns ``image,caption`` (paths relative to the CSV)."""

    name = "caption-csv"
    kind = "captioned"
    summary = "Image-caption CSV (image,caption), CleanCLIP/CC3M style."
    reference = "CleanCLIP train.csv layout"

    def detect(self, source: str) -> bool:
        p = Path(source)
        return p.suffix == ".csv" and is_regular(p) and {"image", "caption"} <= set(_csv_header(p))

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        path = Path(source)
        rows = _read_csv(path, ("image", "caption"))
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
        if not (p.suffix == ".json" and is_regular(p)):
            return False
        try:
            head = read_json(p, "COCO captions file", MAX_TABLE_BYTES)
        except (OSError, ValueError):
            return False
        return isinstance(head, dict) and "images" in head and "annotations" in head

    def load(self, source: str, image_size: int, *, classnames=None, skip_unreadable=False) -> ImageData:
        path = Path(source)
        doc = read_json(path, "COCO captions file", MAX_TABLE_BYTES)
        by_id: dict[int, list[str]] = {}
        for n, ann in enumerate(_records(doc, "annotations", ("image_id", "caption"), path)):
            if not isinstance(ann["caption"], str) or not ann["caption"].strip():
                raise ValueError(f"{path}: annotations[{n}] has no caption text")
            by_id.setdefault(ann["image_id"], []).append(ann["caption"])
        images = [im for im in _records(doc, "images", ("id", "file_name"), path) if im["id"] in by_id]

        def where(name: str) -> Path:
            direct = _resolve(path.parent, name)
            return direct if direct.exists() else path.parent / "images" / name

        ds = FileImages(
            [where(im["file_name"]) for im in images],
            list(range(len(images))),
            image_size,
            skip_unreadable=skip_unreadable,
        )
        kept_paths = set(map(str, ds.paths))
        captions = [by_id[im["id"]] for im in images if str(where(im["file_name"])) in kept_paths]
        ds.targets = list(range(len(ds.paths)))
        return ImageData(ds, "captioned", str(path), captions=captions, skipped=ds.skipped)


def _records(doc: object, key: str, fields: tuple[str, ...], path: Path) -> list[dict]:
    """``doc[key]`` as a list of objects that each have ``fields`` (COCO JSON from a stranger)."""
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path}: {key!r} is not a list")
    for n, item in enumerate(items):
        if not isinstance(item, dict) or any(f not in item for f in fields):
            raise ValueError(f"{path}: {key}[{n}] lacks one of {', '.join(fields)}")
    return items


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
    CocoCaptionsAdapter,
    LabelsCsvAdapter,
    CaptionCsvAdapter,
    ImageDirAdapter,
    ImageFolderAdapter,
)
