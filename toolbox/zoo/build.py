"""``toolbox zoo build``: every member of a spec as a model in a real format plus its ground truth.

A member is one fine-tune of a shared clean base (the attack's own recipe; clean members the
same recipe with no poison), or, for a few clean members, a base trained from scratch with
another seed. Each is written to ``ZOO/members/ID/``: ``model/`` (open_clip local-dir),
``trigger.safetensors`` (a learned trigger, where there is one) and ``member.json`` (what was
asked, the label, CA / ASR / untriggered target rate measured on the world's eval split, the
cost). Members are cells keyed by their config (:mod:`toolbox.grid`): a rebuilt zoo skips what
exists, and attacked models are shared with ``toolbox run`` through the attack cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch.utils.data import Dataset

from .. import atomic, outputs
from ..api import AttackContext, BuiltWorld, ImageData, build_config, config_values
from ..cache import config_hash, module_fingerprint, recorded_code
from ..commit import read_json
from ..evaluation import EvalInputs, MetricConfig, evaluate
from ..grid import Cell, GridConfig, run_grid
from ..plugins import get_host
from ..runner import backdoor_cached, load_data, load_model, memoised_data, read_lines
from .spec import CLEAN_SCRATCH, DEFAULT_WORLD, MemberSpec, ZooSpec, draw_members

log = logging.getLogger(__name__)

MEMBER_JSON, MANIFEST = "member.json", "manifest.json"
ZOO_OUTPUTS = ("members", "spec.json", MANIFEST)  # what `zoo build` writes in its --out


def world_plugin(name: str = DEFAULT_WORLD) -> Any:
    """The registered world called ``name``, instantiated."""
    return get_host().build_registry(quiet=True).get("world", name).obj()


def world_of(preset: str, train_seed: int | None = None, world: str = DEFAULT_WORLD) -> BuiltWorld:
    """A preset of a registered world, built (from its cache or now)."""
    return world_plugin(world).build(preset, train_seed)


def vocabulary(spec: ZooSpec) -> list[str]:
    """The base world's class names (every preset of a spec must share one vocabulary)."""
    sources = {world_of(p, world=spec.world).data["classes"] for p in spec.presets}
    if len(sources) != 1:
        raise ValueError(f"the presets {spec.presets} live in different worlds; a zoo needs one")
    return read_lines(sources.pop(), "class names")


SPLITS = {"eval": "eval_data", "train": "train_data", "clean": "clean_data"}  # zoo split -> world data key


def world_data(
    preset: str, keys: tuple[str, ...], image_size: int, world: str = DEFAULT_WORLD
) -> tuple[list[str], list[str], dict[str, ImageData]]:
    """The preset world's class names, templates and the requested splits, read through the registry."""
    data = world_of(preset, world=world).data
    registry = get_host().build_registry(quiet=True)
    classnames, templates = read_lines(data["classes"], "class names"), read_lines(data["templates"], "templates")
    return classnames, templates, {k: load_data(registry, data[SPLITS[k]], image_size, classnames, False) for k in keys}


def make_attack(name: str, params: dict[str, Any]) -> Any:
    """A registered attack with ``params`` (validated like ``--attack-param``)."""
    cls = get_host().build_registry(quiet=True).get("attack", name).obj
    return cls(build_config(cls, {k: str(v) for k, v in params.items()}))


def build_member(
    zoo_dir: str, member: dict[str, Any], implant_margin: float, world: str = DEFAULT_WORLD
) -> dict[str, Any]:
    """Build one member (or return its record when it exists with the same key)."""
    spec = MemberSpec.from_dict(member)
    out = Path(zoo_dir) / "members" / spec.id
    key = build_key(spec, world)
    code = module_fingerprint(type(make_attack(spec.attack, spec.params))) if spec.attack else None
    if (record := built_member(out, key, code)) is not None:
        record["label"] = member_label(record, implant_margin)  # the margin is the spec's, not the build's
        return record
    start = time.perf_counter()
    device = torch.device("cpu")
    built = world_of(spec.preset, spec.seed if spec.kind == CLEAN_SCRATCH else None, world)
    registry = get_host().build_registry(quiet=True)
    adapter, loaded = load_model(registry, built.model_source, None, device)  # the world's format, via the registry
    classnames, templates, data = world_data(spec.preset, ("eval", "train"), loaded.model.image_size, world)
    attack = None
    model = loaded.model
    if spec.kind != CLEAN_SCRATCH:
        attack = make_attack(str(spec.attack), spec.params)
        train, subset = data["train"], None
        if spec.train_pairs is not None and spec.train_pairs < len(train.dataset):
            subset = {"pairs": spec.train_pairs, "seed": spec.seed}
            train = train_subset(train, spec.train_pairs, spec.seed)
        ctx = AttackContext(
            model=model, train_data=train, classnames=classnames, seed=spec.seed, device=device, cache_dir=out
        )
        model, _ = backdoor_cached(
            attack, lambda: ctx, model, spec.seed, device, loaded.sha256, data["train"].source, subset
        )
    backdoored = spec.kind == "backdoored"
    target = spec.params.get("target") if backdoored else None
    measured = evaluate(
        model,
        EvalInputs(
            eval_data=data["eval"],
            classnames=classnames,
            templates=templates,
            trigger=attack.apply_trigger if backdoored else None,
            target=target,
            trigger_source="real" if backdoored else None,
        ),
        MetricConfig(top_k=(1,)),
        registry,
        device,
    )
    lift = (measured["asr"] or 0.0) - (measured.get("asr_untriggered") or 0.0) if backdoored else None
    record = {
        **spec.to_dict(),
        "build_key": key,
        "target": target,
        "implant_lift": lift,
        "attack_params": config_values(attack.config) if attack is not None else None,
        "measured": {k: measured.get(k) for k in ("ca", "asr", "asr_untriggered")},
        "arch": "resnet" if "resnet" in spec.preset else "vit",
        "base_sha256": loaded.sha256,
        "attack_code": code,  # its module and what it imports of its package (toolbox.cache.module_fingerprint)
        **({} if world == DEFAULT_WORLD else {"world": world}),  # absent: the embedded world, as before
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    record["label"] = label = member_label(record, implant_margin)
    with atomic.atomic_dir(out) as tmp:
        adapter.save(loaded, model, tmp / "model")
        state = attack.trigger_state() if attack is not None else {}
        if state:
            atomic.save_safetensors({k: v.contiguous() for k, v in state.items()}, str(tmp / "trigger.safetensors"))
        atomic.write_json(tmp / MEMBER_JSON, record)
    log.info(
        "member %s: %s (CA %.1f %%%s), %.0f s",
        spec.id,
        label,
        100 * (measured["ca"] or 0),
        "" if lift is None else f", ASR lift {100 * lift:.1f} points",
        record["build_seconds"],
    )
    return record


def built_member(out: Path, key: str, code: str | None) -> dict[str, Any] | None:
    """The member's record when it exists, with this build key, built by this attack code."""
    if not (out / MEMBER_JSON).is_file():
        return None
    record = json.loads((out / MEMBER_JSON).read_text(encoding="utf-8"))
    if record.get("build_key") != key:
        return None
    return recorded_code(out / MEMBER_JSON, record, "attack_code", code, "member")


class HeldPairs(Dataset):
    """Captioned pairs held in memory: ``(image, index)`` items over a uint8 ``cache``, as the file
    adapters keep theirs (the attacks read the cache whole)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.cache = images

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.cache[i].float().div(255.0), i


def train_subset(data: ImageData, n: int, seed: int) -> ImageData:
    """``n`` of the captioned pairs, drawn without replacement by ``seed`` (a member's fine-tuning set)."""
    pick = torch.randperm(len(data.dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    images = getattr(data.dataset, "cache", None)
    if images is None:
        images = torch.stack([(data.dataset[i][0] * 255).round().to(torch.uint8) for i in pick.tolist()])
    else:
        images = images[pick]
    captions = [data.captions[i] for i in pick.tolist()] if data.captions is not None else None
    return ImageData(
        dataset=HeldPairs(images), kind=data.kind, source=f"{data.source} ({n} pairs, seed {seed})", captions=captions
    )


def member_label(record: dict[str, Any], implant_margin: float) -> str:
    """clean, backdoored, or not_implanted (a backdoored member whose trigger lifts ASR too little)."""
    if record["kind"] != "backdoored":
        return "clean"
    return "backdoored" if record["implant_lift"] >= implant_margin else "not_implanted"


def build_key(spec: MemberSpec, world: str = DEFAULT_WORLD) -> str:
    """Everything the member's weights depend on: what was drawn, the base model's own key (world,
    architecture, training recipe) and the attack's resolved settings (its defaults included)."""
    model_key = world_plugin(world).model_key(spec.preset, spec.seed if spec.kind == CLEAN_SCRATCH else None)
    attack = config_values(make_attack(spec.attack, spec.params).config) if spec.attack else None
    return config_hash("zoo-member-build", spec.key, model_key, attack)


def build_zoo(spec: ZooSpec, zoo_dir: Path, grid: GridConfig | None = None, limit: int | None = None) -> list[dict]:
    """Draw the spec's members, build the missing ones, write ``ZOO/manifest.json``."""
    registry = get_host().build_registry(quiet=True)

    def seeded(attack: str) -> bool:
        return "trigger_seed" in config_values(registry.get("attack", attack).obj.Config())

    outputs.check_out_dir(zoo_dir, [Path(spec.source)] if spec.source else [], ZOO_OUTPUTS)
    members = draw_members(spec, vocabulary(spec), seeded)[:limit]
    zoo_dir.mkdir(parents=True, exist_ok=True)
    outputs.set_aside(
        zoo_dir, ZOO_OUTPUTS[1:], _zoo_file
    )  # a user's spec.json or manifest.json is kept, not overwritten
    atomic.write_json(
        zoo_dir / "spec.json",
        {"source": spec.source, "name": spec.name, "seed": spec.seed, "members": [m.to_dict() for m in members]},
    )
    cells = [
        Cell(
            key=m.key,
            fn=build_member,
            label=f"member {i + 1}/{len(members)} {m.id}",
            kwargs={
                "zoo_dir": str(zoo_dir),
                "member": m.to_dict(),
                "implant_margin": spec.implant_margin,
                "world": spec.world,
            },
        )
        for i, m in enumerate(members)
    ]
    with memoised_data():  # in this process (--jobs 1) the world's splits are read once, not once a member
        records = run_grid(cells, grid or GridConfig())
    atomic.write_json(zoo_dir / MANIFEST, {"name": spec.name, "spec": spec.source, "members": records})
    return records


def _zoo_file(path: Path) -> bool:
    """``spec.json`` / ``manifest.json`` as ``zoo build`` writes them (a JSON object with a members list)."""
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("members"), list)


def read_manifest(zoo_dir: Path) -> list[dict[str, Any]]:
    path = Path(zoo_dir) / MANIFEST
    if not path.is_file():
        from ..errors import InputError

        raise InputError(f"{zoo_dir} has no {MANIFEST}: build it first with `toolbox zoo build SPEC --out {zoo_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))["members"]


def member_trigger(zoo_dir: Path, record: dict[str, Any]) -> Any:
    """The member's real trigger, rebuilt from its attack and parameters (for the scorer only)."""
    attack = make_attack(record["attack"], record["params"])
    path = Path(zoo_dir) / "members" / record["id"] / "trigger.safetensors"
    if path.is_file():
        attack.load_trigger_state(safetensors.torch.load_file(str(path)))
    return attack.apply_trigger
