"""DBOM (Stein et al., arXiv 2508.01932, 2025): poisoned images found as trigger-object pairs with a
frozen vision-language model, including pairings never seen in training.

The defender knows some trigger families (the toolbox's attacks named in ``known``) and the objects
(the vocabulary). From its own clean images it builds the primitives set: each image as it is
("clean") and carrying each known trigger, its object the frozen model's zero-shot label. A share of
the (trigger, object) pairs is held out of training: the pairings DBOM must recognise unseen.

On top of the frozen encoder (never tuned), DBOM learns:

- a *visual prompt repository* per primitive kind: keys and prompts; an image retrieves the prompts
  of its ``top`` nearest keys, which shift a linear view of its embedding into a trigger feature and
  an object feature; the fused feature is their normalised sum with the embedding;
- *prefix-tuned text prompts* (``prompts.py``): learned context tokens and a learned word per
  trigger and per object, through the frozen text tower, for every pair and each primitive alone.

Loss: cross-entropy of the fused feature over the seen pairs, plus ``w_primitive`` times the
trigger and object features' cross-entropy over their words, ``w_separation`` times the mean
squared cosine between trigger and object prompts (separation), ``w_diversity`` times the mean
squared cosine between prompts of one kind (diversity), ``w_key`` times one minus the retrieved
keys' cosine to the embedding. A scanned image's poison score is one minus its probability of
"clean": the pair head's, summed over every object (unseen pairs included), averaged with the
trigger head's. Flagged above ``threshold``.

Where the paper leaves a choice open (its code is not public; the method is read from the paper's
abstract and the authors' earlier prefix-tuning detector and VAPS), the simplest choice that keeps
its claims testable, each marked "ours" below: see docs/dataset-defenses.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.api import ClipModel, DataScanContext, DataScanOutcome, DatasetDefense
from toolbox.primitives.tensors import frozen
from toolbox.progress import progress
from toolbox.zeroshot import ZeroShotHead

from .primitives import (
    MIN_IMAGES,
    Primitives,
    build_primitives,
    clean_images,
    embed,
    is_unseen,
    known_triggers,
    seen_in_training,
    zero_shot,
)
from .prompts import SoftPrompts, token_embedding

CLEAN = "clean"


@dataclass(frozen=True)
class DbomConfig:
    known: tuple[str, ...] = ("badnet", "blended", "sig")  # trigger families the defender knows (ours)
    images: int = 2000  # the defender's clean images the primitives set is built from (ours; >= 20)
    unseen_pairs: float = 0.25  # share of each known trigger's objects held out of training (ours)
    test_images: float = 0.2  # share of the primitives set's images kept to measure seen / unseen (ours)
    context_tokens: int = 3  # learned context tokens, initialised from "a photo of" (CSP / DFSP: 3)
    trigger_prompts: int = 8  # repository prompts for triggers (VAPS: 20 in all; ours)
    object_prompts: int = 32  # ours: objects outnumber triggers
    top: int = 2  # prompts retrieved per image (VAPS: 2)
    w_primitive: float = 0.1  # trigger and object heads beside the pair head (DFSP 0.01; ours)
    w_separation: float = 0.1  # ours: the paper names the loss, not its weight
    w_diversity: float = 0.1  # ours, as w_separation
    w_key: float = 0.1  # ours: L2P / VAPS pull retrieved keys to their queries with weight 0.1
    # DBOM's earlier detector: 10 epochs at lr 1e-5 on ViT-B; a tiny CLIP learns at 1e-3, in steps so a
    # small primitives set trains as long as a large one (ours)
    steps: int = 600
    lr: float = 1e-3
    batch_size: int = 256
    negatives: int = 64  # pairs and objects drawn besides a batch's own for its softmax (ours)
    threshold: float = 0.5  # flagged when 1 - P(clean) exceeds this: the paper's argmax for two outcomes
    # the paper's frozen VLM is a clean public one: "base", the model before the run's attack; or "suspect"
    encoder: str = "base"

    def __post_init__(self) -> None:
        if not self.known or CLEAN in self.known:
            raise ValueError(f"known names at least one trigger family (an attack), not {CLEAN!r}")
        if not 0 <= self.unseen_pairs < 1 or not 0 < self.test_images < 1 or not 0 < self.threshold < 1:
            raise ValueError("unseen_pairs in [0, 1), test_images and threshold in (0, 1)")
        if self.images < MIN_IMAGES:
            raise ValueError(
                f"images must be >= {MIN_IMAGES}: fewer hold no test split and no spread to standardise by"
            )
        if min(self.context_tokens, self.trigger_prompts, self.object_prompts, self.top) < 1:
            raise ValueError("context_tokens, trigger_prompts, object_prompts and top must be >= 1")
        if self.top > min(self.trigger_prompts, self.object_prompts) or self.steps < 1 or self.batch_size < 1:
            raise ValueError("top <= each repository's size, steps and batch_size >= 1")
        if self.negatives < 0:
            raise ValueError("negatives must be >= 0")
        if self.encoder not in ("base", "suspect"):
            raise ValueError(f"encoder is 'base' or 'suspect', got {self.encoder!r}")
        from toolbox.lookup import registered

        attacks = registered("attack")
        if any(n not in attacks for n in self.known) or len(set(self.known)) != len(self.known):
            have = ", ".join(sorted(attacks))
            raise ValueError(f"known: each a registered attack, once; got {', '.join(self.known)} (registered: {have})")


class Repository(nn.Module):
    """Keys and prompts; an embedding retrieves the mean prompt of its ``top`` nearest keys."""

    def __init__(self, size: int, dim: int, top: int, gen: torch.Generator) -> None:
        super().__init__()
        self.keys = nn.Parameter(F.normalize(torch.randn(size, dim, generator=gen), dim=-1))
        self.prompts = nn.Parameter(torch.randn(size, dim, generator=gen) * 0.02)
        self.top = top

    def forward(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """(retrieved prompt [B, dim], cosine of the retrieved keys [B])."""
        sims = emb @ F.normalize(self.keys, dim=-1).T
        best, idx = sims.topk(self.top, dim=1)
        return self.prompts[idx].mean(1), best.mean(1)


class DbomModel(nn.Module):
    def __init__(
        self,
        clip: ClipModel,
        classnames: list[str],
        trigger_names: list[str],
        cfg: DbomConfig,
        seed: int,
        features: Tensor,
    ) -> None:
        """``features``: the primitives set's (their block statistics are standardised by it)."""
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.text = SoftPrompts(clip, cfg.context_tokens)
        device = features.device
        dim = int(clip.encode_text(clip.tokenize(["a"]).to(device)).shape[-1])
        self.dim, self.trigger_names, self.classnames, self.cfg = dim, trigger_names, classnames, cfg
        blocks = features[:, dim:]
        self.register_buffer("block_mean", blocks.mean(0))
        self.register_buffer("block_std", blocks.std(0).clamp(min=1e-6))
        start = self.text.words(["a photo of"])  # [1, width]: spread over the context tokens
        width = start.shape[-1]
        self.context = nn.ParameterList(
            nn.Parameter(start.expand(cfg.context_tokens, width).clone()) for _ in ("pair", "trigger", "object")
        )
        self.trigger_words = nn.Parameter(self.text.words([n.replace("_", " ") for n in trigger_names]))
        self.object_words = nn.Parameter(self.text.words(classnames))
        self.trigger_repo = Repository(cfg.trigger_prompts, dim, cfg.top, gen)
        self.object_repo = Repository(cfg.object_prompts, dim, cfg.top, gen)
        # ours: the trigger view also reads the blocks' token statistics; a 4-px patch barely moves a
        # clean tiny CLIP's final embedding, its blocks' token maxima it does (docs/dataset-defenses.md)
        self.trigger_view = nn.Linear(features.shape[1], dim)
        self.object_view = nn.Linear(dim, dim)
        with torch.no_grad():  # both start as the embedding itself
            self.trigger_view.weight.zero_()
            self.trigger_view.weight[:, :dim] = torch.eye(dim)
            self.object_view.weight.copy_(torch.eye(dim))
            self.trigger_view.bias.zero_()
            self.object_view.bias.zero_()
        self.scale = clip.logit_scale()

    def image_features(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(fused, trigger, object features, retrieved keys' mean cosine) of frozen features."""
        emb = feats[:, : self.dim]
        blocks = (feats[:, self.dim :] - self.block_mean) / self.block_std
        q_t = F.normalize(self.trigger_view(torch.cat([emb, blocks], 1)), dim=-1)
        q_o = F.normalize(self.object_view(emb), dim=-1)
        p_t, key_t = self.trigger_repo(q_t)
        p_o, key_o = self.object_repo(q_o)
        f_t = F.normalize(q_t + p_t, dim=-1)
        f_o = F.normalize(q_o + p_o, dim=-1)
        return F.normalize(emb + f_t + f_o, dim=-1), f_t, f_o, (key_t + key_o) / 2

    def text_features(self, pairs: Tensor, objects: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Text features of ``pairs`` ([P, 2] trigger, object), of every trigger and of ``objects`` (all)."""
        pair = self.text.encode(self.context[0], self.trigger_words[pairs[:, 0]], self.object_words[pairs[:, 1]])
        return (
            pair,
            self.text.encode(self.context[1], self.trigger_words),
            self.text.encode(self.context[2], self.object_words if objects is None else self.object_words[objects]),
        )

    def separation(self) -> tuple[Tensor, Tensor]:
        """(mean squared cosine between trigger and object prompts, mean squared off-diagonal cosine in each)."""
        t = F.normalize(self.trigger_repo.prompts, dim=-1)
        o = F.normalize(self.object_repo.prompts, dim=-1)

        def within(p: Tensor) -> Tensor:
            gram = (p @ p.T) ** 2
            n = len(p)
            return (gram.sum() - gram.diagonal().sum()) / max(n * (n - 1), 1)

        return ((t @ o.T) ** 2).mean(), (within(t) + within(o)) / 2

    def poison_scores(self, emb: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
        """(1 - P(clean), predicted trigger, predicted object) per embedding, over every pair."""
        n_t, n_o = len(self.trigger_names), len(self.classnames)
        pairs = torch.cartesian_prod(torch.arange(n_t), torch.arange(n_o)).to(emb.device)
        with torch.no_grad():
            text_pair, text_t, text_o = self.text_features(pairs)
            out = []
            for i in range(0, len(emb), batch):
                fused, f_t, f_o, _ = self.image_features(emb[i : i + batch])
                p_pair = (self.scale * fused @ text_pair.T).softmax(-1).view(-1, n_t, n_o)
                p_trig = (p_pair.sum(2) + (self.scale * f_t @ text_t.T).softmax(-1)) / 2
                p_obj = p_pair.sum(1) + (self.scale * f_o @ text_o.T).softmax(-1)
                out.append((1 - p_trig[:, 0], p_trig.argmax(1), p_obj.argmax(1)))
        return tuple(torch.cat(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]


def train(net: DbomModel, p: Primitives, cfg: DbomConfig, seed: int) -> list[dict[str, float]]:
    """Adam on the prompts, repositories and views over the seen pairs of the training images."""
    keep = ~p.test & ~is_unseen(p)
    feats, trig, objs = p.features[keep], p.triggers[keep], p.objects[keep]
    seen = torch.unique(torch.stack([trig, objs], 1), dim=0)  # [P, 2]
    pair_index = {(int(t), int(o)): i for i, (t, o) in enumerate(seen.tolist())}
    labels = torch.tensor(
        [pair_index[(int(t), int(o))] for t, o in zip(trig.tolist(), objs.tolist(), strict=True)], device=feats.device
    )
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    total, order = 0.0, torch.randperm(len(feats), generator=gen).to(feats.device)
    per_epoch = max(1, math.ceil(len(feats) / cfg.batch_size))
    for step in progress(range(cfg.steps), desc="dbom: train"):
        s = step % per_epoch
        if s == 0 and step:
            order = torch.randperm(len(feats), generator=gen).to(feats.device)
        idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        fused, f_t, f_o, key = net.image_features(feats[idx])
        # sampled softmax (ours): the batch's own pairs and objects and a few others, not all of them,
        # so a step encodes a few hundred prompts through the text tower instead of every pair
        pairs, pair_labels = sampled(labels[idx], len(seen), cfg.negatives, gen)
        objects, object_labels = sampled(objs[idx], len(net.classnames), cfg.negatives, gen)
        text_pair, text_t, text_o = net.text_features(seen[pairs], objects)
        loss = F.cross_entropy(net.scale * fused @ text_pair.T, pair_labels)
        primitive = F.cross_entropy(net.scale * f_t @ text_t.T, trig[idx]) + F.cross_entropy(
            net.scale * f_o @ text_o.T, object_labels
        )
        separation, diversity = net.separation()
        loss = (
            loss
            + cfg.w_primitive * primitive
            + cfg.w_separation * separation
            + cfg.w_diversity * diversity
            + cfg.w_key * (1 - key).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": round(total / ((step % 100) + 1), 4)})
            total = 0.0
    return history


def sampled(labels: Tensor, n: int, negatives: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The classes a batch's softmax runs over (its own labels and ``negatives`` others drawn at random,
    sorted) and the labels as positions among them."""
    others = torch.randperm(n, generator=gen)[:negatives].to(labels.device)
    classes = torch.unique(torch.cat([labels, others]))  # sorted
    return classes, torch.searchsorted(classes, labels)


def rates(flagged: Tensor, poisoned: Tensor) -> dict[str, Any]:
    n_pos, n_neg = int(poisoned.sum()), int((~poisoned).sum())
    return {
        "n": len(flagged),
        "tpr": round(float((flagged & poisoned).sum()) / n_pos, 4) if n_pos else None,
        "fpr": round(float((flagged & ~poisoned).sum()) / n_neg, 4) if n_neg else None,
    }


class Dbom(DatasetDefense):
    name = "dbom"
    summary = "DBOM: trigger and object primitives on a frozen CLIP, prompt-tuned; unseen pairings flagged too."
    reference = "Stein et al., Disentangled Backdoor-Object Modeling (DBOM), arXiv 2508.01932, 2025"
    Config: ClassVar[type] = DbomConfig
    uses_clean_data = True

    def scan(self, ctx: DataScanContext) -> DataScanOutcome:
        cfg: DbomConfig = self.config
        if ctx.clean_data is None:
            raise ValueError("DBOM builds its primitives set from the defender's clean images: none were given")
        encoder = ctx.base_model if cfg.encoder == "base" and ctx.base_model is not None else ctx.model
        token_embedding(encoder)  # a model DBOM cannot prompt is refused before any work
        triggers = known_triggers(cfg.known, encoder.image_size)
        with frozen(encoder):  # the flags come back: a --retrain after the scan trains this model's clone
            return self._scan(ctx, cfg, encoder, triggers)

    def _scan(self, ctx: DataScanContext, cfg: DbomConfig, encoder: ClipModel, triggers: list[Any]) -> DataScanOutcome:
        assert ctx.clean_data is not None
        timings: dict[str, float] = {}
        start = time.perf_counter()
        head = ZeroShotHead(encoder, ctx.classnames, ctx.templates, ctx.device)
        clean = clean_images(ctx.clean_data, cfg.images, ctx.seed).to(ctx.device)
        prims = build_primitives(encoder, head, clean, triggers, cfg.unseen_pairs, cfg.test_images, ctx.seed)
        timings["primitives"] = time.perf_counter() - start
        start = time.perf_counter()
        train_rows = ~prims.test & ~is_unseen(prims)
        names = [CLEAN, *cfg.known]
        net = DbomModel(encoder, ctx.classnames, names, cfg, ctx.seed, prims.features[train_rows]).to(ctx.device)
        history = train(net, prims, cfg, ctx.seed)
        timings["train"] = time.perf_counter() - start
        start = time.perf_counter()
        primitives = held_out_rates(net, prims, cfg)
        scores, trig, objects, own = scan_set(net, head, encoder, ctx.data, ctx.device)
        timings["scan"] = time.perf_counter() - start
        flagged = scores > cfg.threshold
        unseen_by_trigger = {names[t]: [ctx.classnames[o] for o in objs] for t, objs in prims.unseen.items()}
        info = {
            "known": list(cfg.known),
            "encoder": "base" if encoder is not ctx.model else "suspect",  # suspect: the scanned set's own model
            "primitives_set": {
                "images": len(clean),
                "samples": len(prims.features),
                "test_samples": int(prims.test.sum()),
                "unseen_pairs": unseen_by_trigger,
            },
            "primitives_test": primitives,
            "history": history,
            "predicted": {
                "trigger": {n: int((trig == i).sum()) for i, n in enumerate(names)},
                "flagged": int(flagged.sum()),
            },
        }
        return DataScanOutcome(
            scores=scores.cpu().float(),
            flagged=flagged.cpu(),
            info=info,
            timings_s={k: round(v, 3) for k, v in timings.items()},
            artifacts=write_predictions(ctx.workdir, scores, trig, objects, own, names, ctx.classnames),
        )


def scan_set(
    net: DbomModel, head: ZeroShotHead, encoder: ClipModel, data: Any, device: torch.device, chunk: int = 4096
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(score, predicted trigger, the frozen model's object, DBOM's object) per sample, a chunk of images
    on the device at a time."""
    n, out = len(data.dataset), []
    for i in range(0, n, chunk):
        emb, blocks = embed(encoder, data.uint8(torch.arange(i, min(i + chunk, n))).to(device))
        scores, trig, own = net.poison_scores(torch.cat([emb, blocks], 1))
        out.append((scores, trig, zero_shot(head, emb), own))
    return tuple(torch.cat(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]


def held_out_rates(net: DbomModel, p: Primitives, cfg: DbomConfig) -> dict[str, Any]:
    """TPR against FPR on the primitives set's test images: seen pairs, unseen pairs, each known trigger."""
    held = p.test
    scores, _, _ = net.poison_scores(p.features[held])
    flagged, trig, unseen = scores > cfg.threshold, p.triggers[held], is_unseen(p)[held]
    clean = trig == 0

    def among(poisoned: Tensor) -> dict[str, Any]:  # those poisoned samples against every clean one
        keep = poisoned | clean
        return rates(flagged[keep], poisoned[keep])

    return {
        "seen": among((trig > 0) & seen_in_training(p)[held]),  # a pair trained on, on new images
        "unseen": among(unseen),
        "per_trigger": {name: among(trig == t) for t, name in enumerate(cfg.known, 1)},
    }


def write_predictions(
    workdir: Any,
    scores: Tensor,
    trig: Tensor,
    objs: Tensor,
    own: Tensor,
    names: list[str],
    classnames: list[str],
) -> dict[str, str]:
    """Per scanned sample: its score, predicted trigger, the frozen model's zero-shot object (how the
    primitives set is labelled) and DBOM's own object prediction."""
    import csv

    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "dbom_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "score", "trigger", "object", "dbom_object"])
        rows = zip(scores.tolist(), trig.tolist(), objs.tolist(), own.tolist(), strict=True)
        for i, (s, t, o, d) in enumerate(rows):
            w.writerow([i, f"{s:.5f}", names[t], classnames[o], classnames[d]])
    return {"predictions": "dbom_predictions.csv"}
