"""``toolbox leaderboard DIR`` and ``toolbox submit RESULT``.

Results are comparable only when they were measured the same way. The *comparable metric
config* is the part of a result's ``metric_config`` that decides the numbers (metric
classes, k, the target-class convention, templates and vocabulary size, retrieval k);
the leaderboard groups results by its hash and never ranks across groups (``--strict``
refuses to print anything when there is more than one group).

A submission (schema ``toolbox.submission/1``) is a validated result reduced to what a
leaderboard needs: the comparable metric config and its hash, model hashes, versions,
seed, the attack and defense with their parameters, metrics before and after, and the
sha256 of the result file it came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic, results
from .compare import der, pct

SUBMISSION_SCHEMA = "toolbox.submission/1"


class LeaderboardError(Exception):
    """Bad input for leaderboard/submit (the CLI prints it and exits 2)."""


def comparable_metric_config(metric_config: Mapping[str, Any]) -> dict[str, Any]:
    ca, asr, retr = metric_config.get("ca", {}), metric_config.get("asr", {}), metric_config.get("retrieval") or {}
    return {
        "ca": {
            k: ca.get(k)
            for k in ("top_k", "reported_as_ca", "n_templates", "templates_example", "n_classes", "metric_class")
        },
        "asr": {k: asr.get(k) for k in ("top_k", "exclude_target_class", "metric_class")},
        "retrieval": {k: retr.get(k) for k in ("k", "metric_class", "asr_metric_class")},
        # data-loading processes and extra --metric metrics do not change CA/ASR: such results compare
        "settings": {k: v for k, v in (metric_config.get("settings") or {}).items() if k not in ("workers", "extra")},
    }


def metric_config_hash(metric_config: Mapping[str, Any]) -> str:
    text = json.dumps(comparable_metric_config(metric_config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_submission(doc: Mapping[str, Any], result_bytes: bytes) -> dict[str, Any]:
    attack = doc.get("attack") or {}
    return {
        "schema": SUBMISSION_SCHEMA,
        "created": results.now_iso(),
        "result_sha256": hashlib.sha256(result_bytes).hexdigest(),
        "result_schema": doc["schema"],
        "defense": {
            "name": doc["defense"]["name"],
            "params": doc["defense"]["params"],
            "plugin": doc["defense"].get("plugin"),
        },
        "attack": None
        if not attack
        else {"name": attack.get("name"), "params": attack.get("params"), "target": attack.get("target")},
        "model": doc["model"],
        "metric_config": comparable_metric_config(doc["metric_config"]),
        "metric_config_sha": metric_config_hash(doc["metric_config"]),
        "metrics": doc["metrics"],
        "detection": None
        if not doc.get("detection")
        else {k: doc["detection"].get(k) for k in ("backdoored", "verdict", "target")},
        "versions": doc["versions"],
        "seed": doc["seed"],
        "device": doc.get("device"),
    }


def submit(result_path: Path, out: Path | None = None) -> Path:
    """Validate ``result_path`` against the result schema and write its submission file."""
    result_path = Path(result_path)
    if not result_path.is_file():
        raise LeaderboardError(f"no such result file: {result_path}")
    raw = result_path.read_bytes()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        raise LeaderboardError(f"{result_path} is not JSON: {err}") from None
    try:
        results.validate(doc)
    except Exception as err:  # jsonschema.ValidationError: say where
        raise LeaderboardError(
            f"{result_path} is not a valid {results.SCHEMA_ID} result: {getattr(err, 'message', err)}"
        ) from None
    target = Path(out) if out else result_path.with_name("submission.json")
    atomic.write_json(target, make_submission(doc, raw))
    return target


@dataclass
class Entry:
    source: Path
    sub: dict[str, Any]

    @property
    def row(self) -> dict[str, Any]:
        b, a = self.sub["metrics"]["before"], self.sub["metrics"]["after"]
        attack = self.sub.get("attack") or {}

        def short(params: Any) -> str:
            return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]

        return {
            "defense": self.sub["defense"]["name"],
            "attack": attack.get("name") or "none",
            "defense_config": short(self.sub["defense"].get("params")),
            "attack_config": short(attack.get("params")) if attack else "-",
            "model": self.sub["model"].get("id"),
            "seed": self.sub["seed"],
            "ca": a.get("ca"),
            "asr": a.get("asr"),
            "ca_before": b.get("ca"),
            "asr_before": b.get("asr"),
            "der": der(b.get("ca"), b.get("asr"), a.get("ca"), a.get("asr")),
            "file": str(self.source),
        }


def collect(directory: Path) -> tuple[list[Entry], list[str]]:
    """Every ``result.json`` (validated, then reduced) and ``*submission*.json`` under ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LeaderboardError(f"not a directory: {directory}")
    entries: list[Entry] = []
    skipped: list[str] = []
    for path in sorted(directory.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        if doc.get("schema") == SUBMISSION_SCHEMA:
            entries.append(Entry(path, doc))
        elif doc.get("schema") == results.SCHEMA_ID:
            try:
                results.validate(doc)
            except Exception as err:
                skipped.append(f"{path}: invalid result ({getattr(err, 'message', err)})")
                continue
            entries.append(Entry(path, make_submission(doc, path.read_bytes())))
    return dedupe(entries), skipped


def dedupe(entries: list[Entry]) -> list[Entry]:
    """One entry per result: a result and the submission made of it (``toolbox submit`` writes it
    beside) hold the same ``result_sha256``; the first file in path order is kept."""
    seen: set[str] = set()
    kept = []
    for e in entries:
        sha = e.sub.get("result_sha256")
        if sha is not None and sha in seen:
            continue
        kept.append(e)
        if sha is not None:
            seen.add(sha)
    return kept


def group_by_metric_config(entries: list[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.sub["metric_config_sha"], []).append(e)
    return groups


def ranked_table(entries: list[Entry]) -> str:
    """One row per result; "defense config" and "attack config" are short hashes of the parameters, so
    the same defense or attack run with other settings is told apart. Rank by DER (higher first), then
    lower ASR, then higher CA; defenses that report no attack last."""
    rows = [e.row for e in entries]
    rows.sort(
        key=lambda r: (r["der"] is None, -(r["der"] or 0), r["asr"] if r["asr"] is not None else 2, -(r["ca"] or 0))
    )
    lines = [
        "| rank | defense | defense config | attack | attack config | model | seed | CA | ASR | CA before | "
        "ASR before | DER | file |",
        "|---" * 13 + "|",
    ]
    for i, r in enumerate(rows, 1):
        der_text = "-" if r["der"] is None else f"{100 * r['der']:.1f}"
        lines.append(
            f"| {i} | {r['defense']} | {r['defense_config']} | {r['attack']} | {r['attack_config']} | "
            f"{r['model']} | {r['seed']} | {pct(r['ca'])} | "
            f"{pct(r['asr'])} | {pct(r['ca_before'])} | {pct(r['asr_before'])} | {der_text} | {r['file']} |"
        )
    return "\n".join(lines) + "\n"


def leaderboard(directory: Path, strict: bool = False) -> tuple[str, list[str]]:
    """Markdown: one ranked table per comparable metric config; raises when ``strict`` and configs differ."""
    entries, skipped = collect(directory)
    if not entries:
        raise LeaderboardError(f"no result.json or submission files under {directory}")
    groups = group_by_metric_config(entries)
    if strict and len(groups) > 1:
        raise LeaderboardError(
            f"{len(groups)} different metric configs under {directory} "
            f"({', '.join(sorted(groups))}); results measured differently cannot be ranked "
            "together (drop --strict to see them grouped apart)"
        )
    parts = []
    for sha, members in groups.items():
        cfg = members[0].sub["metric_config"]
        parts.append(
            f"## metric config {sha} ({len(members)} results): CA top-1 over "
            f"{cfg['ca'].get('n_classes')} classes x {cfg['ca'].get('n_templates')} templates; ASR "
            f"{'excludes' if cfg['asr'].get('exclude_target_class') else 'includes'} target-class images\n"
        )
        parts.append(ranked_table(members))
    return "\n".join(parts), skipped
