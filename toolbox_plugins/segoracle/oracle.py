"""Segmentation oracles: the supervisor SegOracle compares the suspect CLIP with.

An oracle maps images in [0,1] to per-pixel logits over background plus the vocabulary classes it
knows (:class:`SegmentationOracle`). Two sources, both ours (the paper's oracle is not public):

- :func:`~toolbox_plugins.segoracle.embedded.embedded_oracle` (its own module): for a registered
  world that draws segmentation scenes, such as the embedded emoji world. A small net trained on
  scenes the oracle draws itself; it never sees the suspect's training data. Cached like an attacked model.
- :func:`torchvision_oracle`: for real users. A torchvision segmentation architecture whose weights
  come from a ``.safetensors`` file (never a pickle) and a class-mapping file that names, per
  output channel, the vocabulary class it segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEED_STRIDE = 1_000_003  # as the world's split streams: seed * stride + offset
ABSENT_LOGIT = -1e4  # logit of an output channel no raw channel feeds (finite: softmax stays NaN-free)
BACKGROUND = "background"  # first line of a class-mapping file
NO_CLASS = "-"  # a mapping-file channel with no vocabulary class: folded into background

TORCHVISION_ARCHS = ("lraspp_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large")
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


# --------------------------------------------------------------------------- a network as an oracle


class NetOracle:
    """A segmentation network as an oracle: inference mode, no gradients, batches as given."""

    def __init__(
        self, net: nn.Module, classnames: list[str], device: torch.device, info: dict[str, Any] | None = None
    ) -> None:
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
        raise ValueError(
            f"oracle class-mapping file not found: {str(path)!r} (one line per output channel: "
            f"'{BACKGROUND}' first, then a class name of the vocabulary or '{NO_CLASS}')"
        )
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:  # a trailing newline is not a channel
        lines.pop()
    if len(lines) < 2 or lines[0] != BACKGROUND:
        raise ValueError(
            f"oracle class-mapping file {p}: the first line must be '{BACKGROUND}' and at least one "
            f"class must follow (got {len(lines)} line(s), first {lines[0] if lines else None!r})"
        )
    if BACKGROUND in lines[1:]:
        raise ValueError(f"oracle class-mapping file {p}: '{BACKGROUND}' may only be the first line")
    vocab = set(vocabulary)
    unknown = [(i + 1, name) for i, name in enumerate(lines) if i > 0 and name not in vocab and name != NO_CLASS]
    if unknown:
        shown = ", ".join(f"line {n}: {name!r}" for n, name in unknown[:5])
        raise ValueError(
            f"oracle class-mapping file {p}: {len(unknown)} name(s) are not in the class vocabulary "
            f"({len(vocabulary)} classes): {shown}; write '{NO_CLASS}' for a channel with no class"
        )
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

    def __init__(
        self, net: nn.Module, class_map: ClassMap, device: torch.device, input_size: int | None, info: dict[str, Any]
    ) -> None:
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
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
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
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    heads = [
        (k, got)
        for k, got, want in mismatched
        if len(got) == len(want) and got[1:] == want[1:] and want[0] == n_channels
    ]
    if heads:
        key, got = heads[0]
        raise ValueError(
            f"oracle checkpoint {checkpoint}: its head has {got[0]} output channels ({key} {got}), "
            f"the class-mapping file names {n_channels} (one line per channel, background first)"
        )
    if mismatched:
        key, got, want = mismatched[0]
        raise ValueError(
            f"oracle checkpoint {checkpoint}: {len(mismatched)} tensor(s) have other shapes than this "
            f"architecture's, e.g. {key} {got} against {want}; is oracle_arch right?"
        )
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"oracle checkpoint {checkpoint} does not match this architecture: {len(missing)} missing "
            f"key(s) (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            f"is oracle_arch right?"
        )


def torchvision_oracle(
    checkpoint: str,
    arch: str,
    classes_file: str,
    vocabulary: Sequence[str],
    device: torch.device,
    input_size: int | None = None,
) -> TorchvisionOracle:
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
    info = {
        "source": str(checkpoint),
        "arch": arch,
        "classes_file": str(classes_file),
        "channels": n_channels,
        "classes_known": len(class_map.classnames),
        "input_size": input_size,
    }
    return TorchvisionOracle(net, class_map, device, input_size, info)
