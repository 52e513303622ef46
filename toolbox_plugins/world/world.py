"""The procedural world's splits, written to disk in the formats real datasets use.

Layout of a world directory::

    train/train.csv + train/images/     image-caption CSV (CleanCLIP / CC3M style)
    eval/imagefolder/<class>/*.png      labelled split as an ImageFolder tree
    eval/labels.csv + eval/classes.txt  the same split as CleanCLIP's labels.csv
    retrieval/captions.json + images/   COCO-captions JSON, 5 captions per image
    defender/*.png                      unlabelled clean images for defenses
    classes.txt, templates.txt          class vocabulary and zero-shot templates
    world.json                          the config that made it (and its hash)

Every split has its own seed stream derived from the world seed, so changing one
split's size leaves the others' images unchanged.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolbox.progress import progress

from .draw import DRAWERS, Scene, render

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


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and look of the world. ``classes`` are ImageNet-1K class names with drawers."""

    classes: tuple[str, ...] = tuple(DRAWERS)
    image_size: int = 32
    n_train: int = 20_000
    n_eval: int = 1_400
    n_retrieval: int = 500
    n_defender: int = 1_000
    captions_per_retrieval_image: int = 5
    noise_std: float = 6.0
    seed: int = 0
    version: int = 1  # bump when drawing code changes, so caches rebuild

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in DRAWERS]
        if unknown:
            raise ValueError(f"no drawer for classes {unknown}; available: {sorted(DRAWERS)}")


@dataclass
class WorldPaths:
    root: Path
    train_csv: Path = field(init=False)
    eval_folder: Path = field(init=False)
    eval_labels: Path = field(init=False)
    retrieval_json: Path = field(init=False)
    defender_dir: Path = field(init=False)
    classes: Path = field(init=False)
    templates: Path = field(init=False)

    def __post_init__(self) -> None:
        r = self.root
        self.train_csv = r / "train" / "train.csv"
        self.eval_folder = r / "eval" / "imagefolder"
        self.eval_labels = r / "eval" / "labels.csv"
        self.retrieval_json = r / "retrieval" / "captions.json"
        self.defender_dir = r / "defender"
        self.classes = r / "classes.txt"
        self.templates = r / "templates.txt"


SPLIT_SEED_OFFSETS = {"train": 1, "eval": 2, "retrieval": 3, "defender": 4}


def split_rng(cfg: WorldConfig, split: str) -> random.Random:
    return random.Random(cfg.seed * 1_000_003 + SPLIT_SEED_OFFSETS[split])


def scenes(cfg: WorldConfig, split: str, n: int) -> list[Scene]:
    """``n`` scenes with balanced classes in a seeded shuffled order."""
    rng = split_rng(cfg, split)
    labels = [i % len(cfg.classes) for i in range(n)]
    rng.shuffle(labels)
    return [
        render(list(cfg.classes), y, rng, cfg.image_size, noise_std=cfg.noise_std)
        for y in progress(labels, desc=f"world: {split}", unit="img")
    ]


def caption(scene: Scene, rng: random.Random, template: str | None = None) -> str:
    return (template or rng.choice(CAPTION_TEMPLATES)).format(**scene.attributes)


def write_world(cfg: WorldConfig, root: Path) -> WorldPaths:
    """Generate every split and write it under ``root`` (which should be empty)."""
    paths = WorldPaths(Path(root))
    root = paths.root
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    paths.classes.write_text("\n".join(cfg.classes) + "\n", encoding="utf-8")
    paths.templates.write_text("\n".join(WORLD_TEMPLATES) + "\n", encoding="utf-8")

    cap_rng = random.Random(cfg.seed * 7_919 + 11)
    with open(paths.train_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        for i, sc in enumerate(scenes(cfg, "train", cfg.n_train)):
            rel = f"images/{i:06d}.png"
            sc.image.save(root / "train" / rel)
            writer.writerow([rel, caption(sc, cap_rng)])

    for c in cfg.classes:
        (paths.eval_folder / c.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    (root / "eval" / "classes.txt").write_text("\n".join(cfg.classes) + "\n", encoding="utf-8")
    # The ImageFolder tree's own class-name file: names in sorted-folder order, which is
    # the class index an ImageFolder reader assigns (folder names use underscores).
    by_folder = sorted(cfg.classes, key=lambda c: c.replace(" ", "_"))
    (paths.eval_folder / "classes.txt").write_text("\n".join(by_folder) + "\n", encoding="utf-8")
    with open(paths.eval_labels, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        for i, sc in enumerate(scenes(cfg, "eval", cfg.n_eval)):
            rel = f"imagefolder/{cfg.classes[sc.label].replace(' ', '_')}/{i:06d}.png"
            sc.image.save(root / "eval" / rel)
            writer.writerow([rel, sc.label])

    (root / "retrieval" / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    templates = list(CAPTION_TEMPLATES)
    for i, sc in enumerate(scenes(cfg, "retrieval", cfg.n_retrieval)):
        name = f"{i:06d}.png"
        sc.image.save(root / "retrieval" / "images" / name)
        images.append({"id": i, "file_name": name, "width": cfg.image_size, "height": cfg.image_size})
        for t in cap_rng.sample(templates, cfg.captions_per_retrieval_image):
            annotations.append({"id": len(annotations), "image_id": i, "caption": caption(sc, cap_rng, t)})
    paths.retrieval_json.write_text(
        json.dumps({"info": {"description": "toolbox procedural world"}, "images": images, "annotations": annotations}),
        encoding="utf-8",
    )

    paths.defender_dir.mkdir(parents=True, exist_ok=True)
    for i, sc in enumerate(scenes(cfg, "defender", cfg.n_defender)):
        sc.image.save(paths.defender_dir / f"{i:06d}.png")

    (root / "world.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    return paths
