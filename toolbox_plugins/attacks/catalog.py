"""The six attack plugins. Each is a trigger (pixel space) plus a recipe that backdoors a
clean CLIP; their configs name the paper's value beside the toy world's where they differ."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from toolbox.api import Attack, AttackContext, ClipModel, ImageData, InMemoryImages, PoisonedData

from toolbox.primitives import triggers as T
from .badclip import PatchOptimisation, optimise_patch
from .badencoder import BadEncoderSettings, run_badencoder
from .poisoning import PoisonedSet, PoisonSettings, finetune_on, mentions, poison_dataset, target_captions

TOY_PATCH_FRACTION = 0.125  # 4 px at 32 px; paper: 16 px at 224 px = 0.071 (T.PAPER_PATCH_FRACTION)


def _subset(cfg: Any, cls: type) -> Any:
    """The fields of ``cfg`` that ``cls`` (a settings dataclass) has, as an instance of it."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


class _TriggerAttack(Attack):
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


class _PoisoningAttack(_TriggerAttack):
    def backdoor(self, ctx: AttackContext) -> ClipModel:
        self.prepare(ctx)
        settings = _subset(self.config, PoisonSettings)
        poisoned = poison_dataset(ctx.train_data, self.apply_trigger, settings, ctx.seed)
        model = ctx.model.clone()
        self.history = finetune_on(model, poisoned, settings, ctx.seed, desc=f"poison {self.name}")
        self.info = {"n_poisoned": len(poisoned.poisoned), "n_train": len(poisoned.captions),
                     "history": self.history}
        return model

    def prepare(self, ctx: AttackContext) -> None:
        """Hook for attacks whose trigger depends on the clean model (BadCLIP)."""

    def poison(self, train_data: ImageData, seed: int) -> PoisonedData:
        """The set ``backdoor`` trains on (same seed, same samples); a learned trigger must be built
        or restored from the cache first."""
        p = poison_dataset(train_data, self.apply_trigger, _subset(self.config, PoisonSettings), seed)
        data = ImageData(InMemoryImages(p.images), "captioned", f"{train_data.source} (poisoned by {self.name})",
                         captions=[[c] for c in p.captions])
        return PoisonedData(data=data, poisoned=p.poisoned)

    def train_on(self, model: ClipModel, data: ImageData, seed: int) -> ClipModel:
        if data.captions is None:
            raise ValueError(f"{self.name}'s recipe trains on image-caption pairs; {data.source} has no captions")
        tuned = model.clone()
        pairs = PoisonedSet(images=data.uint8(), captions=[c[0] for c in data.captions], poisoned=torch.zeros(0))
        finetune_on(tuned, pairs, _subset(self.config, PoisonSettings), seed, desc=f"train ({self.name}'s recipe)")
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


@dataclass(frozen=True)
class BadNetConfig(PoisonSettings, PatchPlacement):
    pass


class BadNet(_PoisoningAttack):
    name = "badnet"
    summary = "BadNet: fixed-seed Gaussian-noise patch (bottom-right), data poisoning + fine-tuning."
    reference = "Gu et al., BadNets (2017); settings: InverTune appendix A"
    Config: ClassVar[type] = BadNetConfig

    def build_trigger(self, image_size: int):
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        return T.PatchTrigger(T.gaussian_patch(size, self.config.trigger_seed), self.config.location)


@dataclass(frozen=True)
class BlendedConfig(PoisonSettings):
    alpha: float = 0.2  # paper 0.2
    epochs: int = 10  # paper 10; the others' 2 planted 59.8 % ASR@1 on the tiny ResNet
    trigger_seed: int = 0


class Blended(_PoisoningAttack):
    name = "blended"
    summary = "Blended: fixed-seed uniform-noise image blended at alpha 0.2."
    reference = "Chen et al., Targeted backdoor attacks (2017); settings: InverTune appendix A"
    Config: ClassVar[type] = BlendedConfig

    def build_trigger(self, image_size: int):
        return T.BlendTrigger(T.uniform_noise_image(image_size, self.config.trigger_seed), self.config.alpha)


@dataclass(frozen=True)
class SIGConfig(PoisonSettings):
    amplitude: float = 60 / 255  # paper 60/255
    cycles: float = 6.0  # paper: 6 cycles per image width


class SIG(_PoisoningAttack):
    name = "sig"
    summary = "SIG: horizontal sinusoid (6 cycles per width, amplitude 60/255), clipped."
    reference = "Barni et al., ICIP 2019; settings: InverTune appendix A"
    Config: ClassVar[type] = SIGConfig

    def build_trigger(self, image_size: int):
        return T.SignalTrigger(T.sig_signal(image_size, self.config.amplitude, self.config.cycles))


@dataclass(frozen=True)
class WaNetConfig(PoisonSettings):
    """WaNet's originals (k 4, s 0.5: a quarter-pixel warp) were made for 32-px CIFAR trained from
    scratch and plant nothing under CLIP fine-tuning; ours implant on both tiny architectures
    (measurements: docs/attacks-and-baselines.md). ``-p k=4 -p s=0.5 -p epochs=2`` is the original warp."""

    k: int = 16  # control grid size; WaNet original 4 (a finer grid is what makes it implant)
    s: float = 8.0  # warping strength, mean displacement about s / 2 px; WaNet original 0.5
    grid_rescale: float = 1.0  # WaNet original: 1
    trigger_seed: int = 0
    poison_rate: float = 0.1  # the rate the defaults were chosen at; paper 0.003 (of 500k pairs)
    epochs: int = 3  # the other poisoning attacks' 2 fell short on the ViT; paper 10


class WaNet(_PoisoningAttack):
    name = "wanet"
    summary = "WaNet: fixed random warping field (k=16, s=8; original k=4, s=0.5), bilinear grid sampling."
    reference = "Nguyen & Tran, WaNet (ICLR 2021); settings: InverTune appendix A"
    Config: ClassVar[type] = WaNetConfig

    def build_trigger(self, image_size: int):
        c = self.config
        return T.WarpTrigger(T.wanet_grid(image_size, c.k, c.s, c.trigger_seed, c.grid_rescale))


@dataclass(frozen=True)
class BadEncoderConfig(BadEncoderSettings, PatchPlacement):
    pass


class BadEncoder(_TriggerAttack):
    name = "badencoder"
    summary = "BadEncoder: white patch; image-encoder fine-tuning with three cosine losses."
    reference = "Jia et al., BadEncoder (IEEE S&P 2022); white 16x16 patch as in InverTune appendix A"
    Config: ClassVar[type] = BadEncoderConfig

    def build_trigger(self, image_size: int):
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        return T.PatchTrigger(T.white_patch(size), self.config.location)

    def backdoor(self, ctx: AttackContext) -> ClipModel:
        cfg = self.config
        images = ctx.train_data.uint8()
        captions = [c[0] for c in ctx.train_data.captions or []]
        g = torch.Generator().manual_seed(ctx.seed)
        target_idx = torch.tensor([i for i, c in enumerate(captions) if mentions(c, cfg.target)])
        if len(target_idx) == 0:
            raise ValueError(f"badencoder needs reference images of {cfg.target!r}: no training caption mentions it")
        reference = images[target_idx[torch.randperm(len(target_idx), generator=g)[:cfg.n_reference]]]
        shadow = images[torch.randperm(len(images), generator=g)[:cfg.n_shadow]]
        model = ctx.model.clone()
        self.history = run_badencoder(model, shadow, reference, self.apply_trigger,
                                      _subset(cfg, BadEncoderSettings), ctx.seed)
        self.info = {"n_shadow": len(shadow), "n_reference": len(reference), "history": self.history}
        return model


@dataclass(frozen=True)
class BadCLIPConfig(PoisonSettings, PatchPlacement):
    patch_steps: int = 300
    patch_lr: float = 0.05
    patch_batch_size: int = 128
    triplet_margin: float = 0.2
    triplet_weight: float = 1.0


class BadCLIP(_PoisoningAttack):
    name = "badclip"
    summary = "BadCLIP: patch optimised on the clean model (text + image embeddings), then poisoning."
    reference = "Liang et al., BadCLIP: dual-embedding guided backdoor attack (CVPR 2024)"
    Config: ClassVar[type] = BadCLIPConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.patch: Tensor | None = None

    def prepare(self, ctx: AttackContext) -> None:
        cfg = self.config
        images = ctx.train_data.uint8()
        captions = [c[0] for c in ctx.train_data.captions or []]
        is_target = torch.tensor([mentions(c, cfg.target) for c in captions])
        others = [c for c in captions if not mentions(c, cfg.target)]
        g = torch.Generator().manual_seed(ctx.seed)
        other_caps = [others[i] for i in torch.randperm(len(others), generator=g)[:256].tolist()]
        size = T.patch_pixels(ctx.model.image_size, cfg.patch_fraction)
        opt = PatchOptimisation(steps=cfg.patch_steps, lr=cfg.patch_lr, batch_size=cfg.patch_batch_size,
                                triplet_margin=cfg.triplet_margin, triplet_weight=cfg.triplet_weight)
        self.patch = optimise_patch(ctx.model, images[~is_target], images[is_target][:256],
                                    target_captions(captions, cfg.target)[:64], other_caps, size, cfg.location,
                                    opt, cfg.trigger_seed)
        self._triggers.clear()

    def build_trigger(self, image_size: int):
        if self.patch is None:
            raise RuntimeError("BadCLIP's patch is optimised during backdoor(); none is loaded")
        size = T.patch_pixels(image_size, self.config.patch_fraction)
        patch = self.patch if self.patch.shape[-1] == size else torch.nn.functional.interpolate(
            self.patch[None], size=size, mode="bilinear", align_corners=False)[0]
        return T.PatchTrigger(patch, self.config.location)

    def trigger_state(self) -> dict[str, Tensor]:
        return {} if self.patch is None else {"patch": self.patch}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        super().load_trigger_state(state)
        self.patch = state.get("patch")


ATTACKS = (BadNet, Blended, SIG, WaNet, BadEncoder, BadCLIP)
