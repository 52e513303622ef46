"""FLARE (Hou et al., TIFS 2025, arXiv 2411.19479): dataset purification from every hidden layer.

A dataset defense: given a training set and a model trained on it (the suspect), flag the samples
an attacker poisoned before anyone trains on the set again. Read from the paper's abstract and its
public reference code (BackdoorBox ``core/defenses/FLARE.py``); ours where marked.

1. ``abnormality``: at the input of every normalisation layer of the image tower (BatchNorm in a
   ResNet; LayerNorm in a ViT, ours: FLARE's models are CNNs) each activation element is scored by
   its Gaussian log-likelihood under that channel's statistics, and a sample keeps, per layer, its
   least likely element: a trigger shows as one very unlikely activation somewhere. BatchNorm
   layers use their running statistics as FLARE does; LayerNorm inputs use the channel's mean and
   variance over the scanned set (ours: a ViT keeps no running statistics).
2. ``cluster``: the per-layer values, standardised, are embedded in 2-D and clustered by HDBSCAN;
   the largest cluster and the noise are clean, the other clusters are flagged (FLARE's labelling)
   when their members are at least ``min_shift`` SDs more abnormal (mean standardised likelihood over
   the layers, medians compared) than the largest cluster's (ours: it stands in for FLARE's stability
   threshold xi, which keeps a split that is not significant from flagging anything).
   Ours: t-SNE (scikit-learn has no UMAP) stands in for FLARE's UMAP, whose min_dist 0 packs a
   neighbourhood into one clump, as t-SNE does and the raw values do not; a set larger
   than ``embed_samples`` is embedded on a seeded subsample and the rest vote by their nearest
   embedded neighbours in the values' space; HDBSCAN's own stability-based (excess-of-mass) selection
   picks the clusters where FLARE cuts its tree at a lambda span xi.
3. ``scan``: the subspace search: with all layers, then without the deepest one, two, ..., the
   first subspace in which a cluster is flagged is kept (FLARE's ``wo_layer_num`` loop).

Score per sample (for AUROC; ours): the fraction of its ``knn`` nearest embedded neighbours, in the
values' space, that lie in flagged clusters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.cluster import HDBSCAN
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from torch import Tensor, nn

from toolbox import precision
from toolbox.api import ClipModel, DataScanContext, DataScanOutcome, DatasetDefense
from toolbox.progress import progress


@dataclass(frozen=True)
class FlareConfig:
    """FLARE's values where its reference code sets them; the rest ours (module docstring)."""

    min_cluster_size: int = 100  # FLARE's code: 100 (of the whole set; here of the embedded samples)
    min_samples: int = 10  # HDBSCAN's density neighbourhood (ours; FLARE's code leaves it at min_cluster_size)
    perplexity: float = 30.0  # t-SNE's (ours; FLARE's UMAP has n_neighbors 40)
    embed_samples: int = 4000  # at most this many samples embedded; the rest vote (ours; t-SNE's cost)
    knn: int = 10  # embedded neighbours that vote for a sample's score (ours)
    min_shift: float = 1.0  # a minor cluster is flagged only this many SDs more abnormal than the largest (ours)
    max_dropped_layers: int = (
        -1
    )  # subspace search: drop up to this many deepest layers (-1: all but one, as FLARE's code)
    batch_size: int = 256
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if (
            self.min_cluster_size < 2
            or self.min_samples < 1
            or self.knn < 1
            or self.embed_samples < 10
            or self.max_dropped_layers < -1
            or self.batch_size < 1
            or not self.perplexity > 0
        ):
            raise ValueError(
                "min_cluster_size must be >= 2, min_samples, knn and batch_size >= 1, embed_samples "
                ">= 10, perplexity > 0, max_dropped_layers >= -1"
            )
        if max(self.min_cluster_size, self.min_samples) > self.embed_samples:
            raise ValueError(
                f"min_cluster_size and min_samples count embedded samples: at most embed_samples ({self.embed_samples})"
            )
        precision.check(self.precision)


def _is_batchnorm(m: nn.Module) -> bool:
    """BatchNorm with running statistics: torch's, or a frozen one (open_clip's locked towers)."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or (
        "BatchNorm" in type(m).__name__ and getattr(m, "running_var", None) is not None
    )


def norm_layers(model: ClipModel) -> list[tuple[str, nn.Module]]:
    """The normalisation layers inside the image tower's blocks, in forward order."""
    return [
        (f"{block_name}.{name}" if name else block_name, m)
        for block_name, block in model.vision_layers().items()
        for name, m in block.named_modules()
        if _is_batchnorm(m) or isinstance(m, nn.LayerNorm)
    ]


def _channels_last(x: Tensor, module: nn.Module) -> Tensor:
    """[B, elements, C]: BatchNorm inputs are [B,C,H,W]; LayerNorm normalises the last dim."""
    x = x.float()
    return x.flatten(2).transpose(1, 2) if _is_batchnorm(module) else x.reshape(len(x), -1, x.shape[-1])


@torch.no_grad()
def _run(
    model: ClipModel,
    images: Tensor,
    layers: list[tuple[str, nn.Module]],
    cfg: FlareConfig,
    device: torch.device,
    reduce,
    desc: str,
) -> None:
    """The image tower over ``images`` (uint8) in batches; ``reduce(layer, start, x)`` sees each layer's
    input as [B, elements, C] inside the forward pass, so no more than one layer's input is held."""
    batch = {"start": 0, "n": 0}

    def pre_hook(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            if args[0].shape[0] != batch["n"]:  # a sequence-first transformer would mix samples up
                raise ValueError(
                    f"FLARE reads batch-first activations; {layers[i][0]} got {tuple(args[0].shape)} "
                    f"for a batch of {batch['n']}"
                )
            reduce(i, batch["start"], _channels_last(args[0], module))

        return hook

    handles = [m.register_forward_pre_hook(pre_hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        for start in progress(range(0, len(images), cfg.batch_size), desc=desc, unit="batch"):
            x = images[start : start + cfg.batch_size].to(device).float().div_(255.0)
            if x.shape[-1] != model.image_size:
                raise ValueError(f"images are {x.shape[-1]} px, the model takes {model.image_size}")
            batch.update(start=start, n=len(x))
            with precision.autocast(cfg.precision, device):
                model.encode_image(x)
    finally:
        for h in handles:
            h.remove()


def abnormality(
    model: ClipModel, images: Tensor, cfg: FlareConfig, device: torch.device
) -> tuple[np.ndarray, list[str]]:
    """[N, layers]: per sample and layer, the least log-likelihood of any activation element."""
    layers = norm_layers(model)
    if not layers:
        raise ValueError(
            "FLARE reads the inputs of normalisation layers (BatchNorm with running statistics, "
            "LayerNorm); this image tower's blocks have none"
        )
    stats: list[tuple[Tensor, Tensor] | None] = [
        (m.running_mean.float(), m.running_var.float()) if _is_batchnorm(m) else None for _, m in layers
    ]
    if any(s is None for s in stats):  # LayerNorm inputs: the channel's statistics over the scanned set
        sums: dict[int, list] = {}

        def accumulate(i: int, _start: int, x: Tensor) -> None:
            if stats[i] is None:  # per-batch sums on the device, totals in float64 on the host (MPS has none)
                x = x.reshape(-1, x.shape[-1])
                s = sums.get(i, [0.0, 0.0, 0])
                sums[i] = [s[0] + x.sum(0).cpu().double(), s[1] + (x * x).sum(0).cpu().double(), s[2] + len(x)]

        _run(model, images, layers, cfg, device, accumulate, "flare: channel statistics")
        for i, (s1, s2, n) in sums.items():
            mean = s1 / n
            stats[i] = (mean.float(), (s2 / n - mean**2).clamp_min(0).float())
    feats = np.zeros((len(images), len(layers)), dtype=np.float64)

    def least_likely(i: int, start: int, x: Tensor) -> None:
        mean, var = stats[i]
        std = (var.to(x.device) + 1e-5).sqrt()
        logp = -0.5 * ((x - mean.to(x.device)) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)
        feats[start : start + len(x), i] = logp.flatten(1).min(1).values.cpu().double().numpy()

    _run(model, images, layers, cfg, device, least_likely, "flare: abnormal activations")
    return feats, [name for name, _ in layers]


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)


def cluster(x: np.ndarray, cfg: FlareConfig, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per sample: flagged (bool) and score (fraction of flagged embedded neighbours); and what was found."""
    x = _standardised(x)
    seed %= 2**32  # numpy's and scikit-learn's seeds are unsigned 32-bit; the toolbox takes any int
    if len(x) < max(cfg.min_cluster_size, cfg.min_samples + 1, 4):
        raise ValueError(
            f"FLARE needs at least {max(cfg.min_cluster_size, cfg.min_samples + 1, 4)} samples "
            f"(min_cluster_size {cfg.min_cluster_size}); the set has {len(x)}"
        )
    rng = np.random.default_rng(seed)
    embedded = np.sort(rng.permutation(len(x))[: cfg.embed_samples])
    perplexity = min(cfg.perplexity, (len(embedded) - 1) / 3)  # t-SNE needs more samples than 3 x perplexity
    init = "pca" if x.shape[1] >= 2 else "random"  # PCA to 2-D needs two values per sample
    points = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed).fit_transform(x[embedded])
    labels = HDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples, copy=True).fit_predict(points)
    found = labels[labels >= 0]
    main = int(np.bincount(found).argmax()) if len(found) else -1
    # how abnormal each cluster is: the median over its members of minus their mean standardised likelihood
    abnormal = -x[embedded].mean(1) / max(float(x.mean(1).std()), 1e-8)
    shift = {
        int(c): float(np.median(abnormal[labels == c]) - np.median(abnormal[labels == main])) for c in np.unique(found)
    }
    bad = [c for c, v in shift.items() if c != main and v >= cfg.min_shift]
    flagged_embedded = np.isin(labels, bad)
    k = min(cfg.knn, len(embedded))
    _, nearest = NearestNeighbors(n_neighbors=k).fit(x[embedded]).kneighbors(x)
    scores = flagged_embedded[nearest].mean(1)
    flagged = scores >= 0.5
    flagged[embedded] = flagged_embedded  # its own cluster decided; the vote is for samples never embedded
    clusters = [
        {
            "size_embedded": int((labels == c).sum()),
            "largest": c == main,
            "shift": round(shift[c], 3),
            "flagged": c in bad,
        }
        for c in shift
    ]
    return flagged, scores, {"embedded": len(embedded), "clusters": clusters, "noise_embedded": int((labels < 0).sum())}


class Flare(DatasetDefense):
    name = "flare"
    summary = "FLARE: least likely activation per normalisation layer, embedded and clustered; minor clusters flagged."
    reference = "Hou et al., FLARE: Toward universal dataset purification against backdoor attacks (TIFS 2025)"
    Config: ClassVar[type] = FlareConfig

    def scan(self, ctx: DataScanContext) -> DataScanOutcome:
        cfg, timings = self.config, {}
        ctx.model.eval()
        start = time.perf_counter()
        feats, names = abnormality(ctx.model, ctx.data.uint8(), cfg, ctx.device)
        timings["abnormality"] = time.perf_counter() - start
        start = time.perf_counter()
        most = len(names) - 1 if cfg.max_dropped_layers < 0 else min(cfg.max_dropped_layers, len(names) - 1)
        tried: list[dict[str, Any]] = []
        for dropped in range(most + 1):  # all layers first, then without the deepest ones
            flagged, scores, found = cluster(feats[:, : len(names) - dropped], cfg, ctx.seed)
            tried.append({"dropped_layers": dropped, **found})
            if any(c["flagged"] for c in found["clusters"]):
                break
        timings["clustering"] = time.perf_counter() - start
        info = {
            "layers": names,
            "subspace": names[: len(names) - tried[-1]["dropped_layers"]],
            "subspaces_tried": tried,
            "n_flagged": int(flagged.sum()),
        }
        return DataScanOutcome(
            scores=torch.from_numpy(scores).float(),
            flagged=torch.from_numpy(flagged),
            info=info,
            timings_s={k: round(v, 3) for k, v in timings.items()},
        )
