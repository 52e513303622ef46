"""Image files from outside: the header's dimensions are checked before a pixel is decoded.

PIL's ``Image.open`` reads only the header, so the size is known before ``load()`` allocates.
Its decompression-bomb guard bounds the pixel count alone: a 1 x 80,000,000 PNG of a few hundred
bytes passes it, decodes to 80 MB and then, resized to the model's input on its shorter side,
asks for a 224 x 18,000,000,000 image. Width, height, pixel count and aspect ratio are bounded
here first, and the guard (its warning raised as an error) stays behind them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from ..errors import InputError
from .files import open_binary

MAX_SIDE = 16384  # pixels on either side; a 16384 x 16384 RGB image is 805 MB decoded
MAX_PIXELS = 89_478_485  # PIL's own default (Image.MAX_IMAGE_PIXELS): about 268 MB as RGB
# Longer side / shorter side. Resizing to the model's input scales the shorter side to it, so a
# 1 x 16384 strip at 224 px would become 224 x 3,670,016 (2.5 GB); at 100 the worst is 15 MB.
MAX_ASPECT = 100


def check_dimensions(width: int, height: int, where: str) -> None:
    """Refuse a size no photograph has, before decoding: the bound broken is in the message."""
    if width < 1 or height < 1:
        raise InputError(f"{where}: the image declares {width} x {height} pixels")
    if max(width, height) > MAX_SIDE:
        raise InputError(f"{where}: {width} x {height} pixels; a side may be at most {MAX_SIDE}")
    if width * height > MAX_PIXELS:
        raise InputError(f"{where}: {width} x {height} = {width * height} pixels, over the limit of {MAX_PIXELS}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputError(
            f"{where}: {width} x {height} pixels, an aspect ratio over {MAX_ASPECT}:1 "
            f"(resized to a model's input it would take gigabytes)"
        )


@contextmanager
def open_image(path: str | os.PathLike[str], what: str = "image") -> Iterator[Image.Image]:
    """A regular image file opened lazily, its declared size checked; ``load()`` it inside the block.

    Raises :class:`~toolbox.errors.InputError` for a non-regular file or a size out of bounds, and
    whatever PIL raises for a file it cannot identify (``UnidentifiedImageError``, ``OSError``,
    ``SyntaxError``, ``ValueError``) or a decompression bomb (``Image.DecompressionBombError`` and
    the warning, raised)."""
    where = f"{what} {os.fspath(path)}"
    with open_binary(path, what) as fh, warnings.catch_warnings():
        # past Image.MAX_IMAGE_PIXELS PIL only warns; a 48 KB PNG can ask for 400 M pixels
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fh) as img:
            check_dimensions(*img.size, where)
            yield img
