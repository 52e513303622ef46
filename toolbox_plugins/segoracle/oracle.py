"""Segmentation oracles: the supervisor SegOracle compares the suspect CLIP with.

An oracle maps images in [0,1] to per-pixel logits over background plus the vocabulary classes it
knows (:class:`SegmentationOracle`). Two sources, both ours (the paper's oracle is not public):

- :func:`embedded_oracle`: for the embedded procedural world. A small fully-convolutional net
  (:class:`TinySegNet`) trained on scenes the oracle draws itself, from its own seed stream, with
  the world's drawing code and the object masks it returns. It never sees the suspect's training
  data, so a poisoned sample cannot teach it the trigger. Cached like an attacked model.
- :func:`torchvision_oracle`: for real users. A torchvision segmentation architecture whose weights
  come from a ``.safetensors`` file (never a pickle) and a class-mapping file that names, per
  output channel, the vocabulary class it segments.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox import atomic
from toolbox.cache import cache_root, config_hash, entry_lock
from toolbox.progress import progress

ORACLE_SEED_OFFSET = 5  # the embedded oracle's scenes: the world's splits use offsets 1-4 (world.py)
SEED_STRIDE = 1_000_003  # as the world's split streams: seed * stride + offset
ORACLE_FORMAT = 1  # bump when the embedded oracle's recipe changes, so cached oracles rebuild
ABSENT_LOGIT = -1e4  # logit of an output channel no raw channel feeds (finite: softmax stays NaN-free)
BACKGROUND = "background"  # first line of a class-mapping file
NO_CLASS = "-"  # a mapping-file channel with no vocabulary class: folded into background

TORCHVISION_ARCHS = ("lraspp_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50",
                     "deeplabv3_mobilenet_v3_large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's segmentation models expect ImageNet-normalised input
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class SegmentationOracle(Protocol):
    """Per-pixel class logits for images in [0,1].

    ``classnames[i]`` (a vocabulary name) is output channel ``i + 1``; channel 0 is background.
    """

    classnames: list[str]

    def segment(self, images: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] -> logits [B, 1 + len(classnames), H, W]."""
        ...


# --------------------------------------------------------------------------- reading an oracle's output


@dataclass
class OracleReading:
    """Per image: the oracle's class (index into its ``classnames``), its confidence, and where
    its foreground is."""

    label: Tensor  # [N] long
    confidence: Tensor  # [N] float: the label's share of the foreground probability mass
    foreground: Tensor  # [N,H,W] bool: pixels whose argmax is not background


def read_logits(logits: Tensor) -> OracleReading:
    """The oracle's image-level class: argmax of the softmax mass each class holds over the foreground
    pixels (ours: one object per image, as in the world and the classification datasets CLIP is
    evaluated on). An image without foreground gets label -1 and confidence 0."""
    probs = logits.float().softmax(1)
    foreground = logits.argmax(1) != 0
    mass = (probs[:, 1:] * foreground[:, None]).sum((2, 3))  # [B, classes]
    total = mass.sum(1)
    share, label = mass.max(1)
    confidence = torch.where(total > 0, share / total.clamp_min(1e-12), torch.zeros_like(share))
    label = torch.where(foreground.flatten(1).any(1), label, torch.full_like(label, -1))
    return OracleReading(label=label, confidence=confidence, foreground=foreground)


# --------------------------------------------------------------------------- the embedded oracle


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinySegNet(nn.Module):
    """A small fully-convolutional segmenter for 32-px images (ours).

    Two conv-BN-ReLU stages at full resolution keep the object's outline; a pooled stage (1/2, then
    1/4 resolution) sees the whole object, gated by a global image-level context as LR-ASPP does (a
    32-px object is wider than a few convolutions reach); it is upsampled, concatenated with the
    full-resolution features (skip) and classified per pixel by a 1x1 head.
    """

    def __init__(self, n_outputs: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.full = nn.Sequential(_conv_bn_relu(3, w), _conv_bn_relu(w, w))
        self.pooled = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w),
                                    nn.MaxPool2d(2), _conv_bn_relu(2 * w, 4 * w))
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * w, 4 * w, 1), nn.Sigmoid())
        self.head = nn.Conv2d(w + 4 * w, n_outputs, 1)

    def forward(self, images: Tensor) -> Tensor:
        skip = self.full(images)
        deep = self.pooled(skip)
        deep = deep * self.context(deep)
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([skip, up], 1))


class NetOracle:
    """A segmentation network as an oracle: inference mode, no gradients, batches as given."""

    def __init__(self, net: nn.Module, classnames: list[str], device: torch.device,
                 info: dict[str, Any] | None = None) -> None:
        self.net = net.to(device).eval()
        self.classnames = list(classnames)
        self.device = device
        self.info: dict[str, Any] = dict(info or {})  # recorded in the result's detection.oracle

    def prepare(self, images: Tensor) -> Tensor:
        return images

    def raw_logits(self, images: Tensor) -> Tensor:
        return self.net(images)

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        x = images.to(self.device).float()
        return self.raw_logits(self.prepare(x)).float()


@dataclass(frozen=True)
class EmbeddedOracleRecipe:
    """How the embedded oracle is trained (every value ours; SegOracleConfig sets the first two)."""

    n_scenes: int = 8000  # balanced over the classes
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3  # Adam
    width: int = 32  # TinySegNet's
    holdout_fraction: float = 0.1  # of the scenes, never trained on: the recorded accuracies
    noise_std: float = 6.0  # the world's default pixel noise (WorldConfig.noise_std)


@dataclass
class Scenes:
    images: Tensor  # uint8 [N,3,H,W]
    targets: Tensor  # long [N,H,W]: label + 1 inside the object's mask, else 0
    labels: Tensor  # long [N]


def draw_scenes(classnames: list[str], image_size: int, n: int, seed: int, noise_std: float) -> Scenes:
    """``n`` scenes with balanced labels from the oracle's own stream (the world's drawing code)."""
    from toolbox_plugins.world.draw import render  # the world's drawings; imported here: only this oracle needs them

    rng = random.Random(seed * SEED_STRIDE + ORACLE_SEED_OFFSET)
    labels = [i % len(classnames) for i in range(n)]
    rng.shuffle(labels)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    targets = torch.zeros(n, image_size, image_size, dtype=torch.long)
    for i, y in enumerate(progress(labels, desc="oracle: drawing scenes", unit="img")):
        scene = render(classnames, y, rng, image_size, noise_std=noise_std)
        images[i] = torch.from_numpy(np.asarray(scene.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        assert scene.mask is not None, "render() returns the object's mask"
        targets[i][torch.from_numpy(scene.mask)] = y + 1
    return Scenes(images=images, targets=targets, labels=torch.tensor(labels))


def train_segnet(net: TinySegNet, scenes: Scenes, recipe: EmbeddedOracleRecipe, seed: int,
                 device: torch.device) -> list[dict[str, float]]:
    """Per-pixel cross-entropy, Adam, seeded batches; returns per-epoch mean losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    n = len(scenes.images)
    steps = max(1, n // recipe.batch_size)
    history: list[dict[str, float]] = []
    net.to(device).train()
    bar = progress(total=steps * recipe.epochs, desc="oracle: training", unit="step")
    for epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for b in range(steps):
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x = scenes.images[idx].to(device).float().div_(255.0)
            loss = F.cross_entropy(net(x), scenes.targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
        history.append({"epoch": epoch + 1, "loss": round(running / steps, 5)})
    bar.close()
    net.eval()
    return history


@torch.no_grad()
def held_out_accuracy(oracle: NetOracle, scenes: Scenes, batch_size: int = 256) -> dict[str, float]:
    """Pixel accuracy (background included) and image accuracy (:func:`read_logits`'s label)."""
    pixels = images = 0
    for start in range(0, len(scenes.images), batch_size):
        x = scenes.images[start:start + batch_size].float().div_(255.0)
        logits = oracle.segment(x).cpu()
        pixels += int((logits.argmax(1) == scenes.targets[start:start + batch_size]).sum())
        images += int((read_logits(logits).label == scenes.labels[start:start + batch_size]).sum())
    n = len(scenes.images)
    return {"pixel_accuracy": round(pixels / (n * scenes.targets[0].numel()), 4),
            "image_accuracy": round(images / n, 4)}


def embedded_oracle(classnames: Sequence[str], image_size: int, device: torch.device, seed: int = 0, *,
                    recipe: EmbeddedOracleRecipe = EmbeddedOracleRecipe()) -> NetOracle:
    """The embedded world's oracle: from the cache, or drawn, trained and cached now."""
    from toolbox_plugins.world.draw import DRAWERS

    classnames = list(classnames)
    missing = [c for c in classnames if c not in DRAWERS]
    if missing:
        raise ValueError(f"the embedded oracle draws the procedural world's classes; it cannot draw {missing[:5]} "
                         f"(pass -p oracle=CHECKPOINT.safetensors -p oracle_classes=FILE for another vocabulary)")
    key_parts: tuple[Any, ...] = ({"oracle": "tinysegnet", "format": ORACLE_FORMAT, "classnames": classnames,
                                   "image_size": image_size, "seed": seed, "recipe": asdict(recipe)},)
    if device.type != "cpu":  # another device trains to other numbers; CPU keys stay as they are
        key_parts += ({"device": device.type},)
    entry = cache_root() / "oracles" / config_hash(*key_parts)
    with entry_lock(entry):
        if not (entry / "meta.json").exists():
            build_embedded(classnames, image_size, device, seed, recipe, entry)
    return load_embedded(entry, device)


def build_embedded(classnames: list[str], image_size: int, device: torch.device, seed: int,
                   recipe: EmbeddedOracleRecipe, entry: Path) -> None:
    """Draw, train, measure on the held-out slice, and write ``entry`` atomically."""
    import safetensors.torch

    start = time.perf_counter()
    n_holdout = max(1, int(round(recipe.n_scenes * recipe.holdout_fraction)))
    scenes = draw_scenes(classnames, image_size, recipe.n_scenes, seed, recipe.noise_std)
    train = Scenes(scenes.images[n_holdout:], scenes.targets[n_holdout:], scenes.labels[n_holdout:])
    holdout = Scenes(scenes.images[:n_holdout], scenes.targets[:n_holdout], scenes.labels[:n_holdout])
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without moving the run's global stream
        torch.manual_seed(seed)
        net = TinySegNet(1 + len(classnames), recipe.width)
    history = train_segnet(net, train, recipe, seed, device)
    accuracy = held_out_accuracy(NetOracle(net, classnames, device), holdout)
    meta = {"source": "embedded", "classnames": classnames, "image_size": image_size, "seed": seed,
            "recipe": asdict(recipe), "n_train": len(train.images), "n_holdout": n_holdout, **accuracy,
            "history": history, "train_seconds": round(time.perf_counter() - start, 1)}
    with atomic.atomic_dir(entry) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / "oracle.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_embedded(entry: Path, device: torch.device) -> NetOracle:
    import safetensors.torch

    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    with torch.random.fork_rng(devices=[]):  # the throwaway initial weights must not move the run's stream
        net = TinySegNet(1 + len(meta["classnames"]), meta["recipe"]["width"])
    net.load_state_dict(safetensors.torch.load_file(str(entry / "oracle.safetensors")))
    info = {"source": "embedded", "cache_key": entry.name, "pixel_accuracy": meta["pixel_accuracy"],
            "image_accuracy": meta["image_accuracy"], "n_train": meta["n_train"], "n_holdout": meta["n_holdout"]}
    return NetOracle(net, meta["classnames"], device, info)


# --------------------------------------------------------------------------- a torchvision checkpoint


@dataclass
class ClassMap:
    """A class-mapping file read against a vocabulary: the oracle's classes and, per raw output
    channel, the oracle output channel it feeds (0: background)."""

    classnames: list[str]
    channel_to_output: Tensor  # [K] long
    lines: list[str] = field(default_factory=list)


def read_class_map(path: str | Path, vocabulary: Sequence[str]) -> ClassMap:
    """One line per output channel: ``background`` first, then a vocabulary name or ``-``."""
    p = Path(path)
    if not str(path) or not p.is_file():
        raise ValueError(f"oracle class-mapping file not found: {str(path)!r} (one line per output channel: "
                         f"'{BACKGROUND}' first, then a class name of the vocabulary or '{NO_CLASS}')")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:  # a trailing newline is not a channel
        lines.pop()
    if len(lines) < 2 or lines[0] != BACKGROUND:
        raise ValueError(f"oracle class-mapping file {p}: the first line must be '{BACKGROUND}' and at least one "
                         f"class must follow (got {len(lines)} line(s), first {lines[0] if lines else None!r})")
    if BACKGROUND in lines[1:]:
        raise ValueError(f"oracle class-mapping file {p}: '{BACKGROUND}' may only be the first line")
    vocab = set(vocabulary)
    unknown = [(i + 1, name) for i, name in enumerate(lines) if i > 0 and name not in vocab and name != NO_CLASS]
    if unknown:
        shown = ", ".join(f"line {n}: {name!r}" for n, name in unknown[:5])
        raise ValueError(f"oracle class-mapping file {p}: {len(unknown)} name(s) are not in the class vocabulary "
                         f"({len(vocabulary)} classes): {shown}; write '{NO_CLASS}' for a channel with no class")
    classnames = list(dict.fromkeys(name for name in lines[1:] if name != NO_CLASS))
    if not classnames:
        raise ValueError(f"oracle class-mapping file {p} names no vocabulary class (every channel is '{NO_CLASS}')")
    outputs = [0] + [0 if name == NO_CLASS else 1 + classnames.index(name) for name in lines[1:]]
    return ClassMap(classnames=classnames, channel_to_output=torch.tensor(outputs), lines=lines)


def fold_channels(logits: Tensor, channel_to_output: Tensor, n_outputs: int) -> Tensor:
    """[B,K,H,W] raw logits -> [B,n_outputs,H,W]: each output is the log-sum-exp of the raw channels
    that feed it (their softmax probabilities add up); an output nothing feeds gets ABSENT_LOGIT."""
    out = logits.new_full((logits.shape[0], n_outputs, *logits.shape[2:]), ABSENT_LOGIT)
    for j in range(n_outputs):
        fed = (channel_to_output == j).nonzero().flatten().to(logits.device)
        if len(fed):
            out[:, j] = logits.index_select(1, fed).logsumexp(1)
    return out


class TorchvisionOracle(NetOracle):
    """A torchvision segmentation model: ImageNet normalisation and optional resizing inside, its
    ``out`` head only, its channels folded onto the oracle's classes."""

    def __init__(self, net: nn.Module, class_map: ClassMap, device: torch.device, input_size: int | None,
                 info: dict[str, Any]) -> None:
        super().__init__(net, class_map.classnames, device, info)
        self.class_map = class_map
        self.input_size = input_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def prepare(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def raw_logits(self, images: Tensor) -> Tensor:
        size = images.shape[-2:]
        if self.input_size:  # segment at the model's working size, read back at the image's
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        logits = self.net(images)["out"]
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return fold_channels(logits, self.class_map.channel_to_output, 1 + len(self.classnames))


def build_torchvision_net(arch: str, n_channels: int, aux: bool) -> nn.Module:
    """An untrained torchvision segmentation model (no download: weights come from the checkpoint)."""
    from toolbox.compat import import_torchvision

    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"oracle_arch {arch!r} is not supported; one of: {', '.join(TORCHVISION_ARCHS)}")
    segmentation = import_torchvision().models.segmentation
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": n_channels}
    if aux:  # fcn / deeplabv3 checkpoints may carry the auxiliary head they were trained with
        kwargs["aux_loss"] = True
    return getattr(segmentation, arch)(**kwargs)


def check_state_shapes(net: nn.Module, state: dict[str, Tensor], n_channels: int, checkpoint: str) -> None:
    """Clear errors for a checkpoint that does not fit: a head with another channel count than the
    mapping file names, or keys of another architecture."""
    own = net.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    heads = [(k, got) for k, got, want in mismatched if len(got) == len(want) and got[1:] == want[1:]
             and want[0] == n_channels]
    if heads:
        key, got = heads[0]
        raise ValueError(f"oracle checkpoint {checkpoint}: its head has {got[0]} output channels ({key} {got}), "
                         f"the class-mapping file names {n_channels} (one line per channel, background first)")
    if mismatched:
        key, got, want = mismatched[0]
        raise ValueError(f"oracle checkpoint {checkpoint}: {len(mismatched)} tensor(s) have other shapes than this "
                         f"architecture's, e.g. {key} {got} against {want}; is oracle_arch right?")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"oracle checkpoint {checkpoint} does not match this architecture: {len(missing)} missing "
                         f"key(s) (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                         f"is oracle_arch right?")


def torchvision_oracle(checkpoint: str, arch: str, classes_file: str, vocabulary: Sequence[str],
                       device: torch.device, input_size: int | None = None) -> TorchvisionOracle:
    """A torchvision segmentation model read from ``checkpoint`` (safetensors only, strict) whose
    output channels ``classes_file`` maps onto ``vocabulary``."""
    import safetensors.torch

    class_map = read_class_map(classes_file, vocabulary)
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"oracle checkpoint not found: {checkpoint}")
    if path.suffix != ".safetensors":
        raise ValueError(f"oracle checkpoint {checkpoint}: only .safetensors files are read (no pickles)")
    state = safetensors.torch.load_file(str(path), device="cpu")
    n_channels = len(class_map.lines)
    net = build_torchvision_net(arch, n_channels, aux=any(k.startswith("aux_classifier.") for k in state))
    check_state_shapes(net, state, n_channels, checkpoint)
    net.load_state_dict(state, strict=True)
    info = {"source": str(checkpoint), "arch": arch, "classes_file": str(classes_file), "channels": n_channels,
            "classes_known": len(class_map.classnames), "input_size": input_size}
    return TorchvisionOracle(net, class_map, device, input_size, info)
