"""The model a plugin is handed (:class:`ClipModel`), as loaded, hashed and written by a :class:`ModelAdapter`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .config import Component


@runtime_checkable
class ClipModel(Protocol):
    """What every model adapter hands the science: a CLIP in [0,1] pixel space.

    Images enter as float tensors in [0,1] at ``image_size``; normalisation happens
    inside. Embeddings come back L2-normalised unless ``normalize=False``.
    """

    image_size: int

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor: ...

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor: ...

    def tokenize(self, texts: Sequence[str]) -> Tensor: ...

    def vision_layers(self) -> dict[str, nn.Module]: ...

    def logit_scale(self) -> float: ...

    def parameters(self, recurse: bool = True) -> Any: ...

    # torch.nn.Module's: contrastive training calls the model on (images, tokens) and switches modes
    def __call__(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def clone(self) -> ClipModel:
        """An independent copy (attacks and fine-tuning baselines train one, never the suspect itself)."""
        ...


@dataclass
class LoadedModel:
    """A model plus what is needed to describe it and to write it back in its own format."""

    model: ClipModel
    format: str
    source: str
    arch: str
    sha256: str
    save_info: dict[str, Any] = field(default_factory=dict)
    # Data sources that come with the model (the embedded world), keyed like the CLI
    # options: clean_data, eval_data, shift_data, retrieval_data, classes.
    data_defaults: dict[str, str] = field(default_factory=dict)
    # The world the model comes from, where it does (name, preset, vocabulary size, each split's style).
    world: dict[str, Any] = field(default_factory=dict)


def state_dict_sha256(module: torch.nn.Module, skip_prefixes: tuple[str, ...] = ()) -> str:
    """A content hash of a model's tensors, independent of the file format it came in
    (what :attr:`LoadedModel.sha256` holds); tensors under ``skip_prefixes`` are left out."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name.startswith(skip_prefixes):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ModelAdapter(Component):
    """Reads one checkpoint format into a :class:`ClipModel` and writes it back."""

    def detect(self, source: str) -> bool:
        """True when ``source`` looks like this adapter's format (cheap; no loading)."""
        raise NotImplementedError

    def load(self, source: str, device: torch.device) -> LoadedModel:
        raise NotImplementedError

    def save(self, loaded: LoadedModel, model: ClipModel, out_dir: Path) -> Path:
        """Write ``model`` in ``loaded``'s format under ``out_dir``; return the path."""
        raise NotImplementedError

    def create(self, model_cfg: dict[str, Any], device: torch.device) -> LoadedModel:
        """A freshly initialised model of architecture ``model_cfg`` in this format (a world trains it)."""
        raise NotImplementedError(f"model adapter {self.name!r} cannot create a model from a config")
