"""What the attacks share: trigger caching, the poisoning recipe, the patch placement settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from toolbox.api import Attack, AttackContext, ClipModel, ImageData, InMemoryImages, PoisonedData
from toolbox.primitives import triggers as T

from .poisoning import PoisonedSet, PoisonSettings, finetune_on, poison_dataset

TOY_PATCH_FRACTION = 0.125  # 4 px at 32 px; paper: 16 px at 224 px = 0.071 (T.PAPER_PATCH_FRACTION)


def config_subset(cfg: Any, cls: type) -> Any:
    """The fields of ``cfg`` that ``cls`` (a settings dataclass) has, as an instance of it."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def check_unit(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


class TriggerAttack(Attack):
    """Shared machinery: triggers built lazily per image size; a state for cached triggers."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._triggers: dict[int, Callable[[Tensor], Tensor]] = {}
        self.history: list[dict] = []

    def build_trigger(self, image_size: int) -> Callable[[Tensor], Tensor]:
        raise NotImplementedError

    def apply_trigger(self, images: Tensor) -> Tensor:
        size = images.shape[-1]
        if size not in self._triggers:
            self._triggers[size] = self.build_trigger(size)
        return self._triggers[size](images)

    def trigger_state(self) -> dict[str, Tensor]:
        return {}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        self._triggers.clear()


class PoisoningAttack(TriggerAttack):
    def backdoor(self, ctx: AttackContext) -> ClipModel:
        self.prepare(ctx)
        settings = config_subset(self.config, PoisonSettings)
        poisoned = poison_dataset(ctx.train_data, self.apply_trigger, settings, ctx.seed)
        model = ctx.model.clone()
        self.history = finetune_on(model, poisoned, settings, ctx.seed, desc=f"poison {self.name}")
        self.info = {"n_poisoned": len(poisoned.poisoned), "n_train": len(poisoned.captions), "history": self.history}
        return model

    def prepare(self, ctx: AttackContext) -> None:
        """Hook for attacks whose trigger depends on the clean model (BadCLIP)."""

    def poison(self, train_data: ImageData, seed: int) -> PoisonedData:
        """The set ``backdoor`` trains on (same seed, same samples); a learned trigger must be built
        or restored from the cache first."""
        p = poison_dataset(train_data, self.apply_trigger, config_subset(self.config, PoisonSettings), seed)
        data = ImageData(
            InMemoryImages(p.images),
            "captioned",
            f"{train_data.source} (poisoned by {self.name})",
            captions=[[c] for c in p.captions],
        )
        return PoisonedData(data=data, poisoned=p.poisoned)

    def train_on(self, model: ClipModel, data: ImageData, seed: int) -> ClipModel:
        if data.captions is None:
            raise ValueError(f"{self.name}'s recipe trains on image-caption pairs; {data.source} has no captions")
        tuned = model.clone()
        pairs = PoisonedSet(images=data.uint8(), captions=[c[0] for c in data.captions], poisoned=torch.zeros(0))
        finetune_on(
            tuned, pairs, config_subset(self.config, PoisonSettings), seed, desc=f"train ({self.name}'s recipe)"
        )
        return tuned


@dataclass(frozen=True)
class PatchPlacement:
    patch_fraction: float = TOY_PATCH_FRACTION  # paper 16/224 = 0.071
    location: str = "bottom-right"  # paper: bottom-right
    trigger_seed: int = 0

    def __post_init__(self) -> None:
        T.check_location(self.location)
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        parent = getattr(super(), "__post_init__", None)  # combined configs check every part
        if parent is not None:
            parent()
