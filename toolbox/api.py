"""Interfaces a plugin implements or receives. Small on purpose.

Every registered class is a :class:`Component`: a ``name``, a one-line ``summary``,
a ``reference`` (paper or source), and a ``Config`` dataclass whose field defaults
are the documented parameters (listed in ``registry.yaml``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

Kind = Literal["defense", "attack", "metric", "model_adapter", "dataset_adapter", "dataset_defense", "world",
               "detector"]
KINDS: tuple[Kind, ...] = ("defense", "attack", "metric", "model_adapter", "dataset_adapter", "dataset_defense",
                          "world", "detector")
HOOK_FOR_KIND: dict[Kind, str] = {
    "defense": "register_defenses",
    "dataset_defense": "register_dataset_defenses",
    "attack": "register_attacks",
    "metric": "register_metrics",
    "model_adapter": "register_model_adapters",
    "dataset_adapter": "register_dataset_adapters",
    "world": "register_worlds",
    "detector": "register_detectors",
}


@dataclass(frozen=True)
class NoConfig:
    """Config of a component without parameters."""


class Component:
    """Base of everything a plugin registers."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()


def config_defaults(cls: type) -> dict[str, Any]:
    """Parameter defaults of a component class, as plain JSON-able values."""
    cfg = getattr(cls, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return {}
    return _jsonable(dataclasses.asdict(cfg()))


def config_values(config: Any) -> dict[str, Any]:
    """A config instance as plain JSON-able values (recorded in results)."""
    if config is None or not dataclasses.is_dataclass(config):
        return {}
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def build_config(cls: type, overrides: Mapping[str, str] | None = None) -> Any:
    """Instantiate ``cls.Config`` with ``KEY=VALUE`` strings from the command line.

    A class may provide ``configure(overrides)`` (e.g. to start from a named profile);
    otherwise the defaults of ``cls.Config`` are overridden field by field.
    """
    configure = getattr(cls, "configure", None)
    if callable(configure):
        config = configure(dict(overrides or {}))
    else:
        config = apply_overrides(getattr(cls, "Config", NoConfig)(), overrides or {},
                                 getattr(cls, "name", cls.__name__))
    check_config(config, getattr(cls, "name", ""))
    return config


def check_config(config: Any, owner: str = "") -> None:
    """Refuse nonsense that would otherwise run and write a model: a NaN or infinite number
    anywhere, or a negative value where the default is a count, size, rate or weight (>= 0).
    A field whose sign means something (an angle) says so: ``field(metadata={"signed": True})``."""
    if not dataclasses.is_dataclass(config):
        return
    try:
        default = type(config)()
    except TypeError:  # a config with required fields has no default to compare with
        default = None
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{owner}.{f.name}" if owner else f.name
        if dataclasses.is_dataclass(value):
            check_config(value, name)
            continue
        if isinstance(value, Mapping):  # named groups of settings (e.g. one per detector)
            for key, inner in value.items():
                check_config(inner, f"{name}.{key}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        ref = None if f.metadata.get("signed") else getattr(default, f.name, None)
        if isinstance(ref, (int, float)) and not isinstance(ref, bool) and ref >= 0 and value < 0:
            raise ValueError(f"{name} must be >= 0 (its default {ref} is a count, size, rate or weight), "
                             f"got {value}")


def apply_overrides(config: Any, overrides: Mapping[str, str], owner: str = "") -> Any:
    """A copy of dataclass ``config`` with ``KEY=VALUE`` strings applied; ``stage.key`` reaches
    into nested dataclasses. Values are parsed by the annotated type; unknown keys are errors
    that list the known ones."""
    if not overrides:
        return config
    cfg_cls = type(config)
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    nested: dict[str, dict[str, str]] = {}
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            known = ", ".join(sorted(fields)) or "(none)"
            raise ValueError(f"{owner or cfg_cls.__name__} has no parameter {head!r}; known: {known}")
        if rest:
            nested.setdefault(head, {})[rest] = raw
        elif isinstance(getattr(config, head), Mapping):
            raise ValueError(f"{owner or cfg_cls.__name__}.{head} holds named groups of settings; set one, "
                             f"e.g. {head}.NAME.KEY=... (names: {', '.join(getattr(config, head)) or '(none)'})")
        elif dataclasses.is_dataclass(getattr(config, head)):
            raise ValueError(f"{owner or cfg_cls.__name__}.{head} is a group of settings; set one of them, "
                             f"e.g. {head}.{dataclasses.fields(getattr(config, head))[0].name}=...")
        else:
            changes[head] = _parse_value(raw, hints.get(head, str))
    for head, sub in nested.items():
        inner = changes.get(head, getattr(config, head))
        if isinstance(inner, Mapping):  # named groups: ``head.name.key``
            changes[head] = _override_groups(inner, sub, f"{owner}.{head}" if owner else head)
            continue
        if not dataclasses.is_dataclass(inner):
            raise ValueError(f"{owner or cfg_cls.__name__}.{head} has no sub-parameters")
        changes[head] = apply_overrides(inner, sub, f"{owner}.{head}" if owner else head)
    return dataclasses.replace(config, **changes)


def _override_groups(groups: Mapping[str, Any], overrides: Mapping[str, str], owner: str) -> dict[str, Any]:
    """A mapping of named dataclass groups with ``name.key`` overrides applied to each."""
    by_group: dict[str, dict[str, str]] = {}
    for key, raw in overrides.items():
        name, _, rest = key.partition(".")
        if name not in groups or not rest:
            raise ValueError(f"{owner} has no group {name!r} to set {key!r} in; known: {', '.join(groups) or '(none)'}")
        by_group.setdefault(name, {})[rest] = raw
    return {name: apply_overrides(group, by_group.get(name, {}), f"{owner}.{name}") for name, group in groups.items()}


def _parse_value(raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if hint in (int, float, str):
        return hint(raw)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [_parse_value(p.strip(), inner) for p in raw.split(",") if p.strip()]
        return tuple(items) if origin is tuple else items
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"{raw!r} is not one of {args}")
        return raw
    return raw


# --------------------------------------------------------------------------- models


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

    def clone(self) -> "ClipModel":
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
    # options: clean_data, eval_data, retrieval_data, classes.
    data_defaults: dict[str, str] = field(default_factory=dict)


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


# --------------------------------------------------------------------------- data

DataKind = Literal["labelled", "captioned", "unlabelled"]


@dataclass
class ImageData:
    """A dataset of [0,1] image tensors, with what it is labelled by.

    ``labelled``: items are ``(image, class_index)`` and ``classnames`` is set.
    ``captioned``: items are ``(image, index)``; ``captions[index]`` lists its captions.
    ``unlabelled``: items are ``(image, index)``.
    """

    dataset: Dataset
    kind: DataKind
    source: str
    classnames: list[str] | None = None
    captions: list[list[str]] | None = None
    skipped: list[str] = field(default_factory=list)

    def uint8(self, indices: Tensor | None = None) -> Tensor:
        """The images (all, or those at ``indices``) as uint8 [N,3,H,W]: the dataset's in-memory
        ``cache`` when it has one; otherwise only those images are decoded."""
        cache = getattr(self.dataset, "cache", None)
        if cache is not None:
            return cache if indices is None else cache[indices]
        order = range(len(self.dataset)) if indices is None else indices.tolist()
        return torch.stack([(self.dataset[i][0] * 255).round().to(torch.uint8) for i in order])


class InMemoryImages(Dataset):
    """uint8 images [N,3,H,W] held in memory; items are ``(image in [0,1], index)``."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"InMemoryImages holds uint8 [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        self.cache = images

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.cache[i].float().div_(255.0), i


class DatasetAdapter(Component):
    """Reads one dataset format into :class:`ImageData`."""

    kind: ClassVar[DataKind]

    def detect(self, source: str) -> bool:
        raise NotImplementedError

    def load(
        self,
        source: str,
        image_size: int,
        *,
        classnames: Sequence[str] | None = None,
        skip_unreadable: bool = False,
    ) -> ImageData:
        raise NotImplementedError


# --------------------------------------------------------------------------- defenses / attacks


@dataclass
class DefenseContext:
    """Everything a defense may use. Blind defenses ignore ``attack``."""

    model: ClipModel
    clean_data: ImageData
    classnames: list[str]
    templates: list[str]
    seed: int
    device: torch.device
    workdir: Path
    train_data: ImageData | None = None  # image-caption data, for fine-tuning baselines
    attack: "Attack | None" = None


@dataclass
class DefenseOutcome:
    model: ClipModel
    detection: dict[str, Any] | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to workdir
    timings_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # Triggers the defense reconstructed (e.g. "inverted"), with the target they aim at: the host
    # reports ASR with each, before and after, labelled by name, beside the real trigger's.
    triggers: dict[str, Any] = field(default_factory=dict)
    target: str | None = None


class Defense(Component):
    # True for defenses that fine-tune on image-caption data (the runner then loads --train-data).
    uses_train_data: ClassVar[bool] = False

    def defend(self, ctx: DefenseContext) -> DefenseOutcome:
        raise NotImplementedError


@dataclass
class AttackContext:
    model: ClipModel
    train_data: ImageData
    classnames: list[str]
    seed: int
    device: torch.device
    cache_dir: Path


class Attack(Component):
    """A trigger in [0,1] pixel space plus a recipe that backdoors a clean model.

    The host caches backdoored models; a trigger that is learned during ``backdoor``
    (BadCLIP's patch) is cached with it through ``trigger_state``/``load_trigger_state``.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.info: dict[str, Any] = {}  # what the recipe did (poisoned count, losses), recorded in results

    def target_label(self) -> str:
        return str(getattr(self.config, "target", ""))

    def apply_trigger(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def backdoor(self, ctx: AttackContext) -> ClipModel:
        raise NotImplementedError

    def trigger_state(self) -> dict[str, Tensor]:
        return {}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        """Restore a learned trigger saved by :meth:`trigger_state`."""

    def poison(self, train_data: ImageData, seed: int) -> "PoisonedData | None":
        """The poisoned training set this attack makes from ``train_data`` with ``seed`` (the set its
        ``backdoor`` trains on), or None for an attack that poisons no dataset (it edits weights)."""
        return None

    def train_on(self, model: ClipModel, data: ImageData, seed: int) -> ClipModel:
        """A copy of ``model`` fine-tuned on ``data`` with this attack's own training recipe: what the
        victim does with a training set (after a dataset defense, the purified one)."""
        raise NotImplementedError(f"attack {getattr(self, 'name', '?')!r} has no data-training recipe")


@dataclass
class PoisonedData:
    """A training set after an attack's poisoning, with the ground truth of which samples it poisoned."""

    data: ImageData  # captioned; images and captions as the victim trains on them
    poisoned: Tensor  # indices into ``data`` of the poisoned samples, sorted


# --------------------------------------------------------------------------- dataset defenses


@dataclass
class DataScanContext:
    """What a dataset defense may use: the training set under suspicion and a model, either the
    suspect or one trained on that set."""

    data: ImageData
    model: ClipModel
    classnames: list[str]
    templates: list[str]
    seed: int
    device: torch.device
    workdir: Path


@dataclass
class DataScanOutcome:
    scores: Tensor  # [N] float, higher: more likely poisoned
    flagged: Tensor  # [N] bool, the samples to remove
    info: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to workdir


@dataclass
class BuiltWorld:
    """A world preset, built: its clean reference model and the data it was trained and measured on."""

    preset: str
    model_source: str  # what ``--model`` takes (a model adapter recognises it)
    data: dict[str, str]  # classes, templates, clean_data, eval_data, retrieval_data, train_data -> sources
    info: dict[str, Any] = field(default_factory=dict)  # how it was built (recorded by callers)


class World(Component):
    """A world: named presets, each a clean model trained on data the world makes. The embedded
    default is one; ``toolbox zoo build`` makes its members from one, so a user's world can build a zoo."""

    presets: ClassVar[tuple[str, ...]] = ()

    def build(self, preset: str, train_seed: int | None = None) -> BuiltWorld:
        """The preset, from the cache or built now; ``train_seed`` trains its model with another seed."""
        raise NotImplementedError

    def model_key(self, preset: str, train_seed: int | None = None) -> str:
        """Everything the preset's model depends on, hashed (a zoo member's key holds it)."""
        raise NotImplementedError

    def render_scene(self, classnames: Sequence[str], label: int, rng: Any, image_size: int,
                     noise_std: float) -> tuple[Tensor, Tensor]:
        """One scene of class ``label``: uint8 [3, H, W] image and bool [H, W] object mask (an oracle's
        segmentation target); ``rng`` is a ``random.Random`` the caller owns. Optional."""
        raise NotImplementedError(f"world {self.name!r} draws no segmentation scenes")

    def can_draw(self, classnames: Sequence[str]) -> list[str]:
        """The names among ``classnames`` this world cannot draw (empty: all drawable)."""
        return list(classnames)


class DatasetDefense(Component):
    """Flags poisoned samples of a training set before anyone trains on it (``toolbox scan-data``)."""

    def scan(self, ctx: DataScanContext) -> DataScanOutcome:
        raise NotImplementedError
