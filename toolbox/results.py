"""The result document (schema ``toolbox.result/1``) and its BackdoorBench-style CSV row."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from . import atomic
from .api import state_dict_sha256  # noqa: F401  (re-exported: the host hashes models as results.state_dict_sha256)
from .escape import csv_cell

SCHEMA_ID = "toolbox.result/1"
CSV_COLUMNS = (
    "defense",
    "attack",
    "target",
    "model_sha256",
    "seed",
    "test_acc",
    "test_asr",
    "test_ra",
    "clean_acc_before",
    "asr_before",
)


@lru_cache(maxsize=1)
def result_schema() -> dict[str, Any]:
    text = resources.files("toolbox").joinpath("schema/result.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` is not a valid result."""
    import jsonschema

    jsonschema.validate(instance=doc, schema=result_schema())


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def runtime_versions(plugins: Mapping[str, str | None]) -> dict[str, Any]:
    from . import __version__
    from .compat import import_open_clip

    return {
        "tool": __version__,
        "plugins": dict(plugins),
        "torch": torch.__version__,
        "open_clip": import_open_clip().__version__,
        "python": platform.python_version(),
    }


GENERATED_PAGES = ("docs/results/", "docs/calibration.md")  # written by the benchmarks, never by hand


def is_generated(path: str) -> bool:
    """A repository path (as git prints it) that a benchmark writes."""
    return any(path == page or (page.endswith("/") and path.startswith(page)) for page in GENERATED_PAGES)


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """When, from which commit and on what machine a generated page's numbers were measured."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=normal")  # a new module is an edit too
    # the pages being regenerated are not edits to the code that measured them
    edits = (
        None
        if status is None
        else [ln for ln in status.splitlines() if not is_generated(ln.split(maxsplit=1)[-1].strip('"'))]
    )  # "XY path"
    return {
        "date": now_iso(),
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "dirty": None if edits is None else bool(edits),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(command) if command else None,
    }


def provenance_markdown(prov: Mapping[str, Any]) -> str:
    """The line a generated page opens with: date, commit (and whether the tree had edits), machine, command."""
    commit = prov.get("commit") or "unknown commit"
    commit += " (with uncommitted edits)" if prov.get("dirty") else ""
    line = (
        f"Generated {prov['date']} from commit {commit} on {prov['machine']} "
        f"(torch {prov['torch']}, {prov['threads']} threads)."
    )
    return line + (f" Command: `{prov['command']}`." if prov.get("command") else "")


def write_page(path: Path, title: str, prov: Mapping[str, Any], intro: str, body: list[str]) -> Path:
    """A generated results page: its title, the provenance line, what it shows, then ``body``."""
    text = "\n".join([f"# {title}", "", provenance_markdown(prov), "", intro, "", *body])
    atomic.write_text(path, text if text.endswith("\n") else text + "\n")
    return path


def csv_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """BackdoorBench's columns: test_acc = CA, test_asr = ASR, test_ra = robust accuracy, after defense."""
    after, before = doc["metrics"]["after"], doc["metrics"]["before"]
    attack = doc.get("attack") or {}
    return {
        "defense": doc["defense"]["name"],
        "attack": attack.get("name", ""),
        "target": attack.get("target", ""),
        "model_sha256": doc["model"]["sha256"],
        "seed": doc["seed"],
        "test_acc": after.get("ca"),
        "test_asr": after.get("asr"),
        "test_ra": after.get("ra"),
        "clean_acc_before": before.get("ca"),
        "asr_before": before.get("asr"),
    }


def write_result(out_dir: Path, doc: Mapping[str, Any]) -> Path:
    """Validate, then write ``result.json`` and ``result.csv`` atomically; return the JSON path."""
    validate(doc)
    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in csv_row(doc).items()})  # names are text
    atomic.write_text(out_dir / "result.csv", buf.getvalue())
    path = out_dir / "result.json"
    atomic.write_json(path, doc)
    return path
