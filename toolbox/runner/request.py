"""What a run is asked to do, checked before anything is loaded: sources, request, device, seed."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import build_config
from ..errors import InputError
from ..evaluation import check_extra_metrics
from ..intake.numbers import seed as checked_seed
from ..plugins import Registry
from ..rebound import ReboundConfig

log = logging.getLogger(__package__)  # the runner's one logger, "toolbox.runner", as before it was a package

EMBEDDED_PREFIX = "embedded:"


@dataclass
class Sources:
    """Where a run's model and data come from and how it measures; shared by run and compare."""

    model: str | None = None
    model_format: str | None = None
    clean_data: str | None = None
    eval_data: str | None = None
    shift_data: str | None = None  # the same classes in another style: CA under distribution shift
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

    DATA_KEYS = ("clean_data", "eval_data", "shift_data", "retrieval_data", "train_data")

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
    calibration: tuple[Path, ...] = ()  # clean nulls for a calibratable defense's verdict (toolbox/null.py)
    reference: bool = False  # a clean reference run for a null: every statistic measured, nothing purified
    references: tuple[str, ...] = ()  # clean models of the suspect's architecture, for differential evidence


def seed_everything(seed: int) -> None:
    checked_seed(seed)  # torch.manual_seed overflows past 2^64 (exit 3, after the output was prepared)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    # multi-threaded CPU kernels (index_put with accumulate: an indexed read's backward) add in any order
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: a CUDA op without such a kernel runs
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it, set before init


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
        raise InputError(
            f"--device {text!r}: {device.type} {why} (torch {torch.__version__}; this machine has: "
            f"{have}); use --device auto or one of those"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and device.index is None:  # cuda and cuda:0 are one device: one name in results and keys
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def check_measurement(src: Sources) -> torch.device:
    """The run's device, after refusing evaluation settings that cannot work."""
    checked_seed(src.seed)  # before anything is loaded: the notebook API and compare pass seeds too
    if src.eval_batch_size < 1:
        raise InputError(f"--eval-batch-size must be >= 1, got {src.eval_batch_size}")
    if src.workers is not None and src.workers < 0:
        raise InputError(f"--workers must be >= 0, got {src.workers}")
    try:
        src.rebound()
    except ValueError as err:
        raise InputError(f"--rebound-steps / --rebound-lr: {err}") from None
    return parse_device(src.device)


def default_out_dir(req: RunRequest) -> Path:
    return Path("results") / f"{req.attack or 'clean'}-{req.defense}-seed{req.sources.seed}"
