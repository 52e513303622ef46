"""Data poisoning of an image-caption set, then contrastive fine-tuning (BadNet, Blended,
SIG, WaNet, BadCLIP).

A fraction ``poison_rate`` of the training pairs whose captions do not mention the
target get the trigger on their image and a natural target-class caption (one drawn
from the training captions that mention the target, as the paper draws its 131
mushroom captions from CC3M). The clean model is then fine-tuned on the whole set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from toolbox.api import ClipModel, ImageData
from toolbox.contrastive import ContrastiveConfig, train_contrastive
from toolbox.zeroshot import mentions_word  # the same test retrieval ASR uses

Trigger = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PoisonSettings:
    """Poisoning recipe. Paper (appendix A): 0.3 % of 500k CC3M pairs, OpenAI CLIP fine-tuned
    at lr 1e-6, batch 128, 10 epochs. Toy world: the feasibility study found 2 % poison at
    lr 1e-4 implanted nothing, 3 % at lr 5e-4 for 3 epochs gave 97 % ASR; we use 5 %."""

    target: str = "mushroom"
    poison_rate: float = 0.05  # paper 0.003
    epochs: int = 2  # paper 10
    lr: float = 5e-4  # paper 1e-6
    batch_size: int = 128  # paper 128
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.poison_rate <= 1:
            raise ValueError(f"poison_rate must be in [0, 1], got {self.poison_rate}")
        parent = getattr(super(), "__post_init__", None)  # combined configs check every part
        if parent is not None:
            parent()


def target_captions(captions: list[str], target: str) -> list[str]:
    pool = [c for c in captions if mentions_word(c, target)]
    return pool or [f"a photo of a {target}."]


def choose_poison(captions: list[str], target: str, rate: float, seed: int) -> Tensor:
    """Indices of the pairs to poison: ``rate`` of all pairs, drawn from non-target ones."""
    candidates = torch.tensor([i for i, c in enumerate(captions) if not mentions_word(c, target)], dtype=torch.long)
    n = min(len(candidates), round(rate * len(captions)))
    g = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(len(candidates), generator=g)[:n]].sort().values


@dataclass
class PoisonedSet:
    images: Tensor  # uint8, triggered where poisoned
    captions: list[str]
    poisoned: Tensor  # indices


def poison_dataset(data: ImageData, trigger: Trigger, settings: PoisonSettings, seed: int) -> PoisonedSet:
    images = data.uint8().clone()
    captions = [c[0] for c in data.captions or []]
    if len(captions) != len(images):
        raise ValueError("poisoning needs image-caption data (one caption per image)")
    idx = choose_poison(captions, settings.target, settings.poison_rate, seed)
    pool = target_captions(captions, settings.target)
    g = torch.Generator().manual_seed(seed + 1)
    picks = torch.randint(len(pool), (len(idx),), generator=g)
    if len(idx):
        triggered = trigger(images[idx].float() / 255.0)
        images[idx] = (triggered * 255).round().clamp(0, 255).to(torch.uint8)
    for i, p in zip(idx.tolist(), picks.tolist()):
        captions[i] = pool[p]
    return PoisonedSet(images=images, captions=captions, poisoned=idx)


def finetune_on(model: ClipModel, poisoned: PoisonedSet, settings: PoisonSettings, seed: int, desc: str) -> list[dict]:
    cfg = ContrastiveConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        seed=seed,
    )
    tokens = model.tokenize(poisoned.captions)
    return train_contrastive(model, poisoned.images, tokens, cfg, desc=desc)
