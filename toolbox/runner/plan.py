"""The records a run passes between its steps: what it resolved, what it loaded, what it found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import Attack, Defense, DefenseOutcome, ImageData, LoadedModel, ModelAdapter
from ..null import CleanNull
from ..plugins import PluginHost, Registration, Registry
from .request import RunRequest, StageTimer


@dataclass
class Plan:
    """A run resolved before anything is loaded: the request, its components built and configured."""

    req: RunRequest
    registry: Registry
    host: PluginHost
    dreg: Registration  # the defense's registration (its class and plugin)
    defense: Defense
    areg: Registration | None  # the attack's, when the run attacks
    attack: Attack | None
    device: torch.device
    timer: StageTimer
    nulls: list[CleanNull] = field(default_factory=list)  # the request's calibration files, read and checked


@dataclass
class RunInputs:
    """What a run loaded: the suspect model, its adapter, the vocabulary and the datasets."""

    adapter: ModelAdapter
    loaded: LoadedModel
    classnames: list[str]
    templates: list[str]
    data: dict[str, ImageData | None]  # by Sources.DATA_KEYS; None where not given or not needed
    references: list[LoadedModel] = field(default_factory=list)  # --reference models, loaded


@dataclass
class Findings:
    """What the attack, defense and measurement steps found, for the result document."""

    attack_doc: dict[str, Any] | None
    attacked_sha: str | None
    purified_sha: str | None
    outcome: DefenseOutcome
    metric_doc: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, str]
