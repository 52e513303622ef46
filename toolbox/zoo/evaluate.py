"""``toolbox zoo eval``: a defense on every member, blind, then scored against the ground truth.

The defense sees exactly what a user would give it: the member's model (open_clip local-dir),
the defender's clean images, the vocabulary and templates. Nothing of ``member.json`` reaches
it. Afterwards the scorer, not the defense, measures the real trigger's ASR on the purified
model and compares verdict and target with the ground truth (:mod:`toolbox.zoo.score`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .. import atomic, outputs
from ..cache import code_fingerprint, config_hash
from ..errors import InputError
from ..evaluation import EvalInputs, MetricConfig, evaluate
from ..grid import Cell, GridConfig, run_grid
from ..plugins import get_host
from ..rebound import ReboundConfig, rebound
from ..runner import RunRequest, Sources, configure, load_model, memoised_data, run
from .build import MANIFEST, member_trigger, read_manifest, world_data, world_of
from .keys import BASE, comparison_key, outcome_key, reusable
from .score import MemberOutcome
from .spec import DEFAULT_WORLD

log = logging.getLogger(__name__)

OUTCOME_JSON = "outcome.json"


def eval_dir(zoo_dir: Path, defense: str, params: dict[str, str], seed: int) -> Path:
    """Where one defense configuration's evaluations of this zoo live (one folder per configuration)."""
    from ..api import config_values

    cfg = configure(get_host().build_registry(quiet=True).get("defense", defense).obj, params)
    return Path(zoo_dir) / "evals" / f"{defense}-{config_hash(defense, config_values(cfg), seed)}"


def eval_member(
    zoo_dir: str,
    record: dict[str, Any],
    defense: str,
    params: dict[str, str],
    seed: int,
    out_dir: str,
    rebound_steps: int = 0,
    calibration: tuple[str, ...] = (),
    reference: bool = False,
    references: tuple[str, ...] = (),
    compared: dict[str, Any] | None = None,
    keep: str | None = None,
) -> dict[str, Any]:
    """Run ``defense`` on one member and score it; reuse the outcome when it exists for this very
    member build, defense configuration and defense code. ``rebound_steps``: also the real trigger's
    ASR after that much clean fine-tuning of the defended model (toolbox/rebound.py); ``calibration``:
    clean nulls for the verdict (toolbox/null.py); ``reference``: a clean reference run for a null;
    ``references``: clean models to compare with; ``compared``: what those are, fingerprinted once by
    :func:`eval_zoo` (it joins the outcome's key); ``keep``: a folder outcomes are also kept in and
    taken from (:func:`carry_outcome`)."""
    out = Path(out_dir) / record["id"]
    registry = get_host().build_registry(quiet=True)  # once per member: every hook is called to build it
    options = {**(compared or {}), "reference": reference}
    key = outcome_key(record, defense, params, seed, registry, rebound_steps, options)
    code = code_fingerprint(registry.get("defense", defense).obj)
    saved = saved_outcome(out, key, code, record["id"])
    kept = Path(keep) / record["id"] if keep else None
    if kept is not None and saved is not None:
        carry_outcome(out, kept)
    elif kept is not None and (saved := saved_outcome(kept, key, code, record["id"], coded=True)) is not None:
        carry_outcome(kept, out)  # another machine's evaluation
    if saved is not None:
        return {**saved, "label": record["label"]}  # the label follows the spec's margin
    result = run(
        RunRequest(
            defense=defense,
            sources=member_sources(Path(zoo_dir), record, seed),
            out=out / "run",
            defense_params=dict(params),
            command=["toolbox", "zoo", "eval", "(member)", record["id"], "--defense", defense],
            calibration=tuple(Path(c) for c in calibration),
            reference=reference,
            references=tuple(f"embedded:{record['preset']}" if r == BASE else r for r in references),
        )
    )
    doc = json.loads(result.read_text(encoding="utf-8"))
    det = doc.get("detection") or {}
    before, after = doc["metrics"]["before"], doc["metrics"]["after"]
    asr_after = asr_rebound = None
    if record["label"] != "clean":  # the real trigger on what the defense returned, measured by the scorer
        asr_after, asr_rebound = real_asr(
            Path(zoo_dir), record, out / "run", registry, ReboundConfig(steps=rebound_steps), seed
        )
    timings = doc["timings_s"]
    outcome = MemberOutcome(
        member_id=record["id"],
        label=record["label"],
        family=record["family"],
        arch=record["arch"],
        true_target=record.get("target"),
        score=det.get("score"),
        verdict=det.get("backdoored"),
        predicted_target=det.get("target"),
        ca_before=before.get("ca"),
        ca_after=after.get("ca"),
        asr_before=record["measured"].get("asr") if record["label"] != "clean" else None,
        asr_after=asr_after,
        seconds=round(sum(v for k, v in timings.items() if "." not in k), 1),
        localisation=localisation(Path(zoo_dir), record, out / "run", doc),
        asr_rebound=asr_rebound,
    )
    atomic.write_json(out / OUTCOME_JSON, {"key": key, "code": code, "outcome": outcome.to_dict()})
    if kept is not None:
        carry_outcome(out, kept)
    return outcome.to_dict()


def carry_outcome(src: Path, dst: Path) -> None:
    """Copy a member's ``outcome.json`` and the defense's ``run/result.json`` (not its checkpoint) from
    ``src`` to ``dst``: into a folder kept in git, or from one, so an evaluation longer than a machine's
    life resumes on the next. Only an outcome that names its defense code travels (the key and code
    are checked where it is read). The old outcome goes first and the new one last, so a copy killed
    halfway leaves no outcome beside another's result."""
    outcome = (src / OUTCOME_JSON).read_bytes()
    try:
        if "code" not in json.loads(outcome):
            return  # saved before codes were recorded: reused here as before, never published
    except (ValueError, TypeError):
        return
    if (dst / OUTCOME_JSON).is_file() and (dst / OUTCOME_JSON).read_bytes() == outcome:
        return
    (dst / OUTCOME_JSON).unlink(missing_ok=True)
    if (src / "run" / "result.json").is_file():
        (dst / "run").mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(dst / "run" / "result.json", (src / "run" / "result.json").read_bytes())
    else:
        (dst / "run" / "result.json").unlink(missing_ok=True)  # an earlier copy's, not this outcome's
    dst.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(dst / OUTCOME_JSON, outcome)


def member_sources(zoo_dir: Path, record: dict[str, Any], seed: int) -> Sources:
    """What a user would give a defense for this member: its model, its world's data; train_data is read
    only by defenses that fine-tune on pairs. On the CPU, as the scorer: reproducible."""
    world = world_of(record["preset"], world=record.get("world", DEFAULT_WORLD)).data
    return Sources(
        model=str(zoo_dir / "members" / record["id"] / "model"),
        clean_data=world["clean_data"],
        eval_data=world["eval_data"],
        classes=world["classes"],
        templates=world["templates"],
        train_data=world["train_data"],
        seed=seed,
        device="cpu",
    )


def saved_result(zoo_dir: Path, record: dict[str, Any], defense: str, params: dict[str, str], seed: int) -> Any:
    """The result.json of this member's plain evaluation (no calibration, references or rebound) when
    its outcome stands for this configuration and defense code; None otherwise."""
    from ..intake.documents import read_result

    out = eval_dir(zoo_dir, defense, params, seed) / record["id"]
    if not (out / "run" / "result.json").is_file():
        return None
    registry = get_host().build_registry(quiet=True)
    key = outcome_key(record, defense, params, seed, registry)
    if saved_outcome(out, key, code_fingerprint(registry.get("defense", defense).obj), record["id"]) is None:
        return None
    return read_result(out / "run" / "result.json")


def saved_outcome(out: Path, key: str, code: str, member_id: str, coded: bool = False) -> dict[str, Any] | None:
    """The outcome saved in ``out`` when it stands for this key and defense code (keys.reusable);
    ``coded``: only one that names its code (a kept one). A damaged file is evaluated again."""
    if not (out / OUTCOME_JSON).is_file():
        return None
    try:
        saved = json.loads((out / OUTCOME_JSON).read_text(encoding="utf-8"))
        if (coded and "code" not in saved) or not reusable(saved, key, code, member_id):
            return None
        return dict(saved["outcome"])
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("%s: unreadable; evaluating the member again", out / OUTCOME_JSON)
        return None


def real_trigger_inputs(
    zoo_dir: Path, record: dict[str, Any], image_size: int, splits: tuple[str, ...] = ("eval",)
) -> tuple[EvalInputs, dict[str, Any]]:
    """What a member is scored with: its world's evaluation split, vocabulary and templates, with its
    own trigger and target; and the world's ``splits`` (the training pairs for a rebound)."""
    classnames, templates, data = world_data(record["preset"], splits, image_size, record.get("world", DEFAULT_WORLD))
    inputs = EvalInputs(
        eval_data=data["eval"],
        classnames=classnames,
        templates=templates,
        trigger=member_trigger(zoo_dir, record),
        target=record["target"],
        trigger_source="real",
    )
    return inputs, data


def real_asr(
    zoo_dir: Path,
    record: dict[str, Any],
    run_dir: Path,
    registry: Any,
    rebound_cfg: ReboundConfig = ReboundConfig(),
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """ASR@1 of the member's own trigger on the defended model (the suspect itself when unchanged),
    and, when ``rebound_cfg`` is enabled, on that model after clean fine-tuning on the world's pairs."""
    purified = run_dir / "model"
    source = purified if purified.is_dir() else zoo_dir / "members" / record["id"] / "model"
    model = load_model(registry, str(source), None, torch.device("cpu"))[1].model
    splits = ("eval", "train") if rebound_cfg.enabled else ("eval",)  # the training pairs only when they are used
    inputs, data = real_trigger_inputs(zoo_dir, record, model.image_size, splits)
    metric = MetricConfig(top_k=(1,))
    asr = evaluate(model, inputs, metric, registry, torch.device("cpu")).get("asr")
    if not rebound_cfg.enabled:
        return asr, None
    rebounded, _ = rebound(model, data["train"], rebound_cfg, seed, torch.device("cpu"))
    return asr, evaluate(rebounded, inputs, metric, registry, torch.device("cpu")).get("asr")


SMALL_TRIGGER = 0.25  # localisation is measured for real triggers that change at most this fraction of pixels


def localisation(zoo_dir: Path, record: dict[str, Any], run_dir: Path, doc: dict[str, Any]) -> float | None:
    """The fraction of the defense's reconstructed-trigger mask mass inside the real trigger's area,
    for a backdoored member whose trigger is small (a patch; not a blend, a warp or a filter); None
    when it is not, or the defense reported no non-empty trigger mask (``DefenseOutcome.trigger_masks``)."""
    import safetensors.torch

    rel = (doc.get("artifacts") or {}).get("trigger_masks")
    if record["label"] != "backdoored" or not rel or not (run_dir / rel).is_file():
        return None
    masks = safetensors.torch.load_file(str(run_dir / rel))
    mask = masks[sorted(masks)[0]].float().mean(0)  # [H, W]: the first reconstructed trigger's, by name
    x = torch.rand(4, 3, *mask.shape, generator=torch.Generator().manual_seed(0))
    area = (member_trigger(zoo_dir, record)(x) - x).abs().amax(dim=(0, 1)) > 1e-6  # pixels the trigger changes
    if float(area.float().mean()) > SMALL_TRIGGER or float(mask.sum()) <= 0:
        return None
    return float(mask[area].sum() / mask.sum())


def eval_zoo(
    zoo_dir: Path,
    defense: str,
    params: dict[str, str],
    seed: int = 0,
    grid: GridConfig | None = None,
    out_dir: Path | None = None,
    only: list[str] | None = None,
    rebound_steps: int = 0,
    calibration: tuple[Path, ...] = (),
    reference: bool = False,
    references: tuple[str, ...] = (),
    keep: Path | None = None,
) -> tuple[list[MemberOutcome], Path]:
    """Evaluate every built member that is clean or backdoored (a member whose attack did not implant
    is reported apart, not evaluated); return the outcomes and the folder they were written to.
    ``only``: these member ids alone (a quick look; their outcomes are the full run's, reused by it).
    ``keep``: outcomes also kept under KEEP/ZOO/CONFIGURATION/ID and taken from there (same key and code):
    a split evaluated over several machines, each building the members again (outcomes are keyed by
    a member's recipe, not its bytes)."""
    records = [r for r in select(read_manifest(zoo_dir), only) if r["label"] != "not_implanted"]
    default = eval_dir(zoo_dir, defense, params, seed)  # its name: this configuration's, wherever it is written
    if rebound_steps:  # its own folder: the same defense's outcomes without it stay apart
        default = default.with_name(f"{default.name}-rebound{rebound_steps}")
    compared = comparison_key(tuple(calibration), tuple(references))
    if calibration:  # likewise for each set of clean nulls
        default = default.with_name(f"{default.name}-null{config_hash(compared['calibration'])[:8]}")
    if reference:
        default = default.with_name(f"{default.name}-reference")
    if references:
        default = default.with_name(f"{default.name}-refs{config_hash(compared['references'])[:8]}")
    out = out_dir or default
    keep = Path(keep) / Path(zoo_dir).name if keep else None  # one folder holds several zoos' outcomes apart
    outputs.check_out_dir(out, [Path(zoo_dir) / "members", Path(zoo_dir) / MANIFEST, *([keep] if keep else [])], None)
    for r in records:  # a member's id names its folder under --out: a plain name, never a path
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", str(r.get("id"))):
            raise InputError(f"{Path(zoo_dir) / MANIFEST}: member id {r.get('id')!r} is not a plain name")
    code_fingerprint(get_host().build_registry(quiet=True).get("defense", defense).obj)  # this process: now
    cells = [
        Cell(
            key=f"{r['key']}-{out.name}",
            fn=eval_member,
            label=f"eval {i + 1}/{len(records)} {r['id']}",
            kwargs={
                "zoo_dir": str(zoo_dir),
                "record": r,
                "defense": defense,
                "params": dict(params),
                "seed": seed,
                "out_dir": str(out),
                "rebound_steps": rebound_steps,
                "calibration": tuple(str(c) for c in calibration),
                "reference": reference,
                "references": tuple(str(r) for r in references),
                "compared": compared,
                "keep": None if keep is None else str(keep / default.name),
            },
        )
        for i, r in enumerate(records)
    ]
    with memoised_data():  # --jobs 1: the world's splits are read once for all members
        rows = [MemberOutcome.from_dict(d) for d in run_grid(cells, grid or GridConfig())]
    return rows, out


def select(records: list[dict[str, Any]], only: list[str] | None) -> list[dict[str, Any]]:
    """The records named by ``only`` (all when None); an id the zoo does not have is an input error."""
    if only is None:
        return records
    unknown = sorted(set(only) - {r["id"] for r in records})
    if unknown:
        raise InputError(
            f"no member {', '.join(unknown)} in this zoo (its ids: {records[0]['id']} ... {records[-1]['id']})"
            if records
            else f"no member {', '.join(unknown)}: the zoo is empty"
        )
    return [r for r in records if r["id"] in only]


def run_result(out_dir: Path, member_id: str) -> dict[str, Any] | None:
    """The defense's own result.json for one evaluated member (None when it has none)."""
    path = Path(out_dir) / member_id / "run" / "result.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def not_implanted_rows(zoo_dir: Path, only: list[str] | None = None) -> list[MemberOutcome]:
    """The members whose attack did not implant, as rows the scorer lists apart."""
    return [
        MemberOutcome(
            member_id=r["id"],
            label=r["label"],
            family=r["family"],
            arch=r["arch"],
            true_target=r.get("target"),
            score=None,
            verdict=None,
            predicted_target=None,
            ca_before=r["measured"].get("ca"),
            ca_after=None,
            asr_before=r["measured"].get("asr"),
            asr_after=None,
            seconds=0.0,
        )
        for r in select(read_manifest(zoo_dir), only)
        if r["label"] == "not_implanted"
    ]
