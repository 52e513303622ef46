"""Datasets of [0,1] image tensors (:class:`ImageData`), as a :class:`DatasetAdapter` reads them."""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import ClassVar, Literal, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .config import Component

DataKind = Literal["labelled", "captioned", "unlabelled"]


@dataclass
class ImageData:
    """A dataset of [0,1] image tensors, with what it is labelled by.

    ``labelled``: items are ``(image, class_index)`` and ``classnames`` is set.
    ``captioned``: items are ``(image, index)``; ``captions[index]`` lists its captions.
    ``unlabelled``: items are ``(image, index)``.
    """

    dataset: Dataset
    kind: DataKind
    source: str
    classnames: list[str] | None = None
    captions: list[list[str]] | None = None
    skipped: list[str] = field(default_factory=list)

    def uint8(self, indices: Tensor | None = None) -> Tensor:
        """The images (all, or those at ``indices``) as uint8 [N,3,H,W]: the dataset's in-memory
        ``cache`` when it has one; otherwise only those images are decoded."""
        cache = getattr(self.dataset, "cache", None)
        if cache is not None:
            return cache if indices is None else cache[indices]
        order = range(len(cast(Sized, self.dataset))) if indices is None else indices.tolist()
        return torch.stack([(self.dataset[i][0] * 255).round().to(torch.uint8) for i in order])


class InMemoryImages(Dataset):
    """uint8 images [N,3,H,W] held in memory; items are ``(image in [0,1], index)``."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"InMemoryImages holds uint8 [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        self.cache = images

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.cache[i].float().div_(255.0), i


class DatasetAdapter(Component):
    """Reads one dataset format into :class:`ImageData`."""

    kind: ClassVar[DataKind]

    def detect(self, source: str) -> bool:
        raise NotImplementedError

    def load(
        self,
        source: str,
        image_size: int,
        *,
        classnames: Sequence[str] | None = None,
        skip_unreadable: bool = False,
    ) -> ImageData:
        raise NotImplementedError
