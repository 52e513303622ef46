"""A CLIP in [0,1] pixel space: the one model type the science sees."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.api import state_dict_sha256
from toolbox.compat import import_open_clip

from .limits import PIXEL_MEAN_RANGE, PIXEL_STD_RANGE, channel_values


class OpenClipModel(nn.Module):
    """Wraps an open_clip ``CLIP``: normalisation inside, named vision layers outside.

    ``model_cfg`` is the open_clip config the model was built from (kept so it can be
    written back); ``quick_gelu`` is recorded with it.
    """

    def __init__(
        self,
        clip: nn.Module,
        model_cfg: dict[str, Any],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        open_clip = import_open_clip()
        self.clip = clip
        self.model_cfg = copy.deepcopy(model_cfg)
        mean = mean or getattr(clip.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = std or getattr(clip.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        check_normalisation(mean, std)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.context_length = int(getattr(clip, "context_length", 77))
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        # nn.Module starts in training mode; follow the wrapped model, or a later `was_training`
        # restore (evaluation does one) would put an eval-mode CLIP's batch norms into training
        self.train(clip.training)

    # -- the ClipModel protocol ---------------------------------------------------
    def normalize_pixels(self, images: Tensor) -> Tensor:
        return (fit_to_input(images, self.image_size) - self.pixel_mean) / self.pixel_std

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        return self.clip.encode_image(self.normalize_pixels(images), normalize=normalize)

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    def tokenize(self, texts: Sequence[str] | str) -> Tensor:
        return self._tokenizer(texts)

    def token_embedding(self) -> nn.Module:
        """The text tower's token embedding: a prompt learner (DBOM) replaces rows of its output."""
        return self.clip.token_embedding

    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp())

    def text_fingerprint(self) -> str:
        """A hash of everything but the vision tower: equal text embeddings (toolbox.zeroshot memoises on it)."""
        return state_dict_sha256(self, ("clip.visual.",))

    def vision_layers(self) -> OrderedDict[str, nn.Module]:
        """Blocks whose outputs InverTune inspects: ViT residual blocks or ResNet stages."""
        visual = self.clip.visual
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            for i, block in enumerate(visual.transformer.resblocks):
                layers[f"visual.transformer.resblocks.{i}"] = block
        elif all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
            for i in range(1, 5):
                layers[f"visual.layer{i}"] = getattr(visual, f"layer{i}")
        else:
            raise TypeError(f"unsupported vision tower {type(visual).__name__}")
        return layers

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(image embeddings, text embeddings, logit scale), as open_clip's ClipLoss expects."""
        return self.encode_image(images), self.encode_text(tokens), self.clip.logit_scale.exp()

    def clone(self) -> OpenClipModel:
        return copy.deepcopy(self)

    @property
    def arch(self) -> str:
        return describe_arch(self.model_cfg)


def check_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
    """A zero, negative or NaN std makes every embedding NaN and every number of the run meaningless."""
    channel_values(list(mean), "mean", "the model's preprocessing", *PIXEL_MEAN_RANGE)
    channel_values(list(std), "std", "the model's preprocessing", *PIXEL_STD_RANGE)


def fit_to_input(images: Tensor, size: int) -> Tensor:
    """Resize a [B,3,H,W] batch to the model's input size (a no-op when it already fits)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def describe_arch(cfg: dict[str, Any]) -> str:
    """A short human description, e.g. ``ViT(w128,l4,p4)@32/text(w128,l2)/d128``."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    layers = v.get("layers")
    if isinstance(layers, (list, tuple)):
        vis = f"ResNet(w{v.get('width')},l{'-'.join(map(str, layers))})"
    else:
        vis = f"ViT(w{v.get('width')},l{layers},p{v.get('patch_size')})"
    gelu = "/quickgelu" if cfg.get("quick_gelu") else ""
    return f"{vis}@{v.get('image_size')}/text(w{t.get('width')},l{t.get('layers')})/d{cfg.get('embed_dim')}{gelu}"


def build_clip(model_cfg: dict[str, Any]) -> nn.Module:
    """Construct an open_clip CLIP (fp32, random weights) from a config dict."""
    open_clip = import_open_clip()
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    return open_clip.model.CLIP(**cfg).float().eval()
