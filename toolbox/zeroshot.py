"""Shared zero-shot CLIP mechanics: image and caption embeddings of a dataset, zero-shot class
weights, and the whole-word caption test. Part of the host's public contract: the evaluation
protocol, plugins and adapters all use these, so they compute the same thing.

Feature extraction and the zero-shot classifier are plain CLIP mechanics (open_clip's
``build_zero_shot_classifier``).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .api import ClipModel, ImageData
from .compat import import_open_clip


def mentions_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word.lower())}\b", text.lower()) is not None


def _loader(data: ImageData, batch_size: int) -> DataLoader:
    return DataLoader(data.dataset, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def image_features(model: ClipModel, data: ImageData, batch_size: int, device: torch.device,
                   trigger: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Normalised image embeddings of a dataset (optionally triggered) and its labels/indices."""
    feats, labels = [], []
    for images, y in _loader(data, batch_size):
        images = images.to(device)
        if trigger is not None:
            images = trigger(images)
        feats.append(model.encode_image(images).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def class_embeddings(model: ClipModel, classnames: Sequence[str], templates: Sequence[str],
                     device: torch.device) -> Tensor:
    """[C, D] zero-shot weights: mean of normalised template embeddings, renormalised."""
    open_clip = import_open_clip()
    weights = open_clip.build_zero_shot_classifier(
        model, tokenizer=model.tokenize, classnames=list(classnames), templates=list(templates),
        num_classes_per_batch=10, device=device, use_tqdm=False)
    return weights.T.float().cpu()


@torch.no_grad()
def caption_embeddings(model: ClipModel, captions: Sequence[Sequence[str]], device: torch.device,
                       batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Normalised embeddings of every caption, and the image index each belongs to."""
    flat = [(i, c) for i, caps in enumerate(captions) for c in caps]
    owner = torch.tensor([i for i, _ in flat])
    feats = []
    for start in range(0, len(flat), batch_size):
        tokens = model.tokenize([c for _, c in flat[start:start + batch_size]]).to(device)
        feats.append(model.encode_text(tokens).float().cpu())
    return torch.cat(feats), owner
