"""What defenses, attacks, dataset defenses and worlds implement, and the contexts and outcomes they pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .config import Component
from .data import ImageData
from .models import ClipModel

if TYPE_CHECKING:
    from ..null import CleanNull


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
    attack: Attack | None = None
    # clean nulls (toolbox/null.py; --calibration) for calibratable defenses: the one whose key fits is used
    nulls: list[CleanNull] = field(default_factory=list)
    # a clean reference run for a null (toolbox zoo calibrate): measure every statistic, purify nothing
    reference: bool = False
    # clean models of the suspect's architecture (--reference): a trigger that moves them too is natural
    references: list[ClipModel] = field(default_factory=list)


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
    # Where each reconstructed trigger acts ([C or 1, H, W] weights in [0, 1], by the name in
    # ``triggers``): the host saves them (artifacts/trigger_masks.safetensors) for scorers such as the zoo's.
    trigger_masks: dict[str, Tensor] = field(default_factory=dict)


class Defense(Component):
    # True for defenses that fine-tune on image-caption data (the runner then loads --train-data).
    uses_train_data: ClassVar[bool] = False
    # True for defenses whose detection reports statistics and a null key (toolbox/null.py): they take --calibration
    calibratable: ClassVar[bool] = False
    # True for defenses that compare their findings on clean reference models (--reference)
    uses_references: ClassVar[bool] = False

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

    def poison(self, train_data: ImageData, seed: int) -> PoisonedData | None:
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
    # the model as given, before the run's attack (when it attacks): a clean encoder for defenses that
    # learn on top of a frozen one (DBOM); ``model`` itself otherwise
    base_model: ClipModel | None = None
    clean_data: ImageData | None = None  # the defender's own clean images, for defenses that use them


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
    data: dict[str, str]  # classes, templates, clean_data, eval_data, shift_data, retrieval_data, train_data -> sources
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

    def render_scene(
        self, classnames: Sequence[str], label: int, rng: Any, image_size: int, noise_std: float
    ) -> tuple[Tensor, Tensor]:
        """One scene of class ``label``: uint8 [3, H, W] image and bool [H, W] object mask (an oracle's
        segmentation target); ``rng`` is a ``random.Random`` the caller owns. Optional."""
        raise NotImplementedError(f"world {self.name!r} draws no segmentation scenes")

    def can_draw(self, classnames: Sequence[str]) -> list[str]:
        """The names among ``classnames`` this world cannot draw (empty: all drawable)."""
        return list(classnames)


class DatasetDefense(Component):
    """Flags poisoned samples of a training set before anyone trains on it (``toolbox scan-data``)."""

    # True for defenses that learn from the defender's own clean images (scan-data loads --clean-data)
    uses_clean_data: ClassVar[bool] = False
