"""When a saved zoo outcome stands for an evaluation: the outcome's key (the member's build, the
defense's resolved configuration, what the verdict was calibrated and compared with) and the code
it was measured with."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from ..cache import config_hash, source_hash
from ..null import read_null
from ..runner import configure

log = logging.getLogger("toolbox.zoo.evaluate")  # the messages of the evaluation they belong to

BASE = "base"  # as a --reference of zoo eval: each member's own base preset (what it was fine-tuned from)


def reusable(saved: dict[str, Any], key: str, code: str, member_id: str) -> bool:
    """A saved outcome stands for this evaluation when its configuration key matches and it was
    measured by this defense code (outcomes saved before the code was recorded are kept, with a warning)."""
    if saved.get("key") != key:
        return False
    if "code" not in saved:
        log.warning("%s: the saved outcome does not record the defense code it came from; reused as is", member_id)
        return True
    if saved["code"] != code:
        log.info("%s: the defense code changed since the saved outcome; evaluating again", member_id)
        return False
    return True


def fingerprint(source: str) -> str:
    """What a --reference is, for an outcome's key: a file's sha256 (streamed), a folder's file names,
    sizes and modification times (a model folder is rewritten whole), else the name (embedded:...)."""
    path = Path(source)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]
    if path.is_dir():
        listing = sorted(
            (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file()
        )
        return config_hash("folder", listing)
    return source


def comparison_key(calibration: tuple[Path, ...], references: tuple[str, ...]) -> dict[str, Any]:
    """The clean nulls (their files' sha256 and the tail rule's source) and the reference models an
    evaluation is calibrated and compared with, read once: they join each member's outcome key."""
    import toolbox.null as null_module

    doc: dict[str, Any] = {}
    if calibration:
        doc["calibration"] = [read_null(c).sha256 for c in calibration]  # a bad file fails here, not per member
        doc["rule"] = source_hash(null_module)
    if references:
        doc["references"] = [r if r == BASE else fingerprint(r) for r in references]
    return doc


def outcome_key(
    record: dict[str, Any],
    defense: str,
    params: dict[str, str],
    seed: int,
    registry: Any,
    rebound_steps: int = 0,
    compared: dict[str, Any] | None = None,
) -> str:
    """The member's build and the defense's resolved configuration: a stale outcome is never reused.
    ``compared``: what the verdict was calibrated and compared with (:func:`comparison_key`), and
    whether the run measured a clean reference for a null."""
    from ..api import config_values

    cfg = configure(registry.get("defense", defense).obj, params)
    options = {"rebound_steps": rebound_steps, **(compared or {})}
    extra = ({k: v for k, v in options.items() if v},) if any(options.values()) else ()  # none: earlier keys hold
    built = ({"attack_code": record["attack_code"]},) if record.get("attack_code") else ()  # its weights' maker too
    return config_hash("zoo-outcome", record["build_key"], defense, config_values(cfg), seed, *extra, *built)
