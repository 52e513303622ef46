"""``toolbox scan-data``: a dataset defense over a training set, scored when an attack made the set.

Threat model: the defender holds the (possibly poisoned) training set and a model, either the
suspect or one trained on that set, and removes flagged samples before training again. With
``--attack``, the set is the attack's own poisoned set (the one its backdoored model was trained
on, same seed), so the attack's poisoning record is the ground truth: TPR, FPR and AUROC over
samples. ``--retrain`` then trains the clean model on the purified set with the attack's own
recipe and measures CA / ASR beside the model trained on the poisoned set.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import atomic, outputs, results
from .api import Attack, AttackContext, DataScanContext, DataScanOutcome, ImageData, config_values
from .errors import InputError
from .plugins import get_host
from .retrain import retrain
from .runner import (
    Sources,
    StageTimer,
    backdoor_cached,
    check_measurement,
    class_index,
    configure,
    eval_classnames,
    load_data,
    load_model,
    seed_everything,
    vocabulary,
)

log = logging.getLogger(__name__)

SCHEMA_ID = "toolbox.scan/1"
DEFINITIONS = {
    "n_flagged": "samples the dataset defense flagged",
    "tpr": "flagged poisoned samples / poisoned samples (the attack's poisoning record)",
    "fpr": "flagged clean samples / clean samples",
    "auroc": "ROC-AUC of the defense's per-sample score against the poisoning record (sklearn)",
    "retrain": "the clean model trained with the attack's own recipe on the purified set (flagged samples "
    "removed), against the attacked model (trained on the poisoned set); CA / ASR@1 as in `toolbox run`",
}


@dataclass
class ScanRequest:
    defense: str
    sources: Sources = field(default_factory=Sources)
    attack: str | None = None
    out: Path | None = None
    defense_params: dict[str, str] = field(default_factory=dict)
    attack_params: dict[str, str] = field(default_factory=dict)
    retrain: bool = False
    skip_unreadable: bool = False
    command: list[str] = field(default_factory=list)


def detection_metrics(scores: torch.Tensor, flagged: torch.Tensor, poisoned: torch.Tensor) -> dict[str, Any]:
    """TPR / FPR of the flagged set and AUROC of the scores, against the ``poisoned`` indices."""
    from sklearn.metrics import roc_auc_score

    truth = truth_mask(len(scores), poisoned)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    both = n_pos > 0 and n_neg > 0
    return {
        "n": len(scores),
        "n_poisoned": n_pos,
        "n_flagged": int(flagged.sum()),
        "tpr": float((flagged & truth).sum()) / n_pos if n_pos else None,
        "fpr": float((flagged & ~truth).sum()) / n_neg if n_neg else None,
        "auroc": float(roc_auc_score(truth.numpy(), scores.double().numpy())) if both else None,
    }


def truth_mask(n: int, poisoned: torch.Tensor) -> torch.Tensor:
    """[n] bool: True at the poisoned indices."""
    truth = torch.zeros(n, dtype=torch.bool)
    truth[poisoned] = True
    return truth


def check_outcome(outcome: DataScanOutcome, n: int, name: str) -> None:
    """A plugin's answer must cover every sample: one finite score and one flag each."""
    s, f = outcome.scores, outcome.flagged
    if not (isinstance(s, torch.Tensor) and s.shape == (n,) and bool(torch.isfinite(s).all())):
        raise RuntimeError(
            f"dataset defense {name!r} returned scores of shape "
            f"{tuple(getattr(s, 'shape', ()))} (or non-finite); expected {n} finite values"
        )
    if not (isinstance(f, torch.Tensor) and f.dtype == torch.bool and f.shape == (n,)):
        raise RuntimeError(f"dataset defense {name!r} must flag with a bool tensor of shape ({n},)")


def default_out(req: ScanRequest) -> Path:
    return Path("results") / f"scan-{req.attack or 'data'}-{req.defense}-seed{req.sources.seed}"


def scan(req: ScanRequest) -> Path:
    """Run one dataset defense; return the path of the written scan.json."""
    host = get_host()
    registry = host.build_registry()
    src = req.sources
    dreg, defense, areg, attack = _components(req, registry)
    device = check_measurement(src)
    out_dir = Path(req.out) if req.out else default_out(req)
    outputs.check_out_dir(out_dir, src.input_paths(), outputs.SCAN_OUTPUTS)
    seed_everything(src.seed)
    timer = StageTimer()

    with outputs.Staging(out_dir, outputs.SCAN_OUTPUTS, "scan.json") as staging:  # OUT is locked from here
        with timer.stage("load_model"):
            _adapter, loaded = load_model(registry, src.model_source, src.model_format, device)
        with timer.stage("load_data"):
            classnames, templates, train, eval_data = _load_sets(req, registry, loaded, attack is not None)
            clean = _clean_data(req, registry, loaded, classnames, getattr(defense, "uses_clean_data", False))
        assert staging.path is not None
        suspect, data, truth, attack_doc = loaded.model, train, None, None
        if attack is not None and areg is not None:
            suspect, data, truth, attack_doc = _poison(
                req, attack, areg.plugin, loaded, train, classnames, device, staging.path, timer
            )
        work = staging.path / "scan-artifacts"
        work.mkdir()
        suspect.eval()
        with timer.stage("scan"):
            outcome = defense.scan(
                DataScanContext(
                    data=data,
                    model=suspect,
                    classnames=classnames,
                    templates=templates,
                    seed=src.seed,
                    device=device,
                    workdir=work,
                    base_model=loaded.model,
                    clean_data=clean,
                )
            )
        check_outcome(outcome, len(data.dataset), req.defense)
        scores, flagged = outcome.scores.detach().cpu(), outcome.flagged.detach().cpu()
        for name, secs in outcome.timings_s.items():
            timer.timings[f"scan.{name}"] = round(secs, 3)
        metrics: dict[str, Any] = {
            "n_flagged": int(flagged.sum()),
            "detection": None if truth is None else detection_metrics(scores, flagged, truth),
        }
        if req.retrain:
            assert attack is not None and eval_data is not None
            metrics["retrain"] = retrain(
                attack,
                loaded.model,
                suspect,
                data,
                flagged,
                eval_data,
                classnames,
                templates,
                req,
                registry,
                device,
                timer,
            )
        _write_scores(staging.path / "scores.csv", scores, flagged, truth)
        sets = (data, train, clean)
        doc = _document(req, host, loaded, attack_doc, dreg, defense, sets, metrics, outcome, timer, device)
        atomic.write_json(staging.path / "scan.json", doc)
        return staging.commit()


def _document(
    req: ScanRequest,
    host: Any,
    loaded: Any,
    attack_doc: dict[str, Any] | None,
    dreg: Any,
    defense: Any,
    sets: tuple[ImageData, ImageData, ImageData | None],
    metrics: dict[str, Any],
    outcome: DataScanOutcome,
    timer: StageTimer,
    device: torch.device,
) -> dict[str, Any]:
    """scan.json: what was scanned, with which model and settings, and what came out."""
    src, (data, train, clean) = req.sources, sets
    return {
        "schema": SCHEMA_ID,
        "created": results.now_iso(),
        "command": req.command,
        "versions": results.runtime_versions(host.loaded_versions()),
        "model": {"id": src.model_source, "arch": loaded.arch, "format": loaded.format, "sha256": loaded.sha256},
        "attack": attack_doc,
        "defense": {"name": req.defense, "params": config_values(defense.config), "plugin": dreg.plugin},
        "data": {
            "source": data.source,
            "kind": data.kind,
            "n": len(data.dataset),
            "skipped_unreadable": list(train.skipped),
        },
        "clean_data": None  # the defender's own images, for a defense that learns from them
        if clean is None
        else {"source": clean.source, "n": len(clean.dataset), "skipped_unreadable": list(clean.skipped)},
        "definitions": DEFINITIONS,
        "metrics": metrics,
        "scan_info": outcome.info,
        "artifacts": {k: str(Path("scan-artifacts") / v) for k, v in outcome.artifacts.items()},
        "timings_s": timer.timings,
        "seed": src.seed,
        "device": str(device),
        "device_requested": src.device,
    }


def _components(req: ScanRequest, registry: Any) -> tuple[Any, Any, Any, Any]:
    """The dataset defense and the optional attack (registry entry and instance each), checked against the request."""
    dreg = registry.get("dataset_defense", req.defense)
    defense = dreg.obj(configure(dreg.obj, req.defense_params))
    areg = registry.get("attack", req.attack) if req.attack else None
    attack = areg.obj(configure(areg.obj, req.attack_params)) if areg else None
    if req.retrain and attack is None:
        raise InputError("--retrain trains with the attack's own recipe: pass --attack")
    if attack is not None and type(attack).poison is Attack.poison:
        raise InputError(
            f"attack {req.attack!r} poisons no dataset (it edits the model's weights); "
            "scan-data needs an attack that poisons training data"
        )
    if req.retrain and attack is not None and type(attack).train_on is Attack.train_on:
        raise InputError(f"attack {req.attack!r} has no training recipe for --retrain")
    return dreg, defense, areg, attack


def _load_sets(
    req: ScanRequest, registry: Any, loaded: Any, attacked: bool
) -> tuple[list[str], list[str], ImageData, ImageData | None]:
    """Class names, templates, the training set to scan and (for ``--retrain``) the labelled eval set."""
    src = req.sources
    defaults = loaded.data_defaults
    classnames, templates = vocabulary(src, defaults)
    train_src = src.train_data or defaults.get("train_data")
    if not train_src:
        raise InputError("no training set to scan: pass --train-data (an image-caption CSV, labels.csv, ...)")
    train = load_data(registry, train_src, loaded.model.image_size, classnames, req.skip_unreadable)
    eval_src = src.eval_data or defaults.get("eval_data")
    eval_data = (
        load_data(registry, eval_src, loaded.model.image_size, classnames, req.skip_unreadable)
        if req.retrain and eval_src
        else None
    )
    if req.retrain and eval_data is None:
        raise InputError("--retrain measures CA / ASR: pass --eval-data (labelled)")
    if eval_data is not None and eval_data.kind != "labelled":
        raise InputError(f"--eval-data must be labelled data; {eval_data.source} is {eval_data.kind}")
    classnames = eval_classnames(eval_data, classnames, src)
    if attacked and train.kind != "captioned":
        raise InputError(f"attack {req.attack!r} poisons image-caption data; {train.source} is {train.kind}")
    return classnames, templates, train, eval_data


def _clean_data(req: ScanRequest, registry: Any, loaded: Any, classnames: list[str], used: bool) -> ImageData | None:
    """The defender's clean images (--clean-data, else the model's own), for a defense that learns from them."""
    if not used:
        if req.sources.clean_data:
            raise InputError(f"dataset defense {req.defense!r} learns from no clean images: drop --clean-data")
        return None
    source = req.sources.clean_data or loaded.data_defaults.get("clean_data")
    if not source:
        raise InputError(f"dataset defense {req.defense!r} learns from clean images: pass --clean-data")
    return load_data(registry, source, loaded.model.image_size, classnames, req.skip_unreadable)


def _poison(
    req: ScanRequest,
    attack: Any,
    plugin: Any,
    loaded: Any,
    train: ImageData,
    classnames: list[str],
    device: torch.device,
    cache_dir: Path,
    timer: StageTimer,
) -> tuple[Any, ImageData, torch.Tensor, dict]:
    """The attack's backdoored model and poisoned set, its poisoning record (the ground truth) and its doc."""
    src = req.sources
    target = attack.target_label()
    class_index(classnames, target, "attack target")
    with timer.stage("attack"):
        ctx = AttackContext(
            model=loaded.model,
            train_data=train,
            classnames=classnames,
            seed=src.seed,
            device=device,
            cache_dir=cache_dir,
        )
        suspect, record = backdoor_cached(
            attack, lambda: ctx, loaded.model, src.seed, device, loaded.sha256, train.source
        )
        poisoned = attack.poison(train, src.seed)
    if poisoned is None:
        raise RuntimeError(f"attack {req.attack!r} returned no poisoned set")
    truth = poisoned.poisoned
    attack_doc = {
        "name": req.attack,
        "params": config_values(attack.config),
        "target": target,
        "plugin": plugin,
        "n_poisoned": len(truth),
        **record,
    }
    return suspect, poisoned.data, truth, attack_doc


def _write_scores(path: Path, scores: torch.Tensor, flagged: torch.Tensor, poisoned: torch.Tensor | None) -> None:
    truth = truth_mask(len(scores), poisoned if poisoned is not None else torch.zeros(0, dtype=torch.long))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "score", "flagged"] + (["poisoned"] if poisoned is not None else []))
        for i, (s, f) in enumerate(zip(scores.tolist(), flagged.tolist())):
            w.writerow([i, f"{s:.6g}", int(f)] + ([int(truth[i])] if poisoned is not None else []))


def summary(doc: dict[str, Any], path: Path) -> str:
    """A few lines for the terminal."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    lines = [
        f"scan      {doc['defense']['name']} over {doc['data']['n']} samples of {doc['data']['source']}: "
        f"{doc['metrics']['n_flagged']} flagged"
    ]
    det = doc["metrics"].get("detection")
    if det:
        auroc = "-" if det["auroc"] is None else f"{det['auroc']:.3f}"
        lines.append(
            f"detection {det['n_poisoned']} poisoned: TPR {pct(det['tpr'])}, FPR {pct(det['fpr'])}, AUROC {auroc}"
        )
    re = doc["metrics"].get("retrain")
    if re:
        for key, label in (("poisoned_set", "trained on the poisoned set"), ("purified_set", "on the purified set")):
            m = re[key] or {}
            lines.append(
                f"{'retrain' if key == 'poisoned_set' else '':<10}{label}: CA {pct(m.get('ca'))}, "
                f"ASR@1 {pct(m.get('asr'))}"
            )
        if re.get("note"):
            lines.append(f"{'':<10}({re['note']})")
    lines.append(f"files     {path} and scores.csv beside it")
    return "\n".join(lines)
