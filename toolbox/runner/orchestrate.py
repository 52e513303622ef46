"""The order of one run's stages: resolve, load, attack, measure, defend, measure again, save."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from .. import atomic, outputs, results
from ..api import AttackContext, ClipModel, DefenseContext, DefenseOutcome, LoadedModel, config_values
from ..errors import InputError
from ..escape import shown
from ..evaluation import EvalInputs, MetricConfig, evaluate, metric_config_doc
from ..null import CleanNull, read_null
from ..plugins import get_host
from ..rebound import REBOUND_DEFINITION, rebound
from ..zeroshot import loader_workers
from .attack_cache import backdoor_cached
from .document import result_document
from .inputs import class_index, load_inputs, load_model, load_train, train_source
from .plan import Findings, Plan, RunInputs
from .request import (
    RunRequest,
    StageTimer,
    check_measurement,
    configure,
    default_out_dir,
    resolve_names,
    seed_everything,
)

Trigger = Callable[[Tensor], Tensor]
TRIGGER_MASKS = "artifacts/trigger_masks.safetensors"  # DefenseOutcome.trigger_masks, for scorers


def run(req: RunRequest) -> Path:
    """Run one (attack, defense) cell; return the path of the written result.json."""
    plan = resolve(req)
    out_dir = Path(req.out) if req.out else default_out_dir(req)
    outputs.check_out_dir(out_dir, [*req.sources.input_paths(), *extra_inputs(req)])
    seed_everything(req.sources.seed)
    with outputs.Staging(out_dir) as staging:  # OUT is locked from here: a second run into it is refused at once
        got = load(plan)
        doc = attack_defend_measure(plan, got, staging.dir)
        results.write_result(staging.dir, doc)
        return staging.commit()


def resolve(req: RunRequest) -> Plan:
    """Names, parameters and device checked and the components built: bad input fails before any loading."""
    host = get_host()
    registry = host.build_registry()
    resolve_names(registry, req)
    dreg = registry.get("defense", req.defense)
    defense = dreg.obj(configure(dreg.obj, req.defense_params))
    areg = registry.get("attack", req.attack) if req.attack else None
    attack = areg.obj(configure(areg.obj, req.attack_params)) if areg else None
    device = check_measurement(req.sources)
    if req.references and not getattr(dreg.obj, "uses_references", False):
        raise InputError(f"--reference: defense {req.defense!r} does not compare with reference models")
    return Plan(
        req=req,
        registry=registry,
        host=host,
        dreg=dreg,
        defense=defense,
        areg=areg,
        attack=attack,
        device=device,
        timer=StageTimer(),
        nulls=read_calibration(req, dreg.obj),
    )


def extra_inputs(req: RunRequest) -> list[Path]:
    """The calibration file and reference models a run reads (--out may not overlap them either)."""
    named = [*req.calibration, *req.references]
    return [Path(p) for p in named if Path(p).exists()]


def read_calibration(req: RunRequest, defense: type) -> list[CleanNull]:
    """The clean nulls of ``--calibration``, for a defense that takes them; which one holds for the
    run's model and settings is the defense's to choose (toolbox.null.select)."""
    if req.calibration and not getattr(defense, "calibratable", False):
        raise InputError(f"--calibration: defense {req.defense!r} reports no statistics to calibrate")
    nulls = [read_null(path) for path in req.calibration]
    for path, null in zip(req.calibration, nulls, strict=True):
        if null.defense != req.defense:
            where = shown(path)
            raise InputError(f"--calibration {where}: a null of defense {null.defense!r}, not of {req.defense!r}")
    return nulls


def load(plan: Plan) -> RunInputs:
    """The suspect model and the run's data, each load timed as its own stage."""
    src = plan.req.sources
    with plan.timer.stage("load_model"):
        adapter, loaded = load_model(plan.registry, src.model_source, src.model_format, plan.device)
    with plan.timer.stage("load_data"):
        classnames, templates, data = load_inputs(plan.registry, plan.req, loaded, plan.dreg)
    references = load_references(plan, loaded) if plan.req.references else []
    return RunInputs(adapter, loaded, classnames, templates, data, references)


def load_references(plan: Plan, suspect: LoadedModel) -> list[LoadedModel]:
    """The --reference models, each refused unless it takes the suspect's image size."""
    references = []
    with plan.timer.stage("load_references"):
        for source in plan.req.references:
            ref = load_model(plan.registry, source, None, plan.device)[1]
            if shapes(ref.model) != shapes(suspect.model):
                raise InputError(
                    f"--reference {shown(source)} is not of the suspect's architecture ({ref.arch}, "
                    f"{ref.model.image_size} px; the suspect: {suspect.arch}, {suspect.model.image_size} px, "
                    "or the same with other parameter shapes)"
                )
            references.append(ref)
    return references


def shapes(model: ClipModel) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in model.parameters()]


def attack_defend_measure(plan: Plan, got: RunInputs, stage_dir: Path) -> dict[str, Any]:
    """Everything after loading, written under ``stage_dir``; returns the result document."""
    model, attack_doc, trigger, target = attack_step(plan, got, stage_dir)
    mcfg, inputs = measurement(plan, got, trigger, target)
    with plan.timer.stage("evaluate_before"):
        before = evaluate(model, inputs, mcfg, plan.registry, plan.device)
    attacked_sha = results.state_dict_sha256(model) if plan.attack else None
    outcome = defend_step(plan, got, model, stage_dir)
    metrics, metric_doc = measure_after(plan, got, model, outcome, inputs, mcfg, before)
    artifacts, purified_sha = save_step(plan, got, model, outcome, stage_dir)
    return result_document(
        plan,
        got,
        Findings(
            attack_doc=attack_doc,
            attacked_sha=attacked_sha,
            purified_sha=purified_sha,
            outcome=outcome,
            metric_doc=metric_doc,
            metrics=metrics,
            artifacts=artifacts,
        ),
    )


def attack_step(
    plan: Plan, got: RunInputs, stage_dir: Path
) -> tuple[ClipModel, dict[str, Any] | None, Trigger | None, str | None]:
    """The model the defense is given (backdoored when the run attacks), the attack's record, trigger and target."""
    attack, areg, req, train = plan.attack, plan.areg, plan.req, got.data["train_data"]
    if attack is None or areg is None:
        return got.loaded.model, None, None, None
    target = attack.target_label()
    class_index(got.classnames, target, "attack target")
    source = train.source if train is not None else train_source(req, got.loaded)
    if source is None:
        raise InputError(f"attack {req.attack!r} needs image-caption training data: pass --train-data")

    def context() -> AttackContext:
        return AttackContext(
            model=got.loaded.model,
            train_data=train
            if train is not None
            else load_train(plan.registry, req, got.loaded, source, got.classnames),
            classnames=got.classnames,
            seed=req.sources.seed,
            device=plan.device,
            cache_dir=stage_dir,
        )

    with plan.timer.stage("attack"):
        model, attack_record = backdoor_cached(
            attack, context, got.loaded.model, req.sources.seed, plan.device, got.loaded.sha256, source
        )
    attack_doc = {
        "name": req.attack,
        "params": config_values(attack.config),
        "target": target,
        "plugin": areg.plugin,
        **attack_record,
    }
    return model, attack_doc, attack.apply_trigger, target


def measurement(
    plan: Plan, got: RunInputs, trigger: Trigger | None, target: str | None
) -> tuple[MetricConfig, EvalInputs]:
    """How the run measures (recorded in the result) and what it measures on."""
    src = plan.req.sources
    mcfg = MetricConfig(
        asr_exclude_target=not src.asr_include_target,
        batch_size=src.eval_batch_size,
        workers=loader_workers(src.workers, plan.device),
        extra=tuple(plan.req.metrics),
    )
    inputs = EvalInputs(
        eval_data=got.data["eval_data"],
        shift_data=got.data["shift_data"],
        classnames=got.classnames,
        templates=got.templates,
        retrieval_data=got.data["retrieval_data"],
        trigger=trigger,
        target=target,
        trigger_source="real" if trigger else None,
    )
    return mcfg, inputs


def defend_step(plan: Plan, got: RunInputs, model: ClipModel, stage_dir: Path) -> DefenseOutcome:
    """The defense's outcome on ``model``; its own stage timings join the run's as ``defense.NAME``."""
    work = stage_dir / "artifacts"
    work.mkdir()
    model.eval()  # a defense gets the suspect model in inference mode (batch norms use their statistics)
    with plan.timer.stage("defense"):
        try:
            outcome = plan.defense.defend(
                DefenseContext(
                    model=model,
                    clean_data=got.data["clean_data"],
                    classnames=got.classnames,
                    templates=got.templates,
                    seed=plan.req.sources.seed,
                    device=plan.device,
                    workdir=work,
                    train_data=got.data["train_data"],
                    attack=plan.attack,
                    nulls=plan.nulls,
                    reference=plan.req.reference,
                    references=[r.model for r in got.references],
                )
            )
        except SystemExit as err:  # a plugin's sys.exit() is a failed run, not the toolbox's exit
            raise RuntimeError(f"defense {plan.req.defense!r} called sys.exit({err.code})") from err
    for name, secs in outcome.timings_s.items():
        plan.timer.timings[f"defense.{name}"] = round(secs, 3)
    return outcome


def measure_after(
    plan: Plan,
    got: RunInputs,
    model: ClipModel,
    outcome: DefenseOutcome,
    inputs: EvalInputs,
    mcfg: MetricConfig,
    before: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics before (with the defense's reconstructed triggers), after and on rebound, and their config."""
    registry, device, timer, src = plan.registry, plan.device, plan.timer, plan.req.sources
    if outcome.triggers and outcome.target in got.classnames:
        # ASR with the defense's own reconstructed triggers, before and after, labelled by name
        inputs.extra_triggers = {name: (trig, outcome.target) for name, trig in outcome.triggers.items()}
        with timer.stage("evaluate_reconstructed_before"):
            extra_before = evaluate(
                model,
                replace(inputs, trigger=None, retrieval_data=None, shift_data=None),
                replace(mcfg, extra=()),
                registry,
                device,
            )
        before.update({k: v for k, v in extra_before.items() if k.startswith("asr_") and k not in before})
    with timer.stage("evaluate_after"):
        after = evaluate(outcome.model, inputs, mcfg, registry, device)
    metrics: dict[str, Any] = {"before": before, "after": after}
    rcfg = src.rebound()
    metric_doc = metric_config_doc(mcfg, inputs, registry)
    if rcfg.enabled:
        train = got.data["train_data"]
        assert train is not None  # load_inputs refuses rebound without training data
        with timer.stage("rebound"):
            rebounded, record = rebound(outcome.model, train, rcfg, src.seed, device)
            metrics["rebound"] = evaluate(rebounded, replace(inputs, retrieval_data=None), mcfg, registry, device)
        metric_doc["rebound"] = {"definition": REBOUND_DEFINITION, "train_data": train.source, **record}
    return metrics, metric_doc


def save_step(
    plan: Plan, got: RunInputs, model: ClipModel, outcome: DefenseOutcome, stage_dir: Path
) -> tuple[dict[str, str], str | None]:
    """The result's artifacts (relative to ``stage_dir``) and the purified model's hash, when the defense changed it."""
    artifacts = {name: str(Path("artifacts") / rel) for name, rel in outcome.artifacts.items()}
    purified_sha = None
    if outcome.model is not model:  # the defense changed something: write it in the input's format
        with plan.timer.stage("save_model"):
            saved = got.adapter.save(got.loaded, outcome.model, stage_dir / "model")
        artifacts["model"] = str(saved.relative_to(stage_dir))
        purified_sha = results.state_dict_sha256(outcome.model)
    if outcome.trigger_masks:  # under a name of the host's: scorers read them knowing no defense's files
        atomic.save_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in outcome.trigger_masks.items()}, str(stage_dir / TRIGGER_MASKS)
        )
        artifacts["trigger_masks"] = TRIGGER_MASKS
    return artifacts, purified_sha
