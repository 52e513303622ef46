"""Checkpoint formats -> :class:`OpenClipModel`, and back into the same format.

Formats (adapter names):

``openclip-dir``        open_clip's local-directory format: ``open_clip_config.json`` +
                        ``open_clip_model.safetensors`` (what the embedded default uses).
``openclip``            ``ARCH@WEIGHTS``: an open_clip model name plus a weights file
                        (.safetensors, or a .pt/.bin state dict).
``openai-ckpt``         OpenAI / CleanCLIP / BadCLIP checkpoints: ``{"state_dict": ...}`` or a bare
                        state dict, optional ``module.`` prefix; architecture inferred from
                        tensor shapes; QuickGELU (those models were trained with it).
``visual-only``         ``VISUAL_FILE::BASE_SOURCE``: a BadEncoder-style image-encoder state dict
                        put on top of a base model loaded by any other adapter.
``hf-clip``             a Hugging Face ``CLIPModel`` directory (:mod:`adapters.hf_clip`, optional extra).

Nothing is unpickled: ``torch.load(weights_only=True)`` or safetensors, always.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from toolbox import atomic
from toolbox.api import LoadedModel, ModelAdapter, state_dict_sha256
from toolbox.compat import import_open_clip
from toolbox.intake.files import read_json, refuse_special, regular_file

from .clip_model import OpenClipModel, build_clip
from .limits import check_budget, check_preprocess, max_params, openclip_params

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
OPENCLIP_CONFIG = "open_clip_config.json"
OPENCLIP_WEIGHTS = "open_clip_model.safetensors"


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read without unpickling arbitrary objects."""


def load_tensor_file(path: Path) -> Any:
    """Read a weights file without unpickling code: safetensors, or torch.load(weights_only=True).
    Both open the path themselves: the intake passes it first (a regular file, never a FIFO)."""
    path = regular_file(path, "weights file")
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError with a long message
        if "weights_only" in str(err) or "Unpickl" in type(err).__name__:
            raise UnsafeCheckpointError(
                f"{path} holds objects other than tensors and plain containers; refusing to unpickle a "
                f"suspect checkpoint (convert it to safetensors or a plain state dict)"
            ) from err
        raise


def save_tensor_file(state_dict: dict[str, torch.Tensor], path: Path, extra: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic.atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            atomic.save_safetensors(tensors, str(tmp))
        else:
            torch.save({**(extra or {}), "state_dict": tensors} if extra is not None else tensors, tmp)


def split_container(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with ``module.`` removed, how it was stored) from a loaded checkpoint."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict checkpoint, got {type(obj).__name__}")
    wrapped = "state_dict" in obj and isinstance(obj["state_dict"], dict)
    sd = obj["state_dict"] if wrapped else obj
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    prefixed = bool(sd) and all(k.startswith("module.") for k in sd)
    if prefixed:
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    meta = {k: v for k, v in obj.items() if k != "state_dict" and not isinstance(v, torch.Tensor)} if wrapped else {}
    return sd, {"wrapped": wrapped, "module_prefix": prefixed, "meta": _plain(meta)}


TRAINING_STATE_KEYS = ("optimizer", "scaler", "lr_scheduler", "scheduler")


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep only JSON-like metadata (epoch, name, model_cfg...); drop optimizer and scaler states,
    which belong to the training run that made the checkpoint, not to the purified model."""
    out = {}
    for k, v in meta.items():
        if k in TRAINING_STATE_KEYS:
            continue
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


# Architecture keys a checkpoint's own metadata may set. Anything else (hf_model_name, timm_*,
# ...) could make open_clip fetch third-party weights, so a suspect checkpoint may not ask for it.
ALLOWED_CFG = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}
ALLOWED_VISION = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
ALLOWED_TEXT = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def checked_model_cfg(cfg: Any, source: str) -> dict[str, Any]:
    """A model config read from a checkpoint, limited to plain CLIP architecture numbers."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{source}: refusing model_cfg from the checkpoint: {msg}")

    if not isinstance(cfg, dict) or set(cfg) - ALLOWED_CFG:
        raise bad(f"unexpected keys {sorted(set(cfg) - ALLOWED_CFG) if isinstance(cfg, dict) else cfg!r}")
    for part, allowed in (("vision_cfg", ALLOWED_VISION), ("text_cfg", ALLOWED_TEXT)):
        sub = cfg.get(part, {})
        if not isinstance(sub, dict) or set(sub) - allowed:
            raise bad(f"{part} has unexpected keys {sorted(set(sub) - allowed) if isinstance(sub, dict) else sub!r}")
    max_params()  # a bad TOOLBOX_MAX_MODEL_PARAMS is the environment's fault, not the checkpoint's: said apart
    try:
        check_budget(openclip_params(cfg, "model_cfg"), "model_cfg")
    except ValueError as err:
        raise bad(str(err)) from None
    return cfg


def infer_openai_cfg(sd: dict[str, torch.Tensor], quick_gelu: bool) -> dict[str, Any]:
    """open_clip model config from an OpenAI-layout state dict's tensor shapes (fp32, lossless)."""
    vit = "visual.proj" in sd
    if vit:
        width = sd["visual.conv1.weight"].shape[0]
        layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {"image_size": patch * grid, "layers": layers, "width": width, "patch_size": patch}
    else:
        counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)]
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        out_w = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {"image_size": out_w * 32, "layers": counts, "width": width}
    text_width = sd["ln_final.weight"].shape[0]
    text_cfg = {
        "context_length": sd["positional_embedding"].shape[0],
        "vocab_size": sd["token_embedding.weight"].shape[0],
        "width": text_width,
        "heads": max(1, text_width // 64),
        "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
    }
    cfg = {"embed_dim": sd["text_projection"].shape[1], "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


def wrap(clip: torch.nn.Module, cfg: dict[str, Any]) -> OpenClipModel:
    return OpenClipModel(clip.float().eval(), cfg)


def load_state_into(clip: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    if "logit_scale" in sd and clip.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(clip.logit_scale.shape)
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit the architecture; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _dtypes(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()}


def _restore_dtypes(sd: dict[str, torch.Tensor], dtypes: dict[str, str] | None) -> dict[str, torch.Tensor]:
    if not dtypes:
        return sd
    return {k: v.to(getattr(torch, dtypes[k])) if k in dtypes else v for k, v in sd.items()}


def _loaded(model: OpenClipModel, fmt: str, source: str, save_info: dict[str, Any]) -> LoadedModel:
    return LoadedModel(
        model=model,
        format=fmt,
        source=source,
        arch=model.arch,
        sha256=state_dict_sha256(model.clip),
        save_info=save_info,
    )


class OpenClipDirAdapter(ModelAdapter):
    name = "openclip-dir"
    summary = "open_clip local directory: open_clip_config.json + safetensors weights."
    reference = "open_clip create_model('local-dir:PATH')"

    def detect(self, source: str) -> bool:
        return (Path(source) / OPENCLIP_CONFIG).exists()  # claimed even when not a regular file: load says why

    def load(self, source: str, device: torch.device) -> LoadedModel:
        path = Path(source)
        config = path / OPENCLIP_CONFIG
        doc = read_json(config, "model config")
        if not isinstance(doc, dict):
            raise ValueError(f"{config} is not a JSON object")
        cfg = checked_model_cfg(doc.get("model_cfg", doc), source)
        check_preprocess(doc.get("preprocess_cfg") or {}, f"{config} preprocess_cfg")
        refuse_special(path, "model folder")  # open_clip opens whichever *.safetensors / *.bin / *.pth it finds
        open_clip = import_open_clip()
        clip = open_clip.create_model(f"local-dir:{path}", device="cpu", weights_only=True)
        model = wrap(clip, cfg).to(device)
        return _loaded(model, self.name, source, {"preprocess_cfg": doc.get("preprocess_cfg", {})})

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        return write_openclip_dir(model, out_dir, loaded.save_info.get("preprocess_cfg"))

    def create(self, model_cfg: dict[str, Any], device: torch.device) -> LoadedModel:
        model = OpenClipModel(build_clip(model_cfg), model_cfg).to(device)
        return _loaded(model, self.name, "(new)", {"preprocess_cfg": {}})


def write_openclip_dir(model: OpenClipModel, out_dir: Path, preprocess_cfg: dict[str, Any] | None = None) -> Path:
    """open_clip's local-directory format, written atomically."""
    pre = dict(preprocess_cfg or {})
    pre.setdefault("size", model.image_size)
    pre.setdefault("mean", model.pixel_mean.flatten().tolist())
    pre.setdefault("std", model.pixel_std.flatten().tolist())
    with atomic.atomic_dir(out_dir) as tmp:
        (tmp / OPENCLIP_CONFIG).write_text(
            json.dumps({"model_cfg": model.model_cfg, "preprocess_cfg": pre}, indent=2), encoding="utf-8"
        )
        sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.clip.state_dict().items()}
        atomic.save_safetensors(sd, str(tmp / OPENCLIP_WEIGHTS))
    return Path(out_dir)


class OpenClipFileAdapter(ModelAdapter):
    name = "openclip"
    summary = "ARCH@WEIGHTS: an open_clip model name plus a weights file (.safetensors/.pt/.bin)."
    reference = "open_clip create_model(ARCH) + load_checkpoint"

    _pattern = re.compile(r"^(?P<arch>[^@/]+)@(?P<path>.+)$")

    def detect(self, source: str) -> bool:
        m = self._pattern.match(source)
        return bool(m) and Path(m["path"]).is_file() and m["arch"] in _known_archs()

    def load(self, source: str, device: torch.device) -> LoadedModel:
        m = self._pattern.match(source)
        if not m:
            raise ValueError(f"expected ARCH@WEIGHTS, got {source!r}")
        open_clip = import_open_clip()
        cfg = open_clip.get_model_config(m["arch"])
        if cfg is None:
            raise ValueError(f"unknown open_clip architecture {m['arch']!r}")
        sd, container = split_container(load_tensor_file(Path(m["path"])))
        clip = build_clip(cfg)
        load_state_into(clip, sd, source)
        model = wrap(clip, cfg).to(device)
        return _loaded(
            model,
            self.name,
            source,
            {"arch": m["arch"], "suffix": Path(m["path"]).suffix, "dtypes": _dtypes(sd), **container},
        )

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        info = loaded.save_info
        return write_like_input(model.clip.state_dict(), info, Path(out_dir) / f"model{info['suffix']}")


def _prefix(sd: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in sd.items()} if info.get("module_prefix") else dict(sd)


def write_like_input(sd: dict[str, torch.Tensor], info: dict[str, Any], path: Path) -> Path:
    """Write ``sd`` as the input was stored: its dtypes, ``module.`` prefix and container."""
    sd = _restore_dtypes(sd, info.get("dtypes"))
    save_tensor_file(_prefix(sd, info), path, info["meta"] if info.get("wrapped") else None)
    return path


def _known_archs() -> set[str]:
    open_clip = import_open_clip()
    return set(open_clip.list_models())


class OpenAICheckpointAdapter(ModelAdapter):
    name = "openai-ckpt"
    summary = "OpenAI/CleanCLIP/BadCLIP checkpoint ({'state_dict': ...}, module. prefix), QuickGELU."
    reference = "OpenAI CLIP state-dict layout; CleanCLIP/BadCLIP training checkpoints"

    def detect(self, source: str) -> bool:
        p = Path(source)
        return p.is_file() and p.suffix in CHECKPOINT_SUFFIXES + (".safetensors",)

    def load(self, source: str, device: torch.device) -> LoadedModel:
        raw = load_tensor_file(Path(source))
        sd, container = split_container(raw)
        if "token_embedding.weight" not in sd:
            raise ValueError(
                f"{source}: not a full CLIP state dict (no text tower); for an image-encoder-only "
                f"checkpoint use VISUAL_FILE::BASE_SOURCE (format visual-only)"
            )
        meta = container["meta"]
        cfg = (
            checked_model_cfg(meta["model_cfg"], source)
            if meta.get("model_cfg")
            else infer_openai_cfg(sd, quick_gelu=bool(meta.get("quick_gelu", True)))
        )
        clip = build_clip(cfg)
        load_state_into(clip, sd, source)
        model = wrap(clip, cfg).to(device)
        return _loaded(model, self.name, source, {"suffix": Path(source).suffix, "dtypes": _dtypes(sd), **container})

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        info = loaded.save_info
        sd = {k: v for k, v in model.clip.state_dict().items() if k != "attn_mask"}
        return write_like_input(sd, info, Path(out_dir) / f"model{info['suffix']}")


def load_base(source: str, device: torch.device) -> LoadedModel:
    """Load a visual-only checkpoint's base model with the first of this package's own model
    adapters that recognises it (not through the host's registry: adapters use only its public contract)."""
    adapters = (cls() for cls in MODEL_ADAPTERS if cls is not VisualOnlyAdapter)
    adapter = next((a for a in adapters if a.detect(source)), None)
    if adapter is None:
        raise ValueError(f"no model adapter of this package recognises the base model {source!r}")
    return adapter.load(source, device)


class VisualOnlyAdapter(ModelAdapter):
    """BadEncoder fine-tunes only the image encoder and saves ``model.visual.state_dict()``."""

    name = "visual-only"
    summary = "VISUAL_FILE::BASE_SOURCE: BadEncoder-style image-encoder weights on a base model."
    reference = "BadEncoder (Jia et al., IEEE S&P 2022) checkpoint layout"

    def detect(self, source: str) -> bool:
        return "::" in source and Path(source.split("::", 1)[0]).is_file()

    def load(self, source: str, device: torch.device) -> LoadedModel:
        visual_path, base_source = source.split("::", 1)
        base = load_base(base_source, torch.device("cpu"))
        model: OpenClipModel = base.model
        sd, container = split_container(load_tensor_file(Path(visual_path)))
        visual_prefix = bool(sd) and all(k.startswith("visual.") for k in sd)
        if visual_prefix:
            sd = {k[len("visual.") :]: v for k, v in sd.items()}
        missing, unexpected = model.clip.visual.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False
        )
        if missing or unexpected:
            raise ValueError(
                f"{visual_path}: image-encoder weights do not fit the base model; "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model = model.to(device)
        info = {
            "suffix": Path(visual_path).suffix,
            "visual_prefix": visual_prefix,
            "dtypes": _dtypes(sd),
            "base_source": base_source,
            **container,
        }
        loaded = _loaded(model, self.name, source, info)
        loaded.arch = f"{model.arch} (visual from {Path(visual_path).name})"
        loaded.data_defaults = dict(base.data_defaults)
        return loaded

    def save(self, loaded: LoadedModel, model, out_dir: Path) -> Path:
        info = loaded.save_info
        sd = _restore_dtypes(model.clip.visual.state_dict(), info.get("dtypes"))  # dtypes are keyed unprefixed
        if info.get("visual_prefix"):
            sd = {f"visual.{k}": v for k, v in sd.items()}
        return write_like_input(sd, {**info, "dtypes": None}, Path(out_dir) / f"visual{info['suffix']}")


def _model_adapters() -> tuple[type[ModelAdapter], ...]:
    from .hf_clip import HFClipAdapter  # transformers itself is imported only when such a model is loaded

    return (VisualOnlyAdapter, OpenClipDirAdapter, HFClipAdapter, OpenClipFileAdapter, OpenAICheckpointAdapter)


MODEL_ADAPTERS = _model_adapters()
