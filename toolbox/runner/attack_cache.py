"""Attacked models, cached: a backdoor is trained once per everything it depends on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..api import AttackContext, ClipModel, config_values


def source_fingerprint(source: str) -> dict[str, Any]:
    """Path plus size and modification time: a changed training set is a different cache key."""
    path = Path(source)
    if not path.exists():
        return {"source": source}
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def built_by(entry: Path, code: str) -> bool:
    """Whether the attacked model in ``entry`` exists and was built by ``code`` (``cache.recorded_code``)."""
    import json

    from ..cache import recorded_code

    record = entry / "attack.json"
    return (
        record.exists()
        and recorded_code(record, json.loads(record.read_text()), "code", code, "attacked model") is not None
    )


def backdoor_cached(
    attack: Any,
    context: Callable[[], AttackContext],
    base: ClipModel,
    seed: int,
    device: torch.device,
    model_sha: str,
    train_source: str,
    subset: dict[str, Any] | None = None,
) -> tuple[ClipModel, dict]:
    """``base`` backdoored by ``attack``, from the cache or built now and cached (keyed by everything
    it depends on; ``subset`` names the part of ``train_source`` the attack trains on, when not all
    of it). ``context`` is called only to build: a cached backdoor never reads its training pairs."""
    import json

    import safetensors.torch

    from .. import atomic
    from ..cache import cache_root, config_hash, entry_lock, module_fingerprint

    parts = (subset,) if subset else ()  # absent when whole: the keys of earlier caches hold
    if device.type != "cpu":  # another device trains to other numbers; CPU keys stay as they were
        parts += ({"device": device.type},)
    key = config_hash(
        model_sha, attack.name, config_values(attack.config), source_fingerprint(train_source), seed, *parts
    )
    entry = cache_root() / "attacked" / key
    code = module_fingerprint(type(attack))  # the attack's code, beside the key (an editable install's version stays)
    with entry_lock(entry):
        if not built_by(entry, code):
            start = time.perf_counter()
            model = attack.backdoor(context())
            record = {"build_seconds": round(time.perf_counter() - start, 1), "info": attack.info, "code": code}
            with atomic.atomic_dir(entry) as tmp:
                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                atomic.save_safetensors(state, str(tmp / "model.safetensors"))
                atomic.save_safetensors(
                    {k: v.contiguous() for k, v in attack.trigger_state().items()}, str(tmp / "trigger.safetensors")
                )
                (tmp / "attack.json").write_text(json.dumps(record, indent=2))
            return model, {**record, "cache_key": key, "from_cache": False}
        # read under the lock: a process running other code may rebuild the entry once it is released
        record = json.loads((entry / "attack.json").read_text())
        model = base.clone()
        model.load_state_dict(safetensors.torch.load_file(str(entry / "model.safetensors")))
        attack.load_trigger_state(safetensors.torch.load_file(str(entry / "trigger.safetensors")))
    attack.info = record.get("info", {})
    return model, {**record, "cache_key": key, "from_cache": True}
