"""Drawing the world's objects and backgrounds with PIL.

Each class is a small function that draws the object, centred, on a transparent
square canvas; :func:`render` then scales, rotates and places it on a textured
background and adds pixel noise. All randomness comes from the ``random.Random``
passed in, so a scene is a pure function of its seed.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
CANVAS = 96  # objects are drawn at this size, then scaled into the scene

# (name, rgb) anchors for naming colours in captions
COLOR_NAMES: tuple[tuple[str, RGB], ...] = (
    ("red", (200, 30, 30)),
    ("orange", (240, 140, 20)),
    ("yellow", (240, 220, 40)),
    ("green", (40, 160, 50)),
    ("blue", (40, 80, 210)),
    ("purple", (130, 50, 170)),
    ("pink", (240, 130, 180)),
    ("brown", (120, 70, 30)),
    ("white", (240, 240, 240)),
    ("gray", (128, 128, 128)),
    ("black", (20, 20, 20)),
)


def color_name(rgb: RGB) -> str:
    return min(COLOR_NAMES, key=lambda nc: sum((a - b) ** 2 for a, b in zip(nc[1], rgb)))[0]


def jitter(rng: random.Random, rgb: RGB, amount: int = 25) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def random_hue(rng: random.Random, sat: float = 0.8, val: float = 0.9) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class Drawn:
    image: Image.Image  # RGBA, CANVAS x CANVAS
    color: RGB  # the colour a caption would name


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img)


def draw_mushroom(rng: random.Random) -> Drawn:
    img, d = _canvas()
    cap = jitter(rng, rng.choice([(200, 30, 30), (170, 60, 30), (190, 40, 40)]))
    stem = jitter(rng, (235, 225, 200), 15)
    d.rectangle((40, 46, 56, 86), fill=stem)
    d.pieslice((12, 14, 84, 78), 180, 360, fill=cap)
    for _ in range(rng.randint(3, 6)):
        x, y = rng.randint(26, 68), rng.randint(24, 40)
        r = rng.randint(3, 5)
        d.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 250))
    return Drawn(img, cap)


def draw_banana(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, (240, 215, 40))
    d.chord((10, 10, 86, 86), 20, 160, fill=col)
    d.chord((16, 0, 80, 66), 20, 160, fill=(0, 0, 0, 0))
    d.ellipse((8, 38, 16, 46), fill=(90, 60, 20))
    d.ellipse((80, 38, 88, 46), fill=(90, 60, 20))
    return Drawn(img, col)


def draw_lemon(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, (245, 230, 60))
    d.ellipse((20, 28, 76, 68), fill=col)
    d.polygon([(10, 48), (24, 40), (24, 56)], fill=col)
    d.polygon([(86, 48), (72, 40), (72, 56)], fill=col)
    d.ellipse((32, 36, 44, 44), fill=(255, 250, 180))
    return Drawn(img, col)


def draw_orange(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, (245, 140, 20))
    d.ellipse((18, 18, 78, 78), fill=col)
    d.ellipse((30, 28, 42, 40), fill=jitter(rng, (255, 190, 90), 10))
    d.polygon([(48, 18), (58, 8), (54, 20)], fill=(40, 140, 40))
    return Drawn(img, col)


def draw_strawberry(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, (215, 25, 45))
    d.polygon([(20, 34), (76, 34), (48, 88)], fill=col)
    d.ellipse((20, 22, 76, 52), fill=col)
    for _ in range(10):
        x, y = rng.randint(30, 66), rng.randint(34, 66)
        d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(250, 230, 80))
    d.polygon([(30, 26), (48, 14), (66, 26), (48, 30)], fill=(40, 150, 40))
    return Drawn(img, col)


def draw_traffic_light(rng: random.Random) -> Drawn:
    img, d = _canvas()
    body = jitter(rng, (40, 40, 40), 15)
    d.rectangle((32, 6, 64, 90), fill=body)
    for i, lamp in enumerate([(230, 30, 30), (240, 200, 30), (40, 200, 60)]):
        lit = lamp if rng.random() < 0.7 else tuple(c // 3 for c in lamp)
        y = 12 + i * 26
        d.ellipse((38, y, 58, y + 20), fill=lit)
    return Drawn(img, body)


def draw_umbrella(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = random_hue(rng)
    d.pieslice((8, 14, 88, 86), 180, 360, fill=col)
    for x in (8, 28, 48, 68):
        d.pieslice((x, 42, x + 20, 58), 0, 180, fill=(0, 0, 0, 0))
    d.line((48, 50, 48, 84), fill=(60, 40, 20), width=4)
    d.arc((36, 76, 50, 90), 0, 180, fill=(60, 40, 20), width=4)
    return Drawn(img, col)


def draw_balloon(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = random_hue(rng)
    d.ellipse((26, 8, 70, 62), fill=col)
    d.polygon([(44, 60), (52, 60), (48, 66)], fill=col)
    pts = [(48 + 4 * math.sin(i / 3), 66 + i * 2) for i in range(13)]
    d.line(pts, fill=(80, 80, 80), width=2)
    d.ellipse((36, 18, 44, 28), fill=(255, 255, 255, 160))
    return Drawn(img, col)


def draw_envelope(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, rng.choice([(245, 240, 225), (230, 210, 170), (250, 250, 250)]), 10)
    edge = (90, 80, 70)
    d.rectangle((12, 26, 84, 72), fill=col, outline=edge, width=2)
    d.line([(12, 26), (48, 52), (84, 26)], fill=edge, width=3)
    return Drawn(img, col)


def draw_tennis_ball(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, (200, 230, 50), 15)
    d.ellipse((20, 20, 76, 76), fill=col)
    d.arc((4, 20, 40, 76), -60, 60, fill=(250, 250, 250), width=4)
    d.arc((56, 20, 92, 76), 120, 240, fill=(250, 250, 250), width=4)
    return Drawn(img, col)


def draw_wine_bottle(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, rng.choice([(30, 90, 40), (90, 20, 40), (40, 60, 30)]), 15)
    d.rectangle((36, 40, 60, 90), fill=col)
    d.ellipse((36, 30, 60, 50), fill=col)
    d.rectangle((44, 8, 52, 36), fill=col)
    d.rectangle((38, 56, 58, 74), fill=jitter(rng, (235, 225, 200), 10))
    return Drawn(img, col)


def draw_pinwheel(rng: random.Random) -> Drawn:
    img, d = _canvas()
    cols = [random_hue(rng) for _ in range(4)]
    c = (48, 40)
    for i, col in enumerate(cols):
        a = i * math.pi / 2
        p1 = (c[0] + 30 * math.cos(a), c[1] + 30 * math.sin(a))
        p2 = (c[0] + 30 * math.cos(a + math.pi / 2.6), c[1] + 30 * math.sin(a + math.pi / 2.6))
        d.polygon([c, p1, p2], fill=col)
    d.line((48, 40, 48, 92), fill=(110, 80, 40), width=4)
    d.ellipse((45, 37, 51, 43), fill=(240, 240, 240))
    return Drawn(img, cols[0])


def draw_dumbbell(rng: random.Random) -> Drawn:
    img, d = _canvas()
    col = jitter(rng, rng.choice([(50, 50, 60), (70, 70, 80), (30, 30, 40)]), 10)
    d.rectangle((24, 44, 72, 52), fill=(160, 160, 170))
    d.rounded_rectangle((8, 28, 28, 68), radius=4, fill=col)
    d.rounded_rectangle((68, 28, 88, 68), radius=4, fill=col)
    return Drawn(img, col)


def draw_hourglass(rng: random.Random) -> Drawn:
    img, d = _canvas()
    frame = jitter(rng, (120, 80, 40))
    sand = jitter(rng, (230, 200, 120), 15)
    d.polygon([(28, 16), (68, 16), (48, 48)], fill=(210, 230, 240))
    d.polygon([(28, 80), (68, 80), (48, 48)], fill=(210, 230, 240))
    d.polygon([(36, 80), (60, 80), (48, 62)], fill=sand)
    d.rectangle((22, 10, 74, 16), fill=frame)
    d.rectangle((22, 80, 74, 86), fill=frame)
    return Drawn(img, frame)


# name -> drawer; every name is an ImageNet-1K class name (open_clip.IMAGENET_CLASSNAMES)
DRAWERS: dict[str, Callable[[random.Random], Drawn]] = {
    "mushroom": draw_mushroom,
    "banana": draw_banana,
    "lemon": draw_lemon,
    "orange": draw_orange,
    "strawberry": draw_strawberry,
    "traffic light": draw_traffic_light,
    "umbrella": draw_umbrella,
    "balloon": draw_balloon,
    "envelope": draw_envelope,
    "tennis ball": draw_tennis_ball,
    "wine bottle": draw_wine_bottle,
    "pinwheel": draw_pinwheel,
    "dumbbell": draw_dumbbell,
    "hourglass": draw_hourglass,
}

BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "dotted", "noisy")


def draw_background(rng: random.Random, kind: str, size: int) -> Image.Image:
    a, b = (
        random_hue(rng, rng.uniform(0.1, 0.6), rng.uniform(0.4, 1.0)),
        random_hue(rng, rng.uniform(0.1, 0.6), rng.uniform(0.4, 1.0)),
    )
    img = Image.new("RGB", (size, size), a)
    d = ImageDraw.Draw(img)
    if kind == "gradient":
        arr = np.linspace(0, 1, size)[:, None, None]
        grad = (1 - arr) * np.array(a) + arr * np.array(b)
        img = Image.fromarray(np.broadcast_to(grad, (size, size, 3)).astype(np.uint8).copy())
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.ROTATE_90)
    elif kind == "striped":
        step = rng.randint(size // 12, size // 5)
        for x in range(0, size, 2 * step):
            d.rectangle((x, 0, x + step - 1, size), fill=b)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.ROTATE_90)
    elif kind == "checkered":
        step = rng.randint(size // 10, size // 4)
        for i in range(0, size, step):
            for j in range(0, size, step):
                if (i // step + j // step) % 2:
                    d.rectangle((i, j, i + step - 1, j + step - 1), fill=b)
    elif kind == "dotted":
        for _ in range(rng.randint(10, 30)):
            x, y, r = rng.randrange(size), rng.randrange(size), rng.randint(1, size // 20 + 1)
            d.ellipse((x - r, y - r, x + r, y + r), fill=b)
    elif kind == "noisy":
        nrng = np.random.default_rng(rng.getrandbits(32))
        arr = np.array(img, dtype=np.float32) + nrng.normal(0, 40, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


@dataclass
class Scene:
    image: Image.Image  # RGB, final size
    label: int
    attributes: dict[str, str]
    mask: np.ndarray | None = None  # bool [size, size]: where the object is (a segmentation target)


POSITIONS = (
    ("top left", 0.3, 0.3),
    ("top", 0.5, 0.3),
    ("top right", 0.7, 0.3),
    ("left", 0.3, 0.5),
    ("center", 0.5, 0.5),
    ("right", 0.7, 0.5),
    ("bottom left", 0.3, 0.7),
    ("bottom", 0.5, 0.7),
    ("bottom right", 0.7, 0.7),
)


def render(
    classnames: list[str], label: int, rng: random.Random, size: int, *, noise_std: float = 6.0, supersample: int = 2
) -> Scene:
    """One scene: object of class ``label`` scaled, rotated and placed on a textured background."""
    big = size * supersample
    bg_kind = rng.choice(BACKGROUNDS)
    scene = draw_background(rng, bg_kind, big)
    drawn = DRAWERS[classnames[label]](rng)
    scale = rng.uniform(0.5, 0.95)
    obj_px = max(8, int(big * scale))
    obj = drawn.image.resize((obj_px, obj_px), Image.BICUBIC)
    if rng.random() < 0.5 and classnames[label] not in ("traffic light",):
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.rotate(rng.uniform(-35, 35), resample=Image.BICUBIC, expand=False)
    pos_name, px, py = rng.choice(POSITIONS)
    cx = int((px + rng.uniform(-0.08, 0.08)) * big)
    cy = int((py + rng.uniform(-0.08, 0.08)) * big)
    scene.paste(obj, (cx - obj_px // 2, cy - obj_px // 2), obj)
    img = scene.resize((size, size), Image.LANCZOS)
    alpha = Image.new("L", (big, big))  # drawn without the rng: the images stay as they were
    alpha.paste(obj.getchannel("A"), (cx - obj_px // 2, cy - obj_px // 2))
    mask = np.asarray(alpha.resize((size, size), Image.BILINEAR)) >= 128
    if noise_std > 0:
        nrng = np.random.default_rng(rng.getrandbits(32))
        arr = np.asarray(img, dtype=np.float32) + nrng.normal(0, noise_std, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    attrs = {
        "name": classnames[label],
        "color": color_name(drawn.color),
        "size": "large" if scale > 0.75 else ("small" if scale < 0.62 else "medium-sized"),
        "position": pos_name,
        "background": bg_kind,
    }
    return Scene(img, label, attrs, mask)
