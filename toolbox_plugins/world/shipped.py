"""Preset weights shipped in the repository, so no user trains the default from scratch on 2 cores.

``python -m toolbox_plugins.world.shipped default`` trains the preset exactly as a cold build does
and writes ``weights/<preset>.safetensors`` (fp16) with the model key it was trained for. A build of
that preset with the same key loads the file instead of training; any other key (a changed world,
model or schedule, or a zoo's ``train_seed``) trains as before.

To stay a few MB the file holds only the token-embedding rows of tokens the world's text uses
(captions, class names, templates); the other rows never met a caption and are zero when loaded.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from toolbox import atomic

from .world import WORLD_TEMPLATES, WorldPaths

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).parent / "weights"
TOKEN_ROWS = "token_embedding.weight"  # the one tensor stored by rows


def path_for(preset: str) -> Path:
    return WEIGHTS / f"{preset}.safetensors"


def world_token_ids(model: Any, world: WorldPaths) -> torch.Tensor:
    """Every token id the world's text holds: captions, class names in every template."""
    classes = [c for c in world.classes.read_text(encoding="utf-8").splitlines() if c]
    with open(world.train_csv, newline="", encoding="utf-8") as fh:
        texts = {row["caption"] for row in csv.DictReader(fh)}
    retrieval = json.loads(world.retrieval_json.read_text(encoding="utf-8"))
    texts |= {a["caption"] for a in retrieval["annotations"]}
    texts |= {t.format(c) for t in WORLD_TEMPLATES for c in classes}
    return torch.unique(model.tokenize(sorted(texts)))


def pack(state: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """fp16 tensors; the token embedding as its rows ``ids`` (int32 ids beside them)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if name.endswith(TOKEN_ROWS):
            out[name + ".rows"] = t[ids].half().contiguous()
            out[name + ".ids"] = ids.to(torch.int32).contiguous()
            out[name + ".shape"] = torch.tensor(t.shape, dtype=torch.int64)
        else:
            out[name] = t.half().contiguous() if t.is_floating_point() else t.contiguous()
    return out


def unpack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict :func:`pack` was given, in fp32, unused token rows zero."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(TOKEN_ROWS + ".rows"):
            base = name[: -len(".rows")]
            full = torch.zeros(tuple(tensors[base + ".shape"].tolist()), dtype=torch.float32)
            full[tensors[base + ".ids"].long()] = tensor.float()
            state[base] = full
        elif not name.endswith((TOKEN_ROWS + ".ids", TOKEN_ROWS + ".shape")):
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def command(preset: str) -> str:
    return f"python -m toolbox_plugins.world.shipped {preset}"


def sha_for(preset: str, key: str) -> str | None:
    """The sha256 of ``preset``'s shipped weights when they were trained for ``key``; else None (train)."""
    path = path_for(preset)
    if not path.is_file():
        return None
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    if meta.get("model_key") != key:
        log.info("the shipped %s is for another configuration of %s: training it instead", path.name, preset)
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(preset: str) -> dict[str, torch.Tensor]:
    return unpack(load_file(str(path_for(preset))))


def ship(preset_name: str) -> dict[str, Any]:
    """Train ``preset_name`` from scratch (as a cold build would) and write its shipped weights."""
    from toolbox.lookup import lookup

    from .build import ensure_embedded, get_preset, model_key

    built = ensure_embedded(preset_name, ignore_shipped=True)
    loaded = lookup("model_adapter", "openclip-dir")().load(str(built.model_dir), torch.device("cpu"))
    model = loaded.model
    tensors = pack(model.state_dict(), world_token_ids(model, built.world))
    WEIGHTS.mkdir(exist_ok=True)
    with atomic.atomic_path(path_for(preset_name)) as tmp:
        atomic.save_safetensors(tensors, tmp)
    info = {k: built.build_info[k] for k in ("eval_ca_top1", "eval_ca_top1_openmoji", "train_seconds")}
    meta = {
        "preset": preset_name,
        "model_key": model_key(get_preset(preset_name)),
        "command": command(preset_name),
        "token_rows": int(tensors[next(k for k in tensors if k.endswith(".ids"))].numel()),
        **info,
    }
    atomic.write_text(path_for(preset_name).with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="+", help="presets to train and ship (e.g. default default-resnet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.presets:
        print(json.dumps(ship(name)))


if __name__ == "__main__":
    main()
