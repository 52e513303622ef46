"""The Python API: what ``toolbox run`` does, callable from a notebook or a script.

    import toolbox
    result = toolbox.run("invertune", preset="smoke", params={"n_images": 256})
    result.backdoored, result.target, result.after["ca"], result.purified_model

    suspect = toolbox.load(preset="smoke")          # a model, its vocabulary and the defender's images
    images = suspect.images(256, seed=0)            # uint8 [N, 3, H, W]: what the defenses' stages take

``run`` takes the CLI's arguments as keywords (``--clean-data`` is ``clean_data``; ``-p KEY=VALUE``
is ``params={"KEY": VALUE}``) and goes through the same runner, so a result written from Python is
the same file a command would write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .api import ClipModel, ImageData


@dataclass(frozen=True)
class RunResult:
    """A finished run: the numbers, the verdict and where everything was written."""

    path: Path  # result.json
    doc: dict[str, Any] = field(repr=False)  # the whole result document (schema toolbox.result/1)

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    @property
    def before(self) -> dict[str, float | None]:
        """CA, ASR, ... of the model as given (after the attack, when there was one)."""
        return self.doc["metrics"]["before"]

    @property
    def after(self) -> dict[str, float | None]:
        """The same metrics on the defended model."""
        return self.doc["metrics"]["after"]

    @property
    def detection(self) -> dict[str, Any] | None:
        """The defense's verdict record (None for defenses that do not detect)."""
        return self.doc.get("detection")

    @property
    def backdoored(self) -> bool | None:
        return (self.detection or {}).get("backdoored")

    @property
    def target(self) -> str | None:
        return (self.detection or {}).get("target")

    @property
    def timings(self) -> dict[str, float]:
        return self.doc["timings_s"]

    @property
    def artifacts(self) -> dict[str, Path]:
        """Files the run wrote (the trigger, masks, plots, ...), by name."""
        return {name: self.out_dir / rel for name, rel in self.doc["artifacts"].items()}

    @property
    def purified_model(self) -> Path | None:
        """The defended model's folder (open_clip local-dir), when the defense wrote one."""
        model = self.out_dir / "model"
        return model if model.is_dir() else None


def _param_text(value: Any) -> str:
    """A Python value as the CLI's ``-p`` text: sequences comma-joined, booleans and None spelt out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_param_text(v) for v in value)
    return str(value)


def _params(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): _param_text(v) for k, v in (params or {}).items()}


def run(
    defense: str = "invertune",
    *,
    attack: str | None = None,
    model: str | None = None,
    model_format: str | None = None,
    clean_data: str | None = None,
    eval_data: str | None = None,
    shift_data: str | None = None,
    retrieval_data: str | None = None,
    train_data: str | None = None,
    classes: str | None = None,
    templates: str | None = None,
    preset: str = "default",
    seed: int = 0,
    device: str = "auto",
    asr_include_target: bool = False,
    eval_batch_size: int = 256,
    workers: int | None = None,
    rebound_steps: int = 0,
    rebound_lr: float = 5e-4,
    out: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    attack_params: Mapping[str, Any] | None = None,
    skip_unreadable: bool = False,
    metrics: Sequence[str] = (),
) -> RunResult:
    """``toolbox run`` from Python; every keyword is the CLI option of the same name. Bad input
    raises :class:`toolbox.errors.InputError` with the message the command would print."""
    from .runner import RunRequest, Sources
    from .runner import run as run_request

    sources = Sources(
        model=model,
        model_format=model_format,
        clean_data=clean_data,
        eval_data=eval_data,
        shift_data=shift_data,
        retrieval_data=retrieval_data,
        train_data=train_data,
        classes=classes,
        templates=templates,
        seed=seed,
        preset=preset,
        device=device,
        asr_include_target=asr_include_target,
        eval_batch_size=eval_batch_size,
        workers=workers,
        rebound_steps=rebound_steps,
        rebound_lr=rebound_lr,
    )
    req = RunRequest(
        defense=defense,
        attack=attack,
        sources=sources,
        out=Path(out) if out else None,
        defense_params=_params(params),
        attack_params=_params(attack_params),
        skip_unreadable=skip_unreadable,
        metrics=(metrics,) if isinstance(metrics, str) else tuple(metrics),
    )
    req.command = equivalent_command(req)
    path = Path(run_request(req))
    return RunResult(path=path, doc=json.loads(path.read_text(encoding="utf-8")))


def equivalent_command(req: Any) -> list[str]:
    """The ``toolbox run`` line that does what this call did (recorded in the result as its command)."""
    src, defaults = req.sources, type(req.sources)()
    cmd = ["toolbox", "run", "--defense", req.defense] + (["--attack", req.attack] if req.attack else [])
    for f in fields(src):  # one ``toolbox run`` option per field (cli.add_source_args)
        value, flag = getattr(src, f.name), f"--{f.name.replace('_', '-')}"
        if value != getattr(defaults, f.name):
            cmd += [flag] if isinstance(value, bool) else [flag, str(value)]
    cmd += ["--skip-unreadable"] if req.skip_unreadable else []
    for name in req.metrics:
        cmd += ["--metric", name]
    cmd += ["--out", str(req.out)] if req.out else []
    for flag, values in (("-p", req.defense_params), ("--attack-param", req.attack_params)):
        for key, value in values.items():
            cmd += [flag, f"{key}={value}"]
    return cmd


@dataclass
class Suspect:
    """A model as a run would load it, with the vocabulary and the defender's clean images."""

    model: ClipModel
    classnames: list[str]
    templates: list[str]
    clean: ImageData
    device: torch.device
    # where the clean images, class names and templates came from: toolbox.load(other_model, **data_sources)
    # loads a model that brings none of its own (a purified model folder) with the same ones
    data_sources: dict[str, str] = field(default_factory=dict)

    def images(self, n: int | None = None, seed: int = 0) -> Tensor:
        """``n`` clean images (all when None), drawn with ``seed``, as uint8 [N, 3, H, W] on the device."""
        total = len(self.clean.dataset)
        take = total if n is None else min(n, total)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:take].sort().values
        return self.clean.uint8(order).to(self.device)


def load(
    model: str | None = None,
    *,
    model_format: str | None = None,
    clean_data: str | None = None,
    classes: str | None = None,
    templates: str | None = None,
    preset: str = "default",
    device: str = "auto",
    skip_unreadable: bool = False,
) -> Suspect:
    """Load a model (any source ``--model`` takes; the embedded ``preset`` when None) with its
    vocabulary and clean images, checked as a run checks them, for running one stage by hand."""
    from .errors import InputError
    from .plugins import get_host
    from .runner import RunRequest, Sources, load_inputs, load_model, parse_device

    registry = get_host().build_registry(quiet=True)
    sources = Sources(
        model=model,
        model_format=model_format,
        clean_data=clean_data,
        classes=classes,
        templates=templates,
        preset=preset,
        device=device,
    )
    dev = parse_device(device)
    _, loaded = load_model(registry, sources.model_source, model_format, dev)
    if not (clean_data or loaded.data_defaults.get("clean_data")):
        raise InputError(
            f"{sources.model_source} brings no clean images of its own: pass clean_data= (a folder of "
            f"images, a labels.csv, ...); for the ones an embedded model uses, "
            f"toolbox.load(MODEL, **toolbox.load(preset=...).data_sources)"
        )
    req = RunRequest(defense="none", sources=sources, skip_unreadable=skip_unreadable)
    classnames, template_list, data = load_inputs(registry, req, loaded, registry.get("defense", "none"))
    if data["clean_data"] is None:  # load_inputs refuses this already; kept explicit for the type
        raise InputError("no clean data: pass clean_data=...")
    given = {"clean_data": clean_data, "classes": classes, "templates": templates}
    used = {k: v or loaded.data_defaults.get(k) for k, v in given.items()}
    return Suspect(
        model=loaded.model,
        classnames=classnames,
        templates=template_list,
        clean=data["clean_data"],
        device=dev,
        data_sources={k: v for k, v in used.items() if v},
    )
