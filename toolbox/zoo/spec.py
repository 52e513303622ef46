"""A zoo spec (YAML) and the seeded generator that draws its members.

A spec names the population, not the models: how many members, which base presets
(architectures), what fraction is clean, which trigger families with which parameter
ranges, the poison-rate range. The same spec and seed give the same members; ``members:
600`` of the same spec is a cluster job (``--executor slurm``). See ``zoo/dev.yaml``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..cache import config_hash
from ..errors import InputError
from ..evaluation import IMPLANT_MARGIN
from ..intake.files import read_text

CLEAN_FINETUNE, CLEAN_SCRATCH = "clean-finetune", "clean-scratch"


@dataclass(frozen=True)
class Family:
    """One trigger family: a registered attack and the distributions of its parameters."""

    name: str
    attack: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)  # value or {choice|uniform|log_uniform|int: [...]}
    poison: bool = True  # False for attacks without a poison rate (BadEncoder fine-tunes the encoder itself)


DEFAULT_WORLD = "embedded"  # the world plugin a spec builds on unless it names another


@dataclass(frozen=True)
class ZooSpec:
    name: str
    seed: int
    members: int
    presets: tuple[str, ...]
    families: tuple[Family, ...]
    poison_rate: Any  # a value or a distribution
    clean_fraction: float = 1 / 3
    clean_scratch: int = 0  # clean members trained from scratch with another seed (cost: a base build)
    clean_attack: str = "badnet"  # clean fine-tunes use its recipe with poison_rate 0
    targets: tuple[str, ...] | None = None  # None: the base world's whole vocabulary
    implant_margin: float = IMPLANT_MARGIN  # ASR - untriggered rate below this: the attack did not implant
    train_pairs: int | None = (
        None  # each fine-tune sees a seeded subset of this many pairs (a member's cost); None: all
    )
    world: str = DEFAULT_WORLD  # the registered world whose presets are the base models
    source: str = ""

    @property
    def n_clean(self) -> int:
        return math.ceil(self.clean_fraction * self.members)


@dataclass(frozen=True)
class MemberSpec:
    """One member as drawn: what to build. Its ``key`` hashes everything that determines the model."""

    id: str
    index: int
    kind: str  # "backdoored" | "clean-finetune" | "clean-scratch" (what was asked; the label comes after building)
    family: str
    preset: str
    attack: str | None
    params: dict[str, Any]
    seed: int
    train_pairs: int | None = None

    @property
    def key(self) -> str:
        subset = () if self.train_pairs is None else (self.train_pairs,)  # unset: the keys of earlier zoos hold
        return config_hash("zoo-member", self.kind, self.preset, self.attack, self.params, self.seed, *subset)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MemberSpec:
        return cls(
            **{k: doc[k] for k in ("id", "index", "kind", "family", "preset", "attack", "params", "seed")},
            train_pairs=doc.get("train_pairs"),
        )


def draw(value: Any, rng: random.Random) -> Any:
    """A parameter value: as given, or drawn from ``{choice|uniform|log_uniform|int: [...]}``."""
    if not isinstance(value, dict):
        return value
    ((how, args),) = value.items()
    if how == "choice":
        return rng.choice(list(args))
    low, high = args
    if how == "uniform":
        return round(rng.uniform(low, high), 4)
    if how == "log_uniform":
        return round(math.exp(rng.uniform(math.log(low), math.log(high))), 5)
    if how == "int":
        return rng.randint(int(low), int(high))
    raise InputError(f"unknown distribution {how!r}; one of choice, uniform, log_uniform, int")


def _check_distribution(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        return
    if len(value) != 1:
        raise InputError(f"{where}: a distribution is one of choice / uniform / log_uniform / int, got {value}")
    ((how, args),) = value.items()
    if how == "choice":
        if not isinstance(args, list) or not args:
            raise InputError(f"{where}: choice needs a non-empty list")
    elif how in ("uniform", "log_uniform", "int"):
        if (
            not isinstance(args, list)
            or len(args) != 2
            or not all(isinstance(a, (int, float)) for a in args)
            or args[0] > args[1]
            or (how == "log_uniform" and args[0] <= 0)
        ):
            raise InputError(f"{where}: {how} needs [low, high] with low <= high (and low > 0 for log_uniform)")
    else:
        raise InputError(f"{where}: unknown distribution {how!r}; one of choice, uniform, log_uniform, int")


def load_spec(path: str | Path, members: int | None = None) -> ZooSpec:
    """Read and check a spec; ``members`` overrides its size (the same spec at another scale)."""
    path = Path(path)
    text = read_text(path, "zoo spec")  # a regular file of at most 16 MiB: a FIFO would block the read
    try:
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read zoo spec {path}: {err}") from err
    if not isinstance(doc, dict):
        raise InputError(f"zoo spec {path} is not a mapping")
    known = {
        "name",
        "seed",
        "members",
        "presets",
        "families",
        "poison_rate",
        "clean",
        "targets",
        "implant_margin",
        "train_pairs",
        "world",
    }
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"zoo spec {path}: unknown keys {unknown}; known: {sorted(known)}")
    name = doc.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}", name):
        # member ids and folders are NAME-000: YAML reads an unquoted null, yes or 12 as another type
        raise InputError(f"zoo spec {path}: name must be letters, digits, - or _ (quoted in YAML); got {name!r}")
    try:
        families = tuple(_family(name, entry) for name, entry in (doc.get("families") or {}).items())
        clean = doc.get("clean") or {}
        spec = ZooSpec(
            name=str(doc["name"]),
            seed=int(doc["seed"]),
            members=int(members if members is not None else doc["members"]),
            presets=tuple(doc["presets"]),
            families=families,
            poison_rate=doc.get("poison_rate", 0.05),
            clean_fraction=float(clean.get("fraction", 1 / 3)),
            clean_scratch=int(clean.get("scratch", 0)),
            clean_attack=str(clean.get("attack", "badnet")),
            targets=tuple(doc["targets"]) if isinstance(doc.get("targets"), list) else None,
            implant_margin=float(doc.get("implant_margin", IMPLANT_MARGIN)),
            train_pairs=None if doc.get("train_pairs") is None else int(doc["train_pairs"]),
            world=str(doc.get("world", DEFAULT_WORLD)),
            source=str(path),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"zoo spec {path}: {type(err).__name__}: {err}") from err
    if spec.members < 1 or not spec.presets or not spec.families:
        raise InputError(f"zoo spec {path}: needs members >= 1, at least one preset and one family")
    if spec.train_pairs is not None and spec.train_pairs < 1:
        raise InputError(f"zoo spec {path}: train_pairs must be a positive count (or absent: all pairs)")
    if not 0 <= spec.clean_fraction <= 1 or not 0 <= spec.clean_scratch <= spec.n_clean:
        raise InputError(f"zoo spec {path}: clean.fraction must be in [0, 1] and clean.scratch <= the clean count")
    _check_distribution(spec.poison_rate, f"{path}: poison_rate")
    for fam in spec.families:
        for key, value in fam.params.items():
            _check_distribution(value, f"{path}: families.{fam.name}.{key}")
    return spec


def _family(name: str, entry: Any) -> Family:
    entry = dict(entry or {})
    params = entry.pop("params", None)
    attack, weight, poison = entry.pop("attack", name), float(entry.pop("weight", 1.0)), entry.pop("poison", True)
    if params is None:  # the short form: the entry itself holds the parameters
        params, entry = entry, {}
    return Family(name=str(name), attack=str(attack), weight=weight, params=dict(params), poison=bool(poison))


def draw_members(
    spec: ZooSpec, vocabulary: list[str], seeded: Callable[[str], bool] = lambda attack: True
) -> list[MemberSpec]:
    """The spec's members, the same for the same spec (seed included) and vocabulary.

    Exactly ``n_clean`` members are clean (the first ``clean_scratch`` of them from scratch);
    every family gets a member before any gets a second, then families are drawn by weight.
    ``seeded(attack)`` says whether an attack's config has a ``trigger_seed`` to draw.
    """
    rng = random.Random(spec.seed)
    targets = list(spec.targets or vocabulary)
    kinds = ["clean"] * spec.n_clean + ["backdoored"] * (spec.members - spec.n_clean)
    rng.shuffle(kinds)
    order = list(spec.families)
    rng.shuffle(order)
    out: list[MemberSpec] = []
    n_backdoored = n_scratch = 0
    for index, kind in enumerate(kinds):
        preset = spec.presets[index % len(spec.presets)] if len(spec.presets) > 1 else spec.presets[0]
        seed = rng.randrange(1_000_000)
        if kind == "clean" and n_scratch < spec.clean_scratch:
            n_scratch += 1
            member = MemberSpec("", index, CLEAN_SCRATCH, CLEAN_SCRATCH, preset, None, {}, seed)
        elif kind == "clean":
            params = {"target": rng.choice(targets), "poison_rate": 0.0}
            member = MemberSpec("", index, CLEAN_FINETUNE, CLEAN_FINETUNE, preset, spec.clean_attack, params, seed)
        else:
            fam = (
                order[n_backdoored]
                if n_backdoored < len(order)
                else rng.choices(order, weights=[f.weight for f in order])[0]
            )
            n_backdoored += 1
            params = {"target": rng.choice(targets)}
            if fam.poison:
                params["poison_rate"] = draw(spec.poison_rate, rng)
            params.update({k: draw(v, rng) for k, v in sorted(fam.params.items())})
            trigger_seed = rng.randrange(1_000_000)  # drawn whether or not the attack takes one
            if seeded(fam.attack):
                params.setdefault("trigger_seed", trigger_seed)
            member = MemberSpec("", index, "backdoored", fam.name, preset, fam.attack, params, seed)
        # the id is opaque: the defense sees paths under it, and must learn nothing of the family from them
        pairs = None if member.kind == CLEAN_SCRATCH else spec.train_pairs  # a scratch member is a base build
        out.append(replace(member, id=f"{spec.name}-{index:03d}", train_pairs=pairs))
    return out
