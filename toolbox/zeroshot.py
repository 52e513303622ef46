"""Shared zero-shot CLIP mechanics: image and caption embeddings of a dataset, zero-shot class
weights, and the whole-word caption test. Part of the host's public contract: the evaluation
protocol, plugins and adapters all use these, so they compute the same thing.

Feature extraction and the zero-shot classifier are plain CLIP mechanics (open_clip's
``build_zero_shot_classifier``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .api import ClipModel, ImageData
from .compat import import_open_clip


def mentions_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word.lower())}\b", text.lower()) is not None


def loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader workers: as requested, else none on the CPU (the model needs both cores) and up to
    8 decoding processes beside an accelerator."""
    if requested is not None:
        return requested
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def _loader(data: ImageData, batch_size: int, device: torch.device, workers: int) -> DataLoader:
    # pinned host memory lets the copy to a CUDA device overlap the next batch's decoding (only
    # host tensors can be pinned: a dataset already on the device is left as it is)
    pin = device.type == "cuda" and len(cast(Sized, data.dataset)) > 0 and data.dataset[0][0].device.type == "cpu"
    return DataLoader(
        data.dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
    )


@torch.no_grad()
def image_features(
    model: ClipModel,
    data: ImageData,
    batch_size: int,
    device: torch.device,
    trigger: Callable[[Tensor], Tensor] | None = None,
    workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Normalised image embeddings of a dataset (optionally triggered) and its labels/indices, streamed
    in batches: memory holds one batch of images and the [N, D] embeddings."""
    feats, labels = [], []
    for images, y in _loader(data, batch_size, device, workers):
        images = images.to(device, non_blocking=device.type == "cuda")  # MPS: pageable async copies misread
        if trigger is not None:
            images = trigger(images)
        feats.append(model.encode_image(images).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


_CLASS_MEMO: OrderedDict[tuple, Tensor] = OrderedDict()
CLASS_MEMO_SIZE = 4  # a run evaluates a few models that share one text tower (before, after, the defense's head)


@torch.no_grad()
def class_embeddings(
    model: ClipModel, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> Tensor:
    """[C, D] zero-shot weights: mean of normalised template embeddings, renormalised. A model that
    offers ``text_fingerprint()`` is encoded once per text tower, vocabulary, device and autocast
    setting (1,000 classes x 80 templates is 80,000 prompts per call)."""
    fingerprint = getattr(model, "text_fingerprint", None)
    key = None
    if fingerprint is not None:
        autocast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
        key = (fingerprint(), tuple(classnames), tuple(templates), str(device), str(autocast))
        if key in _CLASS_MEMO:
            _CLASS_MEMO.move_to_end(key)
            return _CLASS_MEMO[key].clone()
    open_clip = import_open_clip()
    weights = (
        open_clip.build_zero_shot_classifier(
            model,
            tokenizer=model.tokenize,
            classnames=list(classnames),
            templates=list(templates),
            num_classes_per_batch=10,
            device=device,
            use_tqdm=False,
        )
        .T.float()
        .cpu()
    )
    if key is not None:
        _CLASS_MEMO[key] = weights.clone()
        while len(_CLASS_MEMO) > CLASS_MEMO_SIZE:
            _CLASS_MEMO.popitem(last=False)
    return weights


@torch.no_grad()
def caption_embeddings(
    model: ClipModel, captions: Sequence[Sequence[str]], device: torch.device, batch_size: int = 512
) -> tuple[Tensor, Tensor]:
    """Normalised embeddings of every caption, and the image index each belongs to."""
    flat = [(i, c) for i, caps in enumerate(captions) for c in caps]
    owner = torch.tensor([i for i, _ in flat])
    feats = []
    for start in range(0, len(flat), batch_size):
        tokens = model.tokenize([c for _, c in flat[start : start + batch_size]]).to(device)
        feats.append(model.encode_text(tokens).float().cpu())
    return torch.cat(feats), owner


class ZeroShotHead:
    """Fixed class embeddings (template-ensembled) plus the model's temperature."""

    def __init__(
        self, model: ClipModel, classnames: Sequence[str], templates: Sequence[str], device: torch.device
    ) -> None:
        self.classnames = list(classnames)
        self.weights = class_embeddings(model, classnames, templates, device).to(device)  # [C, D]
        self.scale = model.logit_scale()

    def logits(self, model: ClipModel, images: Tensor) -> Tensor:
        return self.scale * model.encode_image(images) @ self.weights.T

    def index(self, name: str) -> int:
        return self.classnames.index(name)

    @torch.no_grad()
    def batched_logits(self, model: ClipModel, images: Tensor, batch_size: int = 256) -> Iterator[Tensor]:
        """Logits ``batch_size`` images at a time, without gradients: memory bounded by the batch."""
        for i in range(0, len(images), batch_size):
            yield self.logits(model, images[i : i + batch_size])

    def predict(self, model: ClipModel, images: Tensor, batch_size: int = 256) -> Tensor:
        return torch.cat([lg.argmax(1) for lg in self.batched_logits(model, images, batch_size)])
