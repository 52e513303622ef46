"""Image files -> [0,1] tensors at a model's input size, whatever the PIL mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from toolbox.intake.files import is_regular
from toolbox.intake.images import check_dimensions, open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class UnreadableImageError(OSError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB; transparency over white."""
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """CLIP's preprocessing geometry: shorter side to ``size`` (bicubic), then centre crop."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def load_image(path: Path, size: int) -> torch.Tensor:
    """A [3, size, size] float tensor in [0,1]; :class:`UnreadableImageError` names the file. Only a
    regular file is opened, and its declared size is bounded before decoding (:mod:`toolbox.intake.images`)."""
    try:
        with open_image(path) as img:
            img.load()
            check_dimensions(*img.size, f"image {path}")  # a format may change its size on load (ICO, JPEG draft)
            rgb = resize_center_crop(to_rgb(img), size)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise UnreadableImageError(Path(path), _reason(err, f"image {path}")) from err
    arr = np.asarray(rgb, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _reason(err: BaseException, where: str) -> str:
    """Why, without the file's name again: the intake's messages start with it, PIL's do not."""
    text = str(err)
    return text[len(where) :].lstrip(": ") if text.startswith(where) else f"{type(err).__name__}: {text}"


def is_image_file(path: Path) -> bool:
    """A regular file with an image suffix (a FIFO or device named x.png is not one)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and is_regular(path)
