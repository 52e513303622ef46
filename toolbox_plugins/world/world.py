"""The world's splits, written to disk in the formats real datasets use.

Layout of a world directory::

    train/train.csv + train/images/           image-caption CSV (CleanCLIP / CC3M style), Twemoji art
    eval/imagefolder/<class>/*.png            labelled split as an ImageFolder tree, Twemoji art
    eval/labels.csv + eval/classes.txt        the same split as CleanCLIP's labels.csv
    eval-openmoji/labels.csv + imagefolder/   the same classes drawn in OpenMoji's hand (a second style)
    retrieval/captions.json + images/         COCO-captions JSON, 5 captions per image
    defender/*.png                            unlabelled clean images for defenses
    classes.txt, templates.txt                class vocabulary and zero-shot templates
    world.json                                the config that made it (with the art packages' versions)

Every split draws from its own seed stream, in chunks seeded by their index, so changing one
split's size leaves the other splits' images unchanged.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from toolbox.progress import progress

from . import art
from .scenes import Batch, SceneConfig, draw, sprite_colors

# zero-shot prompts for the world (the OpenAI ImageNet templates assume photographs)
WORLD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "a drawing of a {}.",
)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {size} {color} {name}.",
    "a {color} {name} on a {background} background.",
    "a {name} in the {position} of the picture.",
    "a picture of a {name}.",
    "a {size} {name} near the {position}, {background} background.",
    "an image showing a {color} {name}.",
    "there is a {name} on a {background} background.",
    "a {name}.",
)
CHUNK = 512  # scenes drawn at once; each chunk's seed is its index, so a split is the same at any size
SPLIT_SEED_OFFSETS = {"train": 1, "eval": 2, "retrieval": 3, "defender": 4, "eval-openmoji": 5}
DEFAULT_TARGETS = ("mushroom", "banana")  # attacks' and benchmarks' default targets: every vocabulary holds them


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and look of the world: ``n_classes`` named objects drawn from the art (seeded subset)."""

    n_classes: int = 200
    vocabulary_seed: int = 0
    always: tuple[str, ...] = DEFAULT_TARGETS
    image_size: int = 32
    n_train: int = 40_000
    n_eval: int = 2_000  # per style
    n_retrieval: int = 500
    n_defender: int = 1_000
    captions_per_retrieval_image: int = 5
    scene: SceneConfig = field(default_factory=SceneConfig)
    seed: int = 0
    art: tuple[tuple[str, str], ...] = tuple(sorted(art.ART_PACKAGES.items()))  # keys caches on the art's versions
    version: int = 2  # bump when drawing code changes, so caches rebuild

    @cached_property
    def objects(self) -> tuple[art.Emoji, ...]:
        return art.vocabulary(self.n_classes, self.vocabulary_seed, self.always)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.objects)


@dataclass
class WorldPaths:
    root: Path
    train_csv: Path = field(init=False)
    eval_folder: Path = field(init=False)
    eval_labels: Path = field(init=False)
    eval_shift_labels: Path = field(init=False)
    retrieval_json: Path = field(init=False)
    defender_dir: Path = field(init=False)
    classes: Path = field(init=False)
    templates: Path = field(init=False)

    def __post_init__(self) -> None:
        r = self.root
        self.train_csv = r / "train" / "train.csv"
        self.eval_folder = r / "eval" / "imagefolder"
        self.eval_labels = r / "eval" / "labels.csv"
        self.eval_shift_labels = r / "eval-openmoji" / "labels.csv"
        self.retrieval_json = r / "retrieval" / "captions.json"
        self.defender_dir = r / "defender"
        self.classes = r / "classes.txt"
        self.templates = r / "templates.txt"


class Painter:
    """The world's sprites in one style, and scenes of them."""

    def __init__(self, cfg: WorldConfig, style: str) -> None:
        self.cfg = cfg
        self.sprites = torch.from_numpy(art.sprites(cfg.objects, style)).permute(0, 3, 1, 2).float() / 255.0
        self.colors = sprite_colors(self.sprites)

    def scenes(self, split: str, n: int) -> list[Batch]:
        """``n`` scenes with balanced classes in a seeded shuffled order, a chunk at a time."""
        k = len(self.sprites)
        labels = torch.from_numpy(split_rng(self.cfg, split).permutation(np.arange(n) % k))
        seed = self.cfg.seed * 1_000_003 + SPLIT_SEED_OFFSETS[split] * 100_003
        starts = range(0, n, CHUNK)
        return [
            draw(self.sprites, labels[s : s + CHUNK], seed + i, self.cfg.image_size, self.cfg.scene)
            for i, s in enumerate(progress(starts, desc=f"world: {split}", unit="chunk"))
        ]

    def words(self, batch: Batch, i: int) -> dict[str, str]:
        """Caption words of scene ``i``: a colour already in the name ('red apple') is not said twice."""
        name = self.cfg.classes[int(batch.labels[i])]
        color = self.colors[int(batch.labels[i])]
        return {**batch.attributes[i], "name": name, "color": "" if color in name.split() else color}


def split_rng(cfg: WorldConfig, split: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLIT_SEED_OFFSETS[split]])


def caption(words: dict[str, str], rng: random.Random, template: str | None = None) -> str:
    return " ".join((template or rng.choice(CAPTION_TEMPLATES)).format(**words).split())


def _save(image: torch.Tensor, path: Path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def _labelled(painter: Painter, split: str, n: int, folder: Path) -> None:
    """A labelled split: an ImageFolder tree and CleanCLIP's labels.csv over the same files."""
    classes = painter.cfg.classes
    for c in classes:
        (folder / "imagefolder" / c.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    # The ImageFolder tree's own class-name file: names in sorted-folder order, the index an
    # ImageFolder reader assigns (folder names use underscores).
    by_folder = sorted(classes, key=lambda c: c.replace(" ", "_"))
    (folder / "imagefolder" / "classes.txt").write_text("\n".join(by_folder) + "\n", encoding="utf-8")
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        i = 0
        for batch in painter.scenes(split, n):
            for image, label in zip(batch.images, batch.labels.tolist()):
                rel = f"imagefolder/{classes[label].replace(' ', '_')}/{i:06d}.png"
                _save(image, folder / rel)
                writer.writerow([rel, label])
                i += 1


def write_world(cfg: WorldConfig, root: Path) -> WorldPaths:
    """Generate every split and write it under ``root`` (which should be empty)."""
    art.check_art_packages()
    paths = WorldPaths(Path(root))
    root = paths.root
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    paths.classes.write_text("\n".join(cfg.classes) + "\n", encoding="utf-8")
    paths.templates.write_text("\n".join(WORLD_TEMPLATES) + "\n", encoding="utf-8")
    painter = Painter(cfg, "twemoji")

    cap_rng = random.Random(cfg.seed * 7_919 + 11)
    with open(paths.train_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        i = 0
        for batch in painter.scenes("train", cfg.n_train):
            for j, image in enumerate(batch.images):
                rel = f"images/{i:06d}.png"
                _save(image, root / "train" / rel)
                writer.writerow([rel, caption(painter.words(batch, j), cap_rng)])
                i += 1

    _labelled(painter, "eval", cfg.n_eval, root / "eval")
    _labelled(Painter(cfg, "openmoji"), "eval-openmoji", cfg.n_eval, root / "eval-openmoji")

    (root / "retrieval" / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    i = 0
    for batch in painter.scenes("retrieval", cfg.n_retrieval):
        for j, image in enumerate(batch.images):
            name = f"{i:06d}.png"
            _save(image, root / "retrieval" / "images" / name)
            images.append({"id": i, "file_name": name, "width": cfg.image_size, "height": cfg.image_size})
            for t in cap_rng.sample(CAPTION_TEMPLATES, cfg.captions_per_retrieval_image):
                words = painter.words(batch, j)
                annotations.append({"id": len(annotations), "image_id": i, "caption": caption(words, cap_rng, t)})
            i += 1
    paths.retrieval_json.write_text(
        json.dumps({"info": {"description": "toolbox emoji world"}, "images": images, "annotations": annotations}),
        encoding="utf-8",
    )

    paths.defender_dir.mkdir(parents=True, exist_ok=True)
    i = 0
    for batch in painter.scenes("defender", cfg.n_defender):
        for image in batch.images:
            _save(image, paths.defender_dir / f"{i:06d}.png")
            i += 1

    record = {**asdict(cfg), "classes": list(cfg.classes), "art_installed": art.check_art_packages()}
    (root / "world.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return paths
