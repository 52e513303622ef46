"""DBOM's primitives set: the defender's clean images as they are and carrying one known trigger,
each labelled (trigger, object) by the frozen model, as the frozen tower's features."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from toolbox.api import ClipModel, ImageData, InputError  # a bad ``known`` shows once the image size is known
from toolbox.primitives.tensors import as_float, seeded_subset
from toolbox.zeroshot import ZeroShotHead


@dataclass
class Primitives:
    """The primitives set: frozen embeddings with their (trigger, object) labels and splits."""

    features: Tensor  # [N, embed + block statistics]: the frozen tower's (``embed``), concatenated
    triggers: Tensor  # [N] index into DbomModel.trigger_names
    objects: Tensor  # [N] class index
    test: Tensor  # [N] bool: an image kept out of training
    unseen: dict[int, list[int]]  # trigger index -> its held-out objects


def block_statistics(output: Any, sequence_first: bool) -> Tensor:
    """[B, 2C]: the max and the mean over positions of one vision block's output (ViT tokens, either
    layout, or a ResNet stage's [B, C, H, W] map)."""
    x = output[0] if isinstance(output, tuple) else output
    if x.dim() == 4:
        x = x.flatten(2).transpose(1, 2)
    elif sequence_first:
        x = x.transpose(0, 1)
    x = x.float()
    return torch.cat([x.amax(1), x.mean(1)], 1)


def embed(model: ClipModel, images: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    """(final embeddings [N, E], every vision block's token max and mean [N, D]) of the frozen tower."""
    blocks = list(model.vision_layers().values())
    seen: dict[int, Tensor] = {}
    hooks = [b.register_forward_hook(lambda _m, _i, out, k=k: seen.__setitem__(k, out)) for k, b in enumerate(blocks)]
    emb, tokens = [], []
    try:
        with torch.no_grad():
            model.encode_image(as_float(images[:1]))  # one image: its batch dimension is the one of size 1
            first = [_out(seen[k]).dim() == 3 and _out(seen[k]).shape[0] != 1 for k in range(len(blocks))]
            for i in range(0, len(images), batch):
                x = as_float(images[i : i + batch])
                emb.append(model.encode_image(x))
                tokens.append(torch.cat([block_statistics(seen[k], first[k]) for k in range(len(blocks))], 1))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(emb), torch.cat(tokens)


def zero_shot(head: ZeroShotHead, feats: Tensor) -> Tensor:
    """The frozen model's zero-shot class of each image from ``embed``'s features (its final embedding
    leads them): ``head.predict`` without encoding the images again."""
    return (feats[:, : head.weights.shape[1]].float() @ head.weights.T).argmax(1)


def _out(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def build_primitives(
    model: ClipModel,
    head: ZeroShotHead,
    clean: Tensor,
    triggers: list[Any],
    unseen_pairs: float,
    test_images: float,
    seed: int,
) -> Primitives:
    """Each clean image as it is and with one known trigger, labelled by the frozen model's zero-shot
    object; a seeded share of each trigger's objects held out of training, and of the images kept to test."""
    rng = random.Random(seed)  # the held-out pairs
    x = as_float(clean)
    device = x.device
    clean_feats = torch.cat(embed(model, clean), 1)
    objects = zero_shot(head, clean_feats)
    # each image twice: as it is, and with one known trigger (seeded, in turn): clean is half the set
    which = (torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) % len(triggers)).to(device)
    stamped = x.clone()
    for t, attack in enumerate(triggers):
        if (which == t).any():
            stamped[which == t] = attack.apply_trigger(x[which == t]).clamp(0, 1)
    feats = [clean_feats, torch.cat(embed(model, stamped), 1)]
    trig = [torch.zeros(len(x), dtype=torch.long, device=device), which + 1]
    classes = sorted(set(objects.tolist()))
    n_unseen = min(int(round(unseen_pairs * len(classes))), len(classes) - 1)  # every trigger keeps a seen object
    # consecutive runs of one shuffled list: an object is held out for one trigger, seen with the others
    rng.shuffle(classes)
    unseen = {
        t: sorted(classes[(i * n_unseen + j) % len(classes)] for j in range(n_unseen))
        for i, t in enumerate(range(1, len(triggers) + 1))
    }
    held = torch.zeros(len(x), dtype=torch.bool, device=device)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))  # apart from the triggers
    n_test = min(max(1, int(test_images * len(x))), len(x) - 2)  # a test image, and two to train on
    held[order[:n_test].to(device)] = True
    return Primitives(torch.cat(feats), torch.cat(trig), torch.cat([objects, objects]), held.repeat(2), unseen)


def seen_in_training(p: Primitives) -> Tensor:
    """[N] bool: the sample's (trigger, object) pair occurs among the training rows."""
    pairs = p.triggers * (int(p.objects.max()) + 1) + p.objects
    return torch.isin(pairs, pairs[~p.test & ~is_unseen(p)])


def is_unseen(p: Primitives) -> Tensor:
    """[N] bool: the sample's (trigger, object) pair is one held out of training."""
    out = torch.zeros(len(p.triggers), dtype=torch.bool, device=p.triggers.device)
    for t, objs in p.unseen.items():
        out |= (p.triggers == t) & torch.isin(p.objects, torch.tensor(objs, dtype=torch.long, device=p.objects.device))
    return out


MIN_IMAGES = 20  # fewer clean images hold no test split and no spread to standardise by


def clean_images(data: ImageData, n: int, seed: int) -> Tensor:
    total = len(data.dataset)
    if min(total, n) < MIN_IMAGES:
        raise ValueError(
            f"DBOM builds its primitives set from at least {MIN_IMAGES} clean images; {data.source} has {total}"
        )
    return data.uint8(seeded_subset(total, n, seed) if total > n else None)


def known_triggers(names: tuple[str, ...], image_size: int) -> list[Any]:
    """Each known family's attack at its defaults; one whose trigger is learned with its backdoor
    (BadCLIP's patch) or that applies no trigger to a plain image is refused with a clear error."""
    from toolbox.lookup import registered

    attacks = registered("attack")
    triggers = [attacks[n]() for n in names]  # names were checked by DbomConfig
    probe = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    for name, attack in zip(names, triggers, strict=True):
        try:
            changed = not torch.equal(attack.apply_trigger(probe.clone()), probe)
        except Exception as err:  # an attack's own reason is the message
            raise InputError(f"known: {name}'s trigger cannot be applied before its backdoor is built ({err})") from err
        if not changed:
            raise InputError(f"known: {name} applies no trigger to an image")
    return triggers
