"""``toolbox compare``: the paper's Table 1 as one command.

Every (attack, defense) cell is one ordinary :func:`toolbox.runner.run`, written to a cache
entry keyed by the cell's full configuration (model source, attack and defense with their
resolved parameters, data sources, seed, metric switches, the versions of the plugins it uses). A cell
whose ``result.json`` exists, run by the attack and defense code loaded now, is reused, so an
interrupted comparison resumes where it stopped; ``--no-reuse`` runs every cell again. With
``--keep-cells DIR`` each finished cell's result (not its checkpoint) is also copied to DIR, and
taken from there when the cache lacks it: a grid longer than a machine's life resumes on the next
one (cell keys of an embedded preset name no local path), under the same code checks.

Defense effectiveness rate (BackdoorBench's simplified DER, Wu et al. 2022):
``DER = (max(0, ASR_bd - ASR_def) - max(0, CA_bd - CA_def) + 1) / 2``, in [0, 1];
0.5 means "nothing changed", 1 means "ASR removed at no CA cost".
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic, escape, grid, outputs
from .api import config_values
from .cache import (
    cache_root,
    carry_result,
    code_fingerprint,
    config_hash,
    entry_lock,
    made_by,
    module_fingerprint,
    stamp_code,
)
from .errors import InputError
from .evaluation import IMPLANT_MARGIN, trigger_effect
from .intake import documents
from .plugins import HOST_PLUGIN, get_host
from .primitives.plots import ca_asr_scatter_png
from .runner import (
    RunRequest,
    Sources,
    check_measurement,
    configure,
    memoised_data,
    parse_device,
    run,
    source_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass
class CompareRequest:
    attacks: list[str]
    defenses: list[str]
    out: Path
    sources: Sources = field(default_factory=Sources)
    defense_params: dict[str, dict[str, str]] = field(default_factory=dict)  # defense -> {key: value}
    attack_params: dict[str, dict[str, str]] = field(default_factory=dict)  # attack -> {key: value}
    reuse: bool = True
    grid: grid.GridConfig = field(default_factory=grid.GridConfig)  # local, a process pool, or Slurm
    keep_cells: Path | None = None  # finished cells' results also kept here (e.g. in git) and taken from here


@dataclass
class Cell:
    attack: str
    defense: str
    key: str
    result_path: Path
    from_cache: bool
    seconds: float
    doc: dict[str, Any]

    @property
    def before(self) -> dict[str, Any]:
        return self.doc["metrics"]["before"]

    @property
    def after(self) -> dict[str, Any]:
        return self.doc["metrics"]["after"]

    def value(self, metric: str) -> float | None:
        """A table entry: ``ca`` / ``asr`` after the defense, ``asr_rebound`` after the rebound fine-tuning."""
        if metric == "asr_rebound":
            return (self.doc["metrics"].get("rebound") or {}).get("asr")
        return self.after.get(metric)


def der(
    ca_before: float | None, asr_before: float | None, ca_after: float | None, asr_after: float | None
) -> float | None:
    """BackdoorBench's simplified defense effectiveness rate (fractions in, fraction out)."""
    if None in (ca_before, asr_before, ca_after, asr_after):
        return None
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1) / 2  # type: ignore[operator]


def split_params(pairs: Mapping[str, str], names: list[str], what: str) -> dict[str, dict[str, str]]:
    """``{"ft.lr": "1e-4"}`` -> ``{"ft": {"lr": "1e-4"}}``; the prefix must be one of ``names``."""
    out: dict[str, dict[str, str]] = {}
    for key, value in pairs.items():
        owner, _, rest = key.partition(".")
        if not rest or owner not in names:
            raise InputError(f"{what} parameter {key!r} must be NAME.KEY=VALUE with NAME one of {', '.join(names)}")
        out.setdefault(owner, {})[rest] = value
    return out


def cell_key(
    req: CompareRequest,
    attack: str,
    defense: str,
    attack_cfg: dict[str, Any],
    defense_cfg: dict[str, Any],
    versions: dict[str, Any],
) -> str:
    src = req.sources
    sources = {
        k: (None if v is None else source_fingerprint(v))
        for k, v in {
            "model": src.model,
            "clean_data": src.clean_data,
            "eval_data": src.eval_data,
            **({"shift_data": src.shift_data} if src.shift_data else {}),  # absent: old keys hold
            "retrieval_data": src.retrieval_data,
            "train_data": src.train_data,
            "classes": src.classes,
            "templates": src.templates,
        }.items()
    }
    parts: tuple = (
        ({"rebound": [src.rebound_steps, src.rebound_lr]},) if src.rebound_steps else ()
    )  # absent: old keys hold
    if src.eval_batch_size != Sources.eval_batch_size:  # batches round differently
        parts += ({"eval_batch_size": src.eval_batch_size},)
    return config_hash(
        "compare-cell",
        src.model_source,
        src.model_format,
        sources,
        attack,
        attack_cfg,
        defense,
        defense_cfg,
        src.seed,
        str(parse_device(src.device)),
        src.asr_include_target,
        versions,
        *parts,
    )


def cell_versions(registry: Any, versions: dict[str, Any], attack: str, defense: str) -> dict[str, Any]:
    """The versions of the plugins a cell uses (the host, the adapters and metrics, its attack's and its
    defense's): installing or removing an unrelated plugin leaves its key as it was."""
    from .metrics import METRICS

    used = {r.plugin for kind in ("model_adapter", "dataset_adapter") for r in registry.entries[kind].values()}
    used |= {registry.get("metric", cls.name).plugin for cls in METRICS}  # a cell measures only these
    used |= {HOST_PLUGIN, registry.get("defense", defense).plugin}
    if attack != "none":
        used.add(registry.get("attack", attack).plugin)
    return {p: versions.get(p) for p in sorted(used)}


def cell_code(registry: Any, attack: str, defense: str) -> dict[str, str]:
    """The code a cell runs: its defense's and attack's plugin packages (an editable install keeps its version
    while its code changes); the host's ``none`` is its version, in the key (not every host edit)."""
    code = {}
    if (entry := registry.get("defense", defense)).plugin != HOST_PLUGIN:
        code["defense"] = code_fingerprint(entry.obj)
    if attack != "none":  # its module and what it imports of its package: a sibling attack is not its code
        code["attack"] = module_fingerprint(registry.get("attack", attack).obj)
    return code


def run_cell(req: CompareRequest, attack: str, defense: str, key: str) -> Cell:
    entry = cache_root() / "cells" / key
    start = time.perf_counter()
    code = cell_code(get_host().build_registry(quiet=True), attack, defense)  # a grid job's own, as it loaded it
    with entry_lock(entry):
        path = entry / "result.json"
        if req.keep_cells and req.reuse and not path.exists():
            carry_result(req.keep_cells / key, entry)  # another machine's run of this cell, checked as a cached one
        doc = documents.reusable_result(path) if req.reuse else None  # a damaged entry is run again, not trusted
        if doc is not None and not made_by(entry, code, path):
            doc = None
        if not (cached := doc is not None):
            stamp_code(entry, code, None)
            run(
                RunRequest(
                    defense=defense,
                    attack=None if attack == "none" else attack,
                    sources=req.sources,
                    out=entry,
                    defense_params=dict(req.defense_params.get(defense, {})),
                    attack_params=dict(req.attack_params.get(attack, {})),
                    command=["toolbox", "compare", "(cell)", "--attack", attack, "--defense", defense],
                )
            )
            doc = json.loads(path.read_text())
            stamp_code(entry, code, path)  # beside the entry, not in it: the run owns its out folder
        if req.keep_cells:
            carry_result(entry, req.keep_cells / key)
    return Cell(attack, defense, key, path, cached, time.perf_counter() - start, doc)


def compare(req: CompareRequest) -> list[Cell]:
    """Run or reuse every cell, then write the table files under ``req.out``."""
    host = get_host()
    registry = host.build_registry()
    for name in req.defenses:
        registry.get("defense", name)
    for name in req.attacks:
        if name != "none":
            registry.get("attack", name)
    versions = host.loaded_versions()
    configs: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    for attack in req.attacks:  # every parameter is checked before the first cell runs
        acfg = (
            {}
            if attack == "none"
            else config_values(configure(registry.get("attack", attack).obj, dict(req.attack_params.get(attack, {}))))
        )
        for defense in req.defenses:
            dcfg = config_values(
                configure(registry.get("defense", defense).obj, dict(req.defense_params.get(defense, {})))
            )
            configs[(attack, defense)] = (acfg, dcfg)
    check_measurement(req.sources)
    kept = [req.keep_cells] if req.keep_cells else []  # read and written, but never replaced by the tables
    outputs.check_out_dir(req.out, [*req.sources.input_paths(), *kept], outputs.COMPARE_OUTPUTS)
    total = len(configs)
    jobs = []
    for i, ((attack, defense), (acfg, dcfg)) in enumerate(configs.items(), 1):
        key = cell_key(req, attack, defense, acfg, dcfg, cell_versions(registry, versions, attack, defense))
        cell_code(registry, attack, defense)  # this process's code: taken now, as it loaded it
        jobs.append(
            grid.Cell(
                key=key,
                fn=run_cell,
                label=f"compare: cell {i}/{total} attack={attack} defense={defense} (key {key})",
                kwargs={"req": req, "attack": attack, "defense": defense, "key": key},
            )
        )
    with outputs.Staging(req.out, outputs.COMPARE_OUTPUTS, "compare.md") as staging, memoised_data():
        cells: list[Cell] = grid.run_grid(jobs, req.grid)  # OUT stays locked: a second compare into it is refused
        write_outputs(req, cells, staging.dir)
        staging.commit()
    for cell in cells:
        log.info(
            "compare: %s/%s %s in %.0f s: CA %s ASR %s",
            cell.attack,
            cell.defense,
            "reused from cache" if cell.from_cache else "done",
            cell.seconds,
            pct(cell.after.get("ca")),
            pct(cell.after.get("asr")),
        )
    return cells


# --------------------------------------------------------------------------- tables


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def cell_row(cell: Cell) -> dict[str, Any]:
    b, a = cell.before, cell.after
    return {
        "attack": cell.attack,
        "defense": cell.defense,
        "ca_before": b.get("ca"),
        "asr_before": b.get("asr"),
        "ca_after": a.get("ca"),
        "asr_after": a.get("asr"),
        "asr_top10_after": a.get("asr_top10"),
        "retrieval_recall10_after": a.get("retrieval_recall@10"),
        "retrieval_asr10_after": a.get("retrieval_asr@10"),
        "asr_rebound": cell.value("asr_rebound"),
        "der": der(b.get("ca"), b.get("asr"), a.get("ca"), a.get("asr")),
        "detected_target": (cell.doc.get("detection") or {}).get("target"),
        "defense_seconds": cell.doc["timings_s"].get("defense"),
        "from_cache": cell.from_cache,
        "cell_key": cell.key,
        "result": str(cell.result_path),
    }


def markdown_table(cells: list[Cell]) -> str:
    """Defenses as rows, CA / ASR per attack as columns (percent), best of two or more defenses in bold."""
    attacks = list(dict.fromkeys(c.attack for c in cells))
    defenses = list(dict.fromkeys(c.defense for c in cells))
    by = {(c.attack, c.defense): c for c in cells}
    metrics = ("ca", "asr", "asr_rebound") if any(c.value("asr_rebound") is not None for c in cells) else ("ca", "asr")
    best: dict[tuple[str, str], float] = {}
    for attack in attacks:
        rivals = [by[(attack, d)] for d in defenses if d != "none" and (attack, d) in by]
        if len(rivals) < 2:  # a lone defense is not "best" of anything
            continue
        for metric in metrics:
            values = [v for c in rivals if (v := c.value(metric)) is not None]
            if values:
                best[(attack, metric)] = max(values) if metric == "ca" else min(values)
    names = {"ca": "CA", "asr": "ASR", "asr_rebound": "ASR rebound"}
    head = "| defense | " + " | ".join(escape.markdown_cell(f"{a} {names[m]}") for a in attacks for m in metrics)
    head += " | mean DER |"
    lines = [head, "|" + "---|" * (len(metrics) * len(attacks) + 2)]
    for d in defenses:
        parts, ders = [], []
        for attack in attacks:
            c = by.get((attack, d))
            if c is None:
                parts += [""] * len(metrics)
                continue
            for metric in metrics:
                v = c.value(metric)
                text = pct(v)
                if d != "none" and v is not None and best.get((attack, metric)) == v:
                    text = f"**{text}**"
                parts.append(text)
            value = cell_row(c)["der"]
            if value is not None and attack != "none":
                ders.append(value)
        mean_der = f"{100 * sum(ders) / len(ders):.1f}" if ders else "-"
        lines.append(f"| {escape.markdown_cell(d)} | " + " | ".join(parts) + f" | {mean_der} |")
    weak = not_implanted(cells)
    if weak:
        lines.append(
            f"\nDid not implant (the trigger adds under {100 * IMPLANT_MARGIN:.0f} points of ASR@1 on the "
            f"undefended model): {escape.markdown_cell(', '.join(weak))}; those columns measure no backdoor."
        )
    return "\n".join(lines) + "\n"


def not_implanted(cells: list[Cell]) -> list[str]:
    """Attacks whose trigger barely moves the attacked model (ASR@1 minus the untriggered target rate)."""
    effects = ((c.attack, trigger_effect(c.doc["metrics"]["before"])) for c in cells if c.attack != "none")
    return list(dict.fromkeys(a for a, effect in effects if effect is not None and effect < IMPLANT_MARGIN))


def write_outputs(req: CompareRequest, cells: list[Cell], where: Path | None = None) -> None:
    out = Path(where or req.out)  # the staging folder, whose files the commit moves into req.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [cell_row(c) for c in cells]
    table = markdown_table(cells)
    metric_note = (
        "CA = zero-shot top-1 accuracy (%), ASR = ASR@1 with the real trigger (%), target-class images "
        f"{'included' if req.sources.asr_include_target else 'excluded'}; best of the defenses in bold; "
        "DER = BackdoorBench's simplified defense effectiveness rate (%), mean over attacks"
        + (
            f"; ASR rebound = ASR after {req.sources.rebound_steps} steps of clean fine-tuning at lr "
            f"{req.sources.rebound_lr:g} (toolbox/rebound.py)"
            if req.sources.rebound_steps
            else ""
        )
        + ".\n"
    )
    atomic.write_text(out / "compare.md", table + "\n" + metric_note)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["attack", "defense"])
    writer.writeheader()
    writer.writerows(escape.csv_row(r) for r in rows)  # a name cannot be a spreadsheet formula
    atomic.write_text(out / "compare.csv", buf.getvalue())
    atomic.write_json(
        out / "compare.json",
        {
            "schema": "toolbox.compare/1",
            "seed": req.sources.seed,
            "preset": req.sources.preset,
            "model": req.sources.model,
            "attacks": req.attacks,
            "defenses": req.defenses,
            "asr_include_target": req.sources.asr_include_target,
            "defense_params": req.defense_params,
            "attack_params": req.attack_params,
            "cells": rows,
            "metric_config": cells[0].doc["metric_config"] if cells else None,
        },
    )
    atomic.write_bytes(out / "compare_scatter.png", ca_asr_scatter_png(rows))
