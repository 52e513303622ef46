"""``toolbox leaderboard DIR`` and ``toolbox submit RESULT``.

Results are comparable only when they were measured the same way. The *comparable metric
config* is the part of a result's ``metric_config`` that decides the numbers (metric
classes, k, the target-class convention, templates and vocabulary size, retrieval k);
the leaderboard groups results by its hash and never ranks across groups (``--strict``
refuses to print anything when there is more than one group).

A submission (schema ``toolbox.submission/1``) is a validated result reduced to what a
leaderboard needs: the comparable metric config and its hash, model hashes, versions,
seed, the attack and defense with their parameters, metrics before and after, and the
sha256 of the result file it came from. Its ``schema`` key is the marker ``toolbox submit`` goes by:
an existing ``--out`` is replaced only when it is a submission (a file this toolbox wrote), never when it
is the input, another file, a directory, a link or a special file.

Every document is read through :mod:`toolbox.intake.documents` (regular files only, strict JSON,
finite metrics); a file the leaderboard cannot use is named and skipped, and every text it quotes is
escaped (:mod:`toolbox.escape`), so a name holding ``|`` or a newline cannot add a row.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import atomic, results
from .compare import der, pct
from .errors import InputError
from .escape import markdown_cell, shown
from .intake import documents

SUBMISSION_SCHEMA = "toolbox.submission/1"
MAX_SUBMISSION_BYTES = 2**20  # what ``--out`` may hold to be read as a submission this toolbox wrote


class LeaderboardError(InputError):
    """Bad input for leaderboard/submit (the CLI prints it and exits 2)."""


@lru_cache(maxsize=1)
def submission_schema() -> dict[str, Any]:
    text = resources.files("toolbox").joinpath("schema/submission.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_submission(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` is not a valid submission."""
    import jsonschema

    jsonschema.validate(instance=doc, schema=submission_schema())


def check_submission(doc: Any, where: Path | str) -> dict[str, Any]:
    """A parsed document as a valid submission with finite metrics (else an InputError naming the key)."""
    checked = documents.validated(doc, validate_submission, where, f"{SUBMISSION_SCHEMA} submission")
    documents.check_metrics(checked["metrics"], where)
    return checked


def comparable_metric_config(metric_config: Mapping[str, Any]) -> dict[str, Any]:
    ca, asr, retr = metric_config.get("ca", {}), metric_config.get("asr", {}), metric_config.get("retrieval") or {}
    settings = metric_config.get("settings") or {}
    return {
        "ca": {
            k: ca.get(k)
            for k in ("top_k", "reported_as_ca", "n_templates", "templates_example", "n_classes", "metric_class")
        },
        "asr": {k: asr.get(k) for k in ("top_k", "exclude_target_class", "metric_class")},
        "retrieval": {k: retr.get(k) for k in ("k", "metric_class", "asr_metric_class")},
        # data-loading processes and extra --metric metrics do not change CA/ASR: such results compare
        "settings": {k: v for k, v in settings.items() if k not in ("workers", "extra")}
        if isinstance(settings, Mapping)
        else settings,  # the schema leaves it open: a result from elsewhere is hashed as it is
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


def submit(result_path: Path, out: Path | str | None = None) -> Path:
    """Check ``result_path`` (the intake's rules, the result schema) and write its submission file."""
    result_path = Path(result_path)
    if not os.path.lexists(result_path):
        raise LeaderboardError(f"no such result file: {shown(result_path)}")
    raw = documents.read_bytes(result_path)  # a FIFO, a device, a folder: refused unopened
    target = submission_target(result_path, out)
    doc = documents.check_result(documents.parse(raw, result_path), result_path)
    text = json.dumps(make_submission(doc, raw), indent=2, allow_nan=False)  # a bare NaN token is not JSON
    atomic.write_text(target, text + "\n")
    return target


def submission_target(result_path: Path, out: Path | str | None) -> Path:
    """Where the submission goes, refused before anything is written when writing it would replace what
    this toolbox did not write: the input itself, another file, a directory, a link, a special file."""
    if out is not None and str(out) == "":
        raise LeaderboardError("--out is empty: name the submission file to write")
    target = Path(out) if out is not None else result_path.with_name("submission.json")
    label = f"--out {shown(target)}" if out is not None else f"the default submission file {shown(target)}"
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file where a folder above it should be
        return _new_file_target(target, label)
    except (OSError, ValueError) as err:
        raise LeaderboardError(f"{label} cannot be written: {shown(getattr(err, 'strerror', None) or err)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise LeaderboardError(f"{label} is a symbolic link; name the file itself")
    if stat.S_ISDIR(st.st_mode):
        raise LeaderboardError(f"{label} is a directory; name the submission file to write in it")
    if not stat.S_ISREG(st.st_mode):
        raise LeaderboardError(f"{label} is not a regular file")
    if os.path.samefile(target, result_path):  # a hard link to it too
        raise LeaderboardError(f"{label} is the input result {shown(result_path)}; name another file")
    if not is_submission_file(target):
        raise LeaderboardError(
            f'{label} exists and is not a submission this toolbox wrote (no "schema": '
            f'"{SUBMISSION_SCHEMA}"); it is left as it is: move it or name another file with --out'
        )
    return _writable(target, target.parent, label)


def _new_file_target(target: Path, label: str) -> Path:
    """A path that does not exist yet: the nearest folder above it that exists must be a folder."""
    for parent in target.parents:
        if parent.is_dir():
            return _writable(target, parent, label)
        if os.path.lexists(parent):
            raise LeaderboardError(f"{label} cannot be written: {shown(parent)} is not a directory")
    return target


def _writable(target: Path, folder: Path, label: str) -> Path:
    """``target`` when ``folder`` (where its temporary file is made) can be written, else an InputError."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LeaderboardError(f"{label} cannot be written: the folder {shown(folder)} is not writable")
    return target


def is_submission_file(path: Path) -> bool:
    """Whether ``path`` is a submission this toolbox wrote (strict JSON whose ``schema`` is the marker)."""
    try:
        doc = documents.parse(documents.read_bytes(path, MAX_SUBMISSION_BYTES, "submission"), path)
    except InputError:
        return False
    return isinstance(doc, dict) and doc.get("schema") == SUBMISSION_SCHEMA


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
    """Every ``result.json`` (validated, then reduced) and submission (validated) under ``directory``;
    a ``*.json`` that cannot be read as one is named in the second list (path: why) and skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LeaderboardError(f"not a directory: {shown(directory)}")
    entries: list[Entry] = []
    skipped: list[str] = []
    for path in sorted(directory.rglob("*.json")):
        try:
            entry = read_entry(path)
        except InputError as err:  # its message names the file and why
            skipped.append(str(err))
            continue
        if entry is not None:
            entries.append(entry)
    return dedupe(entries), skipped


def read_entry(path: Path) -> Entry | None:
    """``path`` as a leaderboard entry, None when it is other JSON (a compare.json, a model config);
    an InputError when it is no regular file, no strict JSON, or an invalid result or submission."""
    raw = documents.read_bytes(path)
    doc = documents.parse(raw, path)
    kind = doc.get("schema") if isinstance(doc, dict) else None
    if kind == SUBMISSION_SCHEMA:
        return Entry(path, check_submission(doc, path))
    if kind == results.SCHEMA_ID:
        return Entry(path, make_submission(documents.check_result(doc, path), raw))
    return None


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
        text = {k: markdown_cell(r[k]) for k in ("defense", "attack", "model", "file")}  # names from the files
        lines.append(
            f"| {i} | {text['defense']} | {r['defense_config']} | {text['attack']} | {r['attack_config']} | "
            f"{text['model']} | {r['seed']} | {pct(r['ca'])} | "
            f"{pct(r['asr'])} | {pct(r['ca_before'])} | {pct(r['asr_before'])} | {der_text} | {text['file']} |"
        )
    return "\n".join(lines) + "\n"


def leaderboard(directory: Path, strict: bool = False) -> tuple[str, list[str]]:
    """Markdown: one ranked table per comparable metric config, and the files skipped (path: why);
    raises when ``strict`` and configs differ or a file was skipped."""
    entries, skipped = collect(directory)
    where = shown(directory)
    if strict and skipped:
        raise LeaderboardError(f"{len(skipped)} file(s) under {where} cannot be ranked (--strict); first: {skipped[0]}")
    if not entries:
        also = f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""
        raise LeaderboardError(f"no result.json or submission files under {where}{also}")
    groups = group_by_metric_config(entries)
    if strict and len(groups) > 1:
        raise LeaderboardError(
            f"{len(groups)} different metric configs under {where} "
            f"({', '.join(sorted(groups))}); results measured differently cannot be ranked "
            "together (drop --strict to see them grouped apart)"
        )
    parts = []
    for sha, members in groups.items():
        ca, asr = members[0].sub["metric_config"]["ca"], members[0].sub["metric_config"]["asr"]
        parts.append(
            f"## metric config {sha} ({len(members)} results): CA top-1 over "
            f"{markdown_cell(ca.get('n_classes'))} classes x {markdown_cell(ca.get('n_templates'))} templates; "
            f"ASR {'excludes' if asr.get('exclude_target_class') else 'includes'} target-class images\n"
        )
        parts.append(ranked_table(members))
    return "\n".join(parts), skipped
