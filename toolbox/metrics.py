"""The standard CA, ASR and retrieval metrics (torchmetrics ``Metric`` classes), host built-ins.

Each class states what it counts; the host records the class path of every metric it
used in the result's ``metric_config``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric


def _topk_indices(logits: Tensor, k: int) -> Tensor:
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


class _CountingMetric(Metric):
    """hits / total, summed over updates (and over processes)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def compute(self) -> Tensor:
        if int(self.total) == 0:
            return torch.tensor(float("nan"))
        return self.hits.double() / self.total.double()


class ZeroShotAccuracy(_CountingMetric):
    """Top-k accuracy of zero-shot logits (image embeddings x class embeddings).

    ``update(logits [N, C], target [N])``. Class embeddings are built by the caller as
    open_clip does: mean of L2-normalised template embeddings, renormalised.
    """

    name = "zeroshot_accuracy"
    summary = "Zero-shot top-k accuracy (CA) over template-ensembled class embeddings."
    reference = "Radford et al., CLIP (ICML 2021), zero-shot evaluation"

    @dataclass(frozen=True)
    class Config:
        top_k: int = 1

    def __init__(self, top_k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_k = top_k

    def update(self, logits: Tensor, target: Tensor) -> None:
        target = target.to(logits.device)
        hit = (_topk_indices(logits, self.top_k) == target[:, None]).any(dim=1)
        self.hits += hit.sum()
        self.total += target.numel()


class AttackSuccessRate(_CountingMetric):
    """Fraction of triggered images whose zero-shot top-k holds the target class.

    ``update(logits_of_triggered_images [N, C], true_labels [N])``. With
    ``exclude_target`` (default, BackdoorBench convention) images whose true class is
    the target are left out; without it (BadCLIP/PAR convention) all count.
    """

    name = "attack_success_rate"
    summary = "ASR@k: triggered images whose top-k holds the target (target class excluded by default)."
    reference = "BackdoorBench (Wu et al., NeurIPS 2022) ASR; BadCLIP (Liang et al., CVPR 2024) for @k"
    higher_is_better = False

    @dataclass(frozen=True)
    class Config:
        target: int = 0
        top_k: int = 1
        exclude_target: bool = True

    def __init__(self, target: int = 0, top_k: int = 1, exclude_target: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target, self.top_k, self.exclude_target = target, top_k, exclude_target

    def update(self, logits: Tensor, labels: Tensor) -> None:
        labels = labels.to(logits.device)
        keep = labels != self.target if self.exclude_target else torch.ones_like(labels, dtype=torch.bool)
        hit = (_topk_indices(logits[keep], self.top_k) == self.target).any(dim=1)
        self.hits += hit.sum()
        self.total += int(keep.sum())


class RetrievalRecall(_CountingMetric):
    """Image-to-text recall@k, each image counted once.

    ``update(image_emb [N, D], caption_emb [M, D], caption_owner [M])``: one update is
    one gallery; an image is a hit if any of its own captions is among its k most
    similar captions. (Equals torchmetrics' ``RetrievalHitRate(top_k=k)`` with images as
    queries, without materialising the N x M target matrix.)
    """

    name = "retrieval_recall"
    summary = "Image-to-text recall@k (hit if any own caption is in the top k; each image once)."
    reference = "CLIP retrieval evaluation (Radford et al., 2021); CleanCLIP/BadCLIP recall@10"

    @dataclass(frozen=True)
    class Config:
        k: int = 10

    def __init__(self, k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = k

    def update(self, image_emb: Tensor, caption_emb: Tensor, caption_owner: Tensor) -> None:
        top = _topk_indices(image_emb @ caption_emb.T, self.k)  # [N, k] caption indices
        owners = caption_owner.to(top.device)[top]  # [N, k] image index of each retrieved caption
        own = torch.arange(len(image_emb), device=top.device)[:, None]
        self.hits += (owners == own).any(dim=1).sum()
        self.total += len(image_emb)


class RetrievalASR(_CountingMetric):
    """Retrieval ASR: fraction of triggered images whose top-k retrieved captions include one
    that mentions the target word.

    ``update(triggered_image_emb [N, D], caption_emb [M, D], caption_mentions_target [M] bool,
    keep [N] bool)``; ``keep`` drops images whose own captions mention the target (the
    BackdoorBench-style exclusion, decided by the caller).
    """

    name = "retrieval_asr"
    summary = "Retrieval ASR: triggered images whose top-k captions mention the target word."
    reference = "BadCLIP (Liang et al., CVPR 2024) retrieval ASR; InverTune Table 1"
    higher_is_better = False

    @dataclass(frozen=True)
    class Config:
        k: int = 10

    def __init__(self, k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = k

    def update(
        self, image_emb: Tensor, caption_emb: Tensor, caption_mentions_target: Tensor, keep: Tensor | None = None
    ) -> None:
        if keep is not None:
            image_emb = image_emb[keep.to(image_emb.device)]
        top = _topk_indices(image_emb @ caption_emb.T, self.k)
        hit = caption_mentions_target.to(top.device)[top].any(dim=1)
        self.hits += hit.sum()
        self.total += len(image_emb)


METRICS = (ZeroShotAccuracy, AttackSuccessRate, RetrievalRecall, RetrievalASR)
