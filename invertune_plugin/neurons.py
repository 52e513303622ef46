"""Stage 3's selection: per-layer impact of the trigger, the layers kept, the critical neurons
(seeded K-means) and the parameter rows that write them (module docstring of :mod:`.tune`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor, nn

from toolbox.api import ClipModel
from toolbox.primitives.tensors import as_float

Trigger = Callable[[Tensor], Tensor]

# Submodules (by name suffix inside a layer) whose output rows write the layer's output channels.
WRITER_SUFFIXES = (
    "attn.out_proj",
    "mlp.c_proj",
    "self_attn.out_proj",
    "mlp.fc2",
    "conv3",
    "bn3",
    "downsample.0",
    "downsample.1",
    "downsample.2",
)


@dataclass
class LayerImpact:
    name: str
    diff: float
    n_neurons: int
    selected: bool = False
    n_critical: int = 0


def neuron_activations(output: Tensor | tuple) -> Tensor:
    """[B, channels] in fp32 (under autocast too): mean over tokens (ViT [B,L,D]) or pixels (CNN [B,C,H,W])."""
    out = (output[0] if isinstance(output, tuple) else output).float()
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        return out.mean(dim=1)
    return out


class ActivationRecorder:
    """Forward hooks on named layers; ``take()`` returns and clears the recorded activations."""

    def __init__(self, layers: OrderedDict[str, nn.Module]) -> None:
        self.acts: dict[str, Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.acts[name] = neuron_activations(output)

        return hook

    def take(self) -> dict[str, Tensor]:
        acts, self.acts = self.acts, {}
        return acts

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def mean_activations(
    model: ClipModel, recorder: ActivationRecorder, images: Tensor, trigger: Trigger | None, batch_size: int = 128
) -> dict[str, Tensor]:
    sums: dict[str, Tensor] = {}
    for i in range(0, len(images), batch_size):
        x = as_float(images[i : i + batch_size])
        model.encode_image(trigger(x) if trigger else x)
        for name, a in recorder.take().items():
            sums[name] = sums.get(name, 0) + a.sum(0)
    return {k: v / len(images) for k, v in sums.items()}


def layer_impacts(mu_clean: dict[str, Tensor], mu_trig: dict[str, Tensor]) -> list[LayerImpact]:
    return [
        LayerImpact(
            name=n,
            diff=float((mu_clean[n] - mu_trig[n]).norm() / mu_clean[n].norm().clamp_min(1e-12)),
            n_neurons=len(mu_clean[n]),
        )
        for n in mu_clean
    ]


def select_layers(impacts: list[LayerImpact], rule: str) -> None:
    diffs = np.array([i.diff for i in impacts])
    threshold = diffs.mean() + diffs.std() if rule == "mean+std" else -np.inf
    for imp in impacts:
        imp.selected = imp.diff > threshold
    if not any(i.selected for i in impacts):  # mean+std over identical diffs: keep the largest
        max(impacts, key=lambda i: i.diff).selected = True


def critical_neurons(delta: Tensor, k: int, seed: int) -> Tensor:
    """Boolean mask of the K-means cluster (on |delta|) with the largest centroid."""
    values = delta.abs().float().cpu().numpy().reshape(-1, 1).astype(np.float64)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(values)
    top = int(np.argmax(km.cluster_centers_.ravel()))
    return torch.from_numpy(km.labels_ == top)


def writer_rows(layer: nn.Module, neuron_mask: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
    """(parameter, row mask) for every parameter in ``layer`` that writes its output channels."""
    out = []
    n = len(neuron_mask)
    for name, module in layer.named_modules():
        if not name or not any(name == s or name.endswith("." + s) for s in WRITER_SUFFIXES):
            continue
        for p in module.parameters(recurse=False):
            if p.ndim >= 1 and p.shape[0] == n:
                out.append((p, neuron_mask.view(-1, *([1] * (p.ndim - 1))).to(p.device, p.dtype)))
    return out
