"""Orchestration of one ``toolbox run``: validate, load, attack, defend, measure, write.

The runner is the only place that knows the order of stages; plugins see only the
contexts in :mod:`toolbox.api`. Everything a run is given is validated before anything is
written, and what it writes goes through :class:`toolbox.outputs.Staging`: a failed run
leaves ``--out`` as it was.

One module per job: :mod:`.request` (what is asked, checked), :mod:`.inputs` (model, data,
vocabulary), :mod:`.attack_cache` (backdoored models, cached), :mod:`.orchestrate` (the order of
stages), :mod:`.document` (the result document), :mod:`.plan` (the records passed between steps).
Importers use ``toolbox.runner``; the names below are its interface.
"""

from ..errors import InputError
from ..plugins import UnknownNameError
from .attack_cache import backdoor_cached, source_fingerprint
from .document import result_document
from .inputs import (
    check_classnames,
    check_finite,
    class_index,
    default_classnames,
    default_templates,
    duplicate_names,
    eval_classnames,
    hostile,
    load_data,
    load_inputs,
    load_model,
    memoised_data,
    read_lines,
    read_templates,
    vocabulary,
)
from .orchestrate import attack_defend_measure, run
from .plan import Findings, Plan, RunInputs
from .request import (
    AUTO_DEVICE_ORDER,
    EMBEDDED_PREFIX,
    RunRequest,
    Sources,
    StageTimer,
    available_devices,
    check_measurement,
    configure,
    default_out_dir,
    parse_device,
    resolve_names,
    seed_everything,
)

__all__ = [
    "AUTO_DEVICE_ORDER",
    "EMBEDDED_PREFIX",
    "Findings",
    "InputError",
    "Plan",
    "RunInputs",
    "RunRequest",
    "Sources",
    "StageTimer",
    "UnknownNameError",
    "attack_defend_measure",
    "available_devices",
    "backdoor_cached",
    "check_classnames",
    "check_finite",
    "check_measurement",
    "class_index",
    "configure",
    "default_classnames",
    "default_out_dir",
    "default_templates",
    "duplicate_names",
    "eval_classnames",
    "hostile",
    "load_data",
    "load_inputs",
    "load_model",
    "memoised_data",
    "parse_device",
    "read_lines",
    "read_templates",
    "resolve_names",
    "result_document",
    "run",
    "seed_everything",
    "source_fingerprint",
    "vocabulary",
]
