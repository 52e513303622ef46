"""Orchestration of one ``toolbox run``: resolve plugins and sources, attack, defend, measure, write.

The runner is the only place that knows the order of stages; plugins see only the
contexts in :mod:`toolbox.api`.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import results
from .api import (AttackContext, ClipModel, DefenseContext, ImageData, LoadedModel, build_config,
                  config_values)
from .evaluation import EvalInputs, MetricConfig, evaluate, metric_config_doc
from .plugins import Registry, UnknownNameError, get_host

EMBEDDED_PREFIX = "embedded:"


class RunError(Exception):
    """A user-facing problem (bad input, missing data); the CLI prints it and exits 1."""


@dataclass
class RunRequest:
    defense: str
    attack: str | None = None
    model: str | None = None
    model_format: str | None = None
    clean_data: str | None = None
    eval_data: str | None = None
    retrieval_data: str | None = None
    train_data: str | None = None
    classes: str | None = None
    templates: str | None = None
    out: Path | None = None
    seed: int = 0
    preset: str = "default"
    device: str = "cpu"
    defense_params: dict[str, str] = field(default_factory=dict)
    attack_params: dict[str, str] = field(default_factory=dict)
    skip_unreadable: bool = False
    asr_include_target: bool = False
    command: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class StageTimer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"toolbox: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)


def resolve_names(registry: Registry, req: RunRequest) -> None:
    """Fail fast (before any loading) on unknown defense / attack / format names."""
    registry.get("defense", req.defense)
    if req.attack:
        registry.get("attack", req.attack)
    if req.model_format:
        registry.get("model_adapter", req.model_format)


def load_model(registry: Registry, source: str, fmt: str | None, device: torch.device) -> tuple[Any, LoadedModel]:
    if fmt:
        adapter = registry.get("model_adapter", fmt).obj()
    else:
        adapters = (r.obj() for r in registry.entries["model_adapter"].values())
        adapter = next((a for a in adapters if a.detect(source)), None)
        if adapter is None:
            known = ", ".join(registry.names("model_adapter"))
            raise RunError(f"no model adapter recognises {source!r}; pass --model-format (one of: {known})")
    return adapter, adapter.load(source, device)


_DATA_MEMO: dict[tuple, ImageData] | None = None


@contextmanager
def memoised_data() -> Iterator[None]:
    """Within this block, a dataset read once is reused (``toolbox compare`` runs many cells on
    the same data; reading 20k images per cell would dominate). Keyed by source, its size and
    mtime, image size, vocabulary and the skip flag."""
    global _DATA_MEMO
    previous, _DATA_MEMO = _DATA_MEMO, {}
    try:
        yield
    finally:
        _DATA_MEMO = previous


def load_data(registry: Registry, source: str, image_size: int, classnames: list[str] | None,
              skip_unreadable: bool) -> ImageData:
    if _DATA_MEMO is not None:
        key = (repr(source_fingerprint(source)), image_size, tuple(classnames or ()), skip_unreadable)
        if key not in _DATA_MEMO:
            _DATA_MEMO[key] = _load_data(registry, source, image_size, classnames, skip_unreadable)
        return _DATA_MEMO[key]
    return _load_data(registry, source, image_size, classnames, skip_unreadable)


def _load_data(registry: Registry, source: str, image_size: int, classnames: list[str] | None,
               skip_unreadable: bool) -> ImageData:
    for reg in registry.entries["dataset_adapter"].values():
        adapter = reg.obj()
        if adapter.detect(source):
            return adapter.load(source, image_size, classnames=classnames, skip_unreadable=skip_unreadable)
    known = ", ".join(registry.names("dataset_adapter"))
    raise RunError(f"no dataset adapter recognises {source!r} (registered: {known})")


def read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RunError(f"file not found: {path}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def default_templates() -> list[str]:
    from .compat import import_open_clip

    return [t("{}") for t in import_open_clip().OPENAI_IMAGENET_TEMPLATES]


def default_classnames() -> list[str]:
    from .compat import import_open_clip

    return list(import_open_clip().IMAGENET_CLASSNAMES)


def default_out_dir(req: RunRequest) -> Path:
    return Path("results") / f"{req.attack or 'clean'}-{req.defense}-seed{req.seed}"


RUN_OUTPUTS = ("result.json", "result.csv", "artifacts", "model")


def clear_outputs(out_dir: Path) -> None:
    """Remove what an earlier run wrote here, so nothing stale sits beside this run's result."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def source_fingerprint(source: str) -> dict[str, Any]:
    """Path plus size and modification time: a changed training set is a different cache key."""
    path = Path(source)
    if not path.exists():
        return {"source": source}
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def backdoor_cached(attack: Any, ctx: AttackContext, model_sha: str, train_source: str) -> tuple[ClipModel, dict]:
    """The attacked model from the cache, or built now and cached (keyed by everything it depends on)."""
    import json

    import safetensors.torch

    from . import atomic
    from .cache import cache_root, config_hash, entry_lock

    key = config_hash(model_sha, attack.name, config_values(attack.config), source_fingerprint(train_source),
                      ctx.seed)
    entry = cache_root() / "attacked" / key
    with entry_lock(entry):
        if not (entry / "attack.json").exists():
            start = time.perf_counter()
            model = attack.backdoor(ctx)
            record = {"build_seconds": round(time.perf_counter() - start, 1), "info": attack.info}
            with atomic.atomic_dir(entry) as tmp:
                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                safetensors.torch.save_file(state, str(tmp / "model.safetensors"))
                safetensors.torch.save_file({k: v.contiguous() for k, v in attack.trigger_state().items()},
                                            str(tmp / "trigger.safetensors"))
                (tmp / "attack.json").write_text(json.dumps(record, indent=2))
            return model, {**record, "cache_key": key, "from_cache": False}
    record = json.loads((entry / "attack.json").read_text())
    model = ctx.model.clone()
    model.load_state_dict(safetensors.torch.load_file(str(entry / "model.safetensors")))
    attack.load_trigger_state(safetensors.torch.load_file(str(entry / "trigger.safetensors")))
    attack.info = record.get("info", {})
    return model, {**record, "cache_key": key, "from_cache": True}


def run(req: RunRequest) -> Path:
    """Run one (attack, defense) cell; return the path of the written result.json."""
    host = get_host()
    registry = host.build_registry()
    resolve_names(registry, req)
    dreg = registry.get("defense", req.defense)
    defense = dreg.obj(build_config(dreg.obj, req.defense_params))  # bad parameters fail before any loading
    areg = registry.get("attack", req.attack) if req.attack else None
    attack = areg.obj(build_config(areg.obj, req.attack_params)) if areg else None
    seed_everything(req.seed)
    device = torch.device(req.device)
    out_dir = Path(req.out) if req.out else default_out_dir(req)
    clear_outputs(out_dir)
    timer = StageTimer()

    source = req.model or f"{EMBEDDED_PREFIX}{req.preset}"
    with timer.stage("load_model"):
        adapter, loaded = load_model(registry, source, req.model_format, device)
    model: ClipModel = loaded.model
    defaults = loaded.data_defaults

    with timer.stage("load_data"):
        classes_src = req.classes or defaults.get("classes")
        classnames = read_lines(classes_src) if classes_src else default_classnames()
        templates_src = req.templates or defaults.get("templates")
        templates = read_lines(templates_src) if templates_src else default_templates()
        data: dict[str, ImageData | None] = {}
        # The image-caption training split is large: read it only when someone will use it.
        wants_train = bool(req.attack) or bool(getattr(dreg.obj, "uses_train_data", False))
        for key in ("clean_data", "eval_data", "retrieval_data", "train_data"):
            if key == "train_data" and not wants_train:
                data[key] = None
                continue
            src = getattr(req, key) or defaults.get(key)
            data[key] = (load_data(registry, src, model.image_size, classnames, req.skip_unreadable)
                         if src else None)
        if data["eval_data"] is not None and data["eval_data"].classnames:
            classnames = list(data["eval_data"].classnames)
    if data["clean_data"] is None:
        raise RunError("no clean data: pass --clean-data (a folder of images, a labels.csv, a caption CSV, ...)")
    for key, kind in (("eval_data", "labelled"), ("retrieval_data", "captioned"), ("train_data", "captioned")):
        if data[key] is not None and data[key].kind != kind:
            raise RunError(f"--{key.replace('_', '-')} must be {kind} data; {data[key].source} is {data[key].kind}")

    attack_doc = None
    trigger = target = None
    if attack is not None and areg is not None:
        target = attack.target_label()
        if target not in classnames:
            raise RunError(f"attack target {target!r} is not in the class vocabulary ({len(classnames)} classes)")
        if data["train_data"] is None:
            raise RunError(f"attack {req.attack!r} needs image-caption training data: pass --train-data")
        with timer.stage("attack"):
            ctx = AttackContext(model=model, train_data=data["train_data"], classnames=classnames, seed=req.seed,
                                device=device, cache_dir=out_dir)
            model, attack_record = backdoor_cached(attack, ctx, loaded.sha256, data["train_data"].source)
        trigger = attack.apply_trigger
        attack_doc = {"name": req.attack, "params": config_values(attack.config), "target": target,
                      "plugin": areg.plugin, **attack_record}

    mcfg = MetricConfig(asr_exclude_target=not req.asr_include_target)
    inputs = EvalInputs(eval_data=data["eval_data"], classnames=classnames, templates=templates,
                        retrieval_data=data["retrieval_data"], trigger=trigger, target=target,
                        trigger_source="real" if trigger else None)
    with timer.stage("evaluate_before"):
        before = evaluate(model, inputs, mcfg, registry, device)
    attacked_sha = results.state_dict_sha256(model) if attack else None

    work = out_dir / "artifacts"
    work.mkdir(exist_ok=True)
    model.eval()  # a defense gets the suspect model in inference mode (batch norms use their statistics)
    with timer.stage("defense"):
        outcome = defense.defend(DefenseContext(
            model=model, clean_data=data["clean_data"], classnames=classnames, templates=templates,
            seed=req.seed, device=device, workdir=work, train_data=data["train_data"], attack=attack))
    for name, secs in outcome.timings_s.items():
        timer.timings[f"defense.{name}"] = round(secs, 3)
    if outcome.triggers and outcome.target in classnames:
        # ASR with the defense's own reconstructed triggers, before and after, labelled by name
        inputs.extra_triggers = {name: (trig, outcome.target) for name, trig in outcome.triggers.items()}
        with timer.stage("evaluate_reconstructed_before"):
            extra_before = evaluate(model, replace(inputs, trigger=None, retrieval_data=None), mcfg, registry,
                                    device)
        before.update({k: v for k, v in extra_before.items() if k.startswith("asr_") and k not in before})
    with timer.stage("evaluate_after"):
        after = evaluate(outcome.model, inputs, mcfg, registry, device)

    artifacts = {name: str(Path("artifacts") / rel) for name, rel in outcome.artifacts.items()}
    purified_sha = None
    if outcome.model is not model:  # the defense changed something: write it in the input's format
        with timer.stage("save_model"):
            saved = adapter.save(loaded, outcome.model, out_dir / "model")
        artifacts["model"] = str(saved.relative_to(out_dir))
        purified_sha = results.state_dict_sha256(outcome.model)

    doc = {
        "schema": results.SCHEMA_ID,
        "created": results.now_iso(),
        "command": req.command,
        "versions": results.runtime_versions({p.name: p.version for p in host.plugins()}),
        "model": {"id": source, "arch": loaded.arch, "format": loaded.format, "sha256": loaded.sha256,
                  "attacked_sha256": attacked_sha, "purified_sha256": purified_sha},
        "attack": attack_doc,
        "defense": {"name": req.defense, "params": config_values(defense.config), "plugin": dreg.plugin},
        "metric_config": metric_config_doc(mcfg, inputs, registry),
        "metrics": {"before": before, "after": after},
        "detection": outcome.detection,
        "defense_info": outcome.info,
        "timings_s": timer.timings,
        "seed": req.seed,
        "device": str(device),
        "artifacts": artifacts,
        "data": {k: None if v is None else {"source": v.source, "kind": v.kind, "n": len(v.dataset),
                                           "skipped_unreadable": list(v.skipped)}
                 for k, v in data.items()},
    }
    return results.write_result(out_dir, doc)


__all__ = ["RunError", "RunRequest", "UnknownNameError", "run"]
