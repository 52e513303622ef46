"""Orchestration of one ``toolbox run``: validate, load, attack, defend, measure, write.

The runner is the only place that knows the order of stages; plugins see only the
contexts in :mod:`toolbox.api`. Everything a run is given is validated before anything is
written, and what it writes goes through :class:`toolbox.outputs.Staging`: a failed run
leaves ``--out`` as it was.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import outputs, results
from .api import (AttackContext, ClipModel, DefenseContext, ImageData, LoadedModel, build_config,
                  config_values)
from .errors import InputError, one_line
from .evaluation import EvalInputs, MetricConfig, check_extra_metrics, evaluate, metric_config_doc
from .zeroshot import loader_workers
from .plugins import Registry, UnknownNameError, get_host
from .rebound import REBOUND_DEFINITION, ReboundConfig, rebound

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


@dataclass
class Sources:
    """Where a run's model and data come from and how it measures; shared by run and compare."""

    model: str | None = None
    model_format: str | None = None
    clean_data: str | None = None
    eval_data: str | None = None
    retrieval_data: str | None = None
    train_data: str | None = None
    classes: str | None = None
    templates: str | None = None
    seed: int = 0
    preset: str = "default"
    device: str = "auto"
    asr_include_target: bool = False
    eval_batch_size: int = 256  # images per evaluation forward pass
    workers: int | None = None  # evaluation DataLoader workers; None: 0 on the CPU, up to 8 beside an accelerator
    rebound_steps: int = 0  # rebound ASR: clean fine-tuning steps after the defense (toolbox/rebound.py); 0: off
    rebound_lr: float = 5e-4

    def rebound(self) -> ReboundConfig:
        return ReboundConfig(steps=self.rebound_steps, lr=self.rebound_lr)

    DATA_KEYS = ("clean_data", "eval_data", "retrieval_data", "train_data")

    @property
    def model_source(self) -> str:
        return self.model or f"{EMBEDDED_PREFIX}{self.preset}"

    def input_paths(self) -> list[Path]:
        """The local files and folders this run reads (``--out`` may not overlap them)."""
        named = [getattr(self, k) for k in (*self.DATA_KEYS, "classes", "templates")]
        if self.model:
            for part in self.model.split("::"):  # VISUAL::BASE
                named += [part, part.split("@", 1)[-1]]  # ARCH@WEIGHTS
        return [Path(p) for p in dict.fromkeys(named) if p and Path(p).exists()]


@dataclass
class RunRequest:
    defense: str
    attack: str | None = None
    sources: Sources = field(default_factory=Sources)
    out: Path | None = None
    defense_params: dict[str, str] = field(default_factory=dict)
    attack_params: dict[str, str] = field(default_factory=dict)
    skip_unreadable: bool = False
    command: list[str] = field(default_factory=list)
    metrics: tuple[str, ...] = ()  # registered metrics measured beside the built-ins (--metric)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class StageTimer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("%s ...", name)
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
    if req.sources.model_format:
        registry.get("model_adapter", req.sources.model_format)
    check_extra_metrics(list(req.metrics), registry)


def configure(cls: type, overrides: dict[str, str]) -> Any:
    """``cls``'s config with ``-p KEY=VALUE`` overrides; a bad key or value is an :class:`InputError`."""
    try:
        return build_config(cls, overrides)
    except (ValueError, TypeError) as err:
        raise InputError(f"{getattr(cls, 'name', cls.__name__)}: {err}") from err


AUTO_DEVICE_ORDER = ("cuda", "mps", "cpu")  # --device auto takes the first this machine has


def available_devices() -> dict[str, bool]:
    return {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}


def parse_device(text: str) -> torch.device:
    """A torch device that exists on this machine (``auto``: cuda, then mps, then cpu), or a
    one-line :class:`InputError`."""
    available = available_devices()
    if text == "auto":
        text = next(kind for kind in AUTO_DEVICE_ORDER if available[kind])
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {text!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None
    if not available.get(device.type, False):
        why = "is not supported by this toolbox" if device.type not in available else "is not available here"
        have = ", ".join(k for k in AUTO_DEVICE_ORDER if available[k])
        raise InputError(f"--device {text!r}: {device.type} {why} (torch {torch.__version__}; this machine has: "
                         f"{have}); use --device auto or one of those")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and device.index is None:  # cuda and cuda:0 are one device: one name in results and keys
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def check_measurement(src: Sources) -> torch.device:
    """The run's device, after refusing evaluation settings that cannot work."""
    if src.eval_batch_size < 1:
        raise InputError(f"--eval-batch-size must be >= 1, got {src.eval_batch_size}")
    if src.workers is not None and src.workers < 0:
        raise InputError(f"--workers must be >= 0, got {src.workers}")
    try:
        src.rebound()
    except ValueError as err:
        raise InputError(f"--rebound-steps / --rebound-lr: {err}") from None
    return parse_device(src.device)


@contextmanager
def hostile(what: str) -> Iterator[None]:
    """Any failure while an adapter reads a source is bad input, reported in one line."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a suspect file can make any library raise anything
        log.debug("while reading %s", what, exc_info=True)
        # a ValueError is a reader's own account of what is wrong with the input: its message is the news
        reason = " ".join(str(err).split()) if type(err) is ValueError and str(err) else one_line(err)
        raise InputError(f"cannot read {what}: {reason}") from err


def load_model(registry: Registry, source: str, fmt: str | None, device: torch.device) -> tuple[Any, LoadedModel]:
    with hostile(f"model {source!r}"):
        if fmt:
            adapter = registry.get("model_adapter", fmt).obj()
        else:
            adapters = (r.obj() for r in registry.entries["model_adapter"].values())
            adapter = next((a for a in adapters if a.detect(source)), None)
            if adapter is None:
                known = ", ".join(registry.names("model_adapter"))
                raise InputError(f"no model adapter recognises {source!r}; pass --model-format (one of: {known})")
        loaded = adapter.load(source, device)
    check_finite(loaded)
    return adapter, loaded


def check_finite(loaded: LoadedModel) -> None:
    """NaN or infinite weights make every number of the run meaningless: refuse them."""
    bad = [name for name, t in loaded.model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise InputError(f"model {loaded.source!r} has non-finite (NaN or infinite) weights in {len(bad)} "
                         f"tensor(s), e.g. {', '.join(bad[:3])}")


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
    with hostile(f"data {source!r}"):
        adapters = (r.obj() for r in registry.entries["dataset_adapter"].values())
        adapter = next((a for a in adapters if a.detect(source)), None)
        if adapter is None:
            known = ", ".join(registry.names("dataset_adapter"))
            raise InputError(f"no dataset adapter recognises {source!r} (registered: {known})")
        data = adapter.load(source, image_size, classnames=classnames, skip_unreadable=skip_unreadable)
    if len(data.dataset) == 0:
        skipped = f" ({len(data.skipped)} skipped as unreadable)" if data.skipped else ""
        raise InputError(f"data {source!r} holds no usable images{skipped}")
    return data


def read_lines(path: str, what: str) -> list[str]:
    """Non-empty, non-comment lines of a small text file (class names, templates)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file not found: {path}")
    with hostile(f"{what} file {path!r}"):
        text = p.read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InputError(f"{what} file {path!r} is empty")
    return lines


def duplicate_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]


def check_classnames(names: list[str], source: str) -> list[str]:
    """Two classes with one name share one text embedding, so the later one is never predicted.
    ImageNet-1K's usual names have two such pairs (missile, sunglasses) and every zero-shot number
    in the literature lives with them: say so, and refuse only where a name must pick one class
    (:func:`class_index`)."""
    dupes = duplicate_names(names)
    if dupes:
        log.warning("class names from %s repeat %s: each repeated name is one text embedding, and only its "
                    "first class can be predicted", source, ", ".join(map(repr, dupes[:5])))
    return names


def class_index(classnames: list[str], name: str, what: str) -> int:
    """The one class called ``name``; absent or repeated is an :class:`InputError`."""
    if name not in classnames:
        raise InputError(f"{what} {name!r} is not in the class vocabulary ({len(classnames)} classes)")
    if classnames.count(name) > 1:
        raise InputError(f"{what} {name!r} names {classnames.count(name)} classes of the vocabulary; rename one")
    return classnames.index(name)


def read_templates(path: str) -> list[str]:
    templates = read_lines(path, "templates")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise InputError(f"templates file {path!r}: each line needs exactly one {{}} for the class name, "
                         f"e.g. 'a photo of a {{}}.'; not {bad[0]!r}")
    return templates


def default_templates() -> list[str]:
    from .compat import import_open_clip

    return [t("{}") for t in import_open_clip().OPENAI_IMAGENET_TEMPLATES]


def default_classnames() -> list[str]:
    from .compat import import_open_clip

    return list(import_open_clip().IMAGENET_CLASSNAMES)


def default_out_dir(req: RunRequest) -> Path:
    return Path("results") / f"{req.attack or 'clean'}-{req.defense}-seed{req.sources.seed}"


def source_fingerprint(source: str) -> dict[str, Any]:
    """Path plus size and modification time: a changed training set is a different cache key."""
    path = Path(source)
    if not path.exists():
        return {"source": source}
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def backdoor_cached(attack: Any, ctx: AttackContext, model_sha: str, train_source: str,
                    subset: dict[str, Any] | None = None) -> tuple[ClipModel, dict]:
    """The attacked model from the cache, or built now and cached (keyed by everything it depends on;
    ``subset`` names the part of ``train_source`` that ``ctx.train_data`` holds, when not all of it)."""
    import json

    import safetensors.torch

    from . import atomic
    from .cache import cache_root, config_hash, entry_lock

    parts = (subset,) if subset else ()  # absent when whole: the keys of earlier caches hold
    if ctx.device.type != "cpu":  # another device trains to other numbers; CPU keys stay as they were
        parts += ({"device": ctx.device.type},)
    key = config_hash(model_sha, attack.name, config_values(attack.config), source_fingerprint(train_source),
                      ctx.seed, *parts)
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
    src = req.sources
    resolve_names(registry, req)
    dreg = registry.get("defense", req.defense)
    defense = dreg.obj(configure(dreg.obj, req.defense_params))  # bad parameters fail before any loading
    areg = registry.get("attack", req.attack) if req.attack else None
    attack = areg.obj(configure(areg.obj, req.attack_params)) if areg else None
    device = check_measurement(src)
    out_dir = Path(req.out) if req.out else default_out_dir(req)
    outputs.check_out_dir(out_dir, src.input_paths())
    seed_everything(src.seed)
    timer = StageTimer()

    with timer.stage("load_model"):
        adapter, loaded = load_model(registry, src.model_source, src.model_format, device)
    model: ClipModel = loaded.model
    with timer.stage("load_data"):
        classnames, templates, data = load_inputs(registry, req, loaded, dreg)

    with outputs.Staging(out_dir) as staging:
        assert staging.path is not None
        doc = attack_defend_measure(req, registry, host, staging.path, model, adapter, loaded, dreg, defense,
                                    areg, attack, classnames, templates, data, device, timer)
        results.write_result(staging.path, doc)
        return staging.commit()


def load_inputs(registry: Registry, req: RunRequest, loaded: LoadedModel,
                dreg: Any) -> tuple[list[str], list[str], dict[str, ImageData | None]]:
    """The vocabulary, templates and datasets of a run, checked against each other."""
    src, defaults = req.sources, loaded.data_defaults
    classnames, templates = vocabulary(src, defaults)
    data: dict[str, ImageData | None] = {}
    # The image-caption training split is large: read it only when someone will use it.
    wants_train = (bool(req.attack) or bool(getattr(dreg.obj, "uses_train_data", False))
                   or src.rebound().enabled)
    for key in Sources.DATA_KEYS:
        where = getattr(src, key) or defaults.get(key)
        data[key] = (load_data(registry, where, loaded.model.image_size, classnames, req.skip_unreadable)
                     if where and (key != "train_data" or wants_train) else None)
    if data["clean_data"] is None:
        raise InputError("no clean data: pass --clean-data (a folder of images, a labels.csv, a caption CSV, ...)")
    if src.rebound().enabled and data["train_data"] is None:
        raise InputError("--rebound-steps fine-tunes on clean image-caption pairs: pass --train-data")
    for key, kind in (("eval_data", "labelled"), ("retrieval_data", "captioned"), ("train_data", "captioned")):
        if data[key] is not None and data[key].kind != kind:
            raise InputError(f"--{key.replace('_', '-')} must be {kind} data; {data[key].source} is {data[key].kind}")
    return eval_classnames(data["eval_data"], classnames, src), templates, data


def vocabulary(src: Sources, defaults: dict[str, str]) -> tuple[list[str], list[str]]:
    """Class names and prompt templates: the options', else the model's own, else ImageNet-1K / OpenAI's."""
    classes_src = src.classes or defaults.get("classes")
    classnames = (check_classnames(read_lines(classes_src, "class names"), classes_src) if classes_src
                  else default_classnames())
    templates_src = src.templates or defaults.get("templates")
    return classnames, read_templates(templates_src) if templates_src else default_templates()


def eval_classnames(eval_data: ImageData | None, classnames: list[str], src: Sources) -> list[str]:
    """The vocabulary to measure with: an evaluation set that names its own classes brings them (its labels
    index that list), unless --classes says otherwise."""
    own = eval_data.classnames if eval_data is not None else None
    if not own or own == classnames:
        return classnames
    if src.classes:
        i = next((i for i, (a, b) in enumerate(zip(own, classnames)) if a != b), min(len(own), len(classnames)))
        raise InputError(f"the evaluation data {eval_data.source} names its own classes, which differ "
                         f"from --classes {src.classes} ({len(own)} against {len(classnames)} names; class {i} "
                         f"is {own[i] if i < len(own) else None!r} against "
                         f"{classnames[i] if i < len(classnames) else None!r}); drop one of them or make them agree")
    return check_classnames(list(own), eval_data.source)


def attack_defend_measure(req: RunRequest, registry: Registry, host: Any, stage_dir: Path, model: ClipModel,
                          adapter: Any, loaded: LoadedModel, dreg: Any, defense: Any, areg: Any, attack: Any,
                          classnames: list[str], templates: list[str], data: dict[str, ImageData | None],
                          device: torch.device, timer: StageTimer) -> dict[str, Any]:
    """Everything after loading, written under ``stage_dir``; returns the result document."""
    src = req.sources
    attack_doc = None
    trigger = target = None
    if attack is not None and areg is not None:
        target = attack.target_label()
        class_index(classnames, target, "attack target")
        if data["train_data"] is None:
            raise InputError(f"attack {req.attack!r} needs image-caption training data: pass --train-data")
        with timer.stage("attack"):
            ctx = AttackContext(model=model, train_data=data["train_data"], classnames=classnames, seed=src.seed,
                                device=device, cache_dir=stage_dir)
            model, attack_record = backdoor_cached(attack, ctx, loaded.sha256, data["train_data"].source)
        trigger = attack.apply_trigger
        attack_doc = {"name": req.attack, "params": config_values(attack.config), "target": target,
                      "plugin": areg.plugin, **attack_record}

    mcfg = MetricConfig(asr_exclude_target=not src.asr_include_target, batch_size=src.eval_batch_size,
                        workers=loader_workers(src.workers, device), extra=tuple(req.metrics))
    inputs = EvalInputs(eval_data=data["eval_data"], classnames=classnames, templates=templates,
                        retrieval_data=data["retrieval_data"], trigger=trigger, target=target,
                        trigger_source="real" if trigger else None)
    with timer.stage("evaluate_before"):
        before = evaluate(model, inputs, mcfg, registry, device)
    attacked_sha = results.state_dict_sha256(model) if attack else None

    work = stage_dir / "artifacts"
    work.mkdir()
    model.eval()  # a defense gets the suspect model in inference mode (batch norms use their statistics)
    with timer.stage("defense"):
        try:
            outcome = defense.defend(DefenseContext(
                model=model, clean_data=data["clean_data"], classnames=classnames, templates=templates,
                seed=src.seed, device=device, workdir=work, train_data=data["train_data"], attack=attack))
        except SystemExit as err:  # a plugin's sys.exit() is a failed run, not the toolbox's exit
            raise RuntimeError(f"defense {req.defense!r} called sys.exit({err.code})") from err
    for name, secs in outcome.timings_s.items():
        timer.timings[f"defense.{name}"] = round(secs, 3)
    if outcome.triggers and outcome.target in classnames:
        # ASR with the defense's own reconstructed triggers, before and after, labelled by name
        inputs.extra_triggers = {name: (trig, outcome.target) for name, trig in outcome.triggers.items()}
        with timer.stage("evaluate_reconstructed_before"):
            extra_before = evaluate(model, replace(inputs, trigger=None, retrieval_data=None),
                                    replace(mcfg, extra=()), registry, device)
        before.update({k: v for k, v in extra_before.items() if k.startswith("asr_") and k not in before})
    with timer.stage("evaluate_after"):
        after = evaluate(outcome.model, inputs, mcfg, registry, device)
    metrics: dict[str, Any] = {"before": before, "after": after}
    rcfg = src.rebound()
    metric_doc = metric_config_doc(mcfg, inputs, registry)
    if rcfg.enabled:
        with timer.stage("rebound"):
            rebounded, record = rebound(outcome.model, data["train_data"], rcfg, src.seed, device)
            metrics["rebound"] = evaluate(rebounded, replace(inputs, retrieval_data=None), mcfg, registry, device)
        metric_doc["rebound"] = {"definition": REBOUND_DEFINITION, "train_data": data["train_data"].source, **record}

    artifacts = {name: str(Path("artifacts") / rel) for name, rel in outcome.artifacts.items()}
    purified_sha = None
    if outcome.model is not model:  # the defense changed something: write it in the input's format
        with timer.stage("save_model"):
            saved = adapter.save(loaded, outcome.model, stage_dir / "model")
        artifacts["model"] = str(saved.relative_to(stage_dir))
        purified_sha = results.state_dict_sha256(outcome.model)

    return {
        "schema": results.SCHEMA_ID,
        "created": results.now_iso(),
        "command": req.command,
        "versions": results.runtime_versions(host.loaded_versions()),
        "model": {"id": src.model_source, "arch": loaded.arch, "format": loaded.format, "sha256": loaded.sha256,
                  "attacked_sha256": attacked_sha, "purified_sha256": purified_sha},
        "attack": attack_doc,
        "defense": {"name": req.defense, "params": config_values(defense.config), "plugin": dreg.plugin},
        "metric_config": metric_doc,
        "metrics": metrics,
        "detection": outcome.detection,
        "defense_info": outcome.info,
        "timings_s": timer.timings,
        "seed": src.seed,
        "device": str(device),
        "device_requested": src.device,
        "artifacts": artifacts,
        "data": {k: None if v is None else {"source": v.source, "kind": v.kind, "n": len(v.dataset),
                                           "skipped_unreadable": list(v.skipped)}
                 for k, v in data.items()},
    }


__all__ = ["InputError", "RunRequest", "Sources", "UnknownNameError", "run"]
