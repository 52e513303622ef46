"""How large a model a config may ask for, checked before anything is allocated.

A 500-byte ``open_clip_config.json`` with ``layers: 5000, width: 4096`` would otherwise build a
model of 10^12 parameters and exhaust memory. Each architecture number must be a positive
integer within a plausible range, and the parameter count the config implies (estimated from
its shapes) must stay under ``TOOLBOX_MAX_MODEL_PARAMS`` (default 3e9: ViT-bigG-14 has 2.5e9;
open_clip's untrained ViT-e-14, 4.6e9, needs the override).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolbox.intake.numbers import env_number, show

MAX_PARAMS_ENV = "TOOLBOX_MAX_MODEL_PARAMS"
DEFAULT_MAX_PARAMS = 3_000_000_000
MAX_PARAMS_RANGE = (1, 10**13)  # the override's own bound: 10^13 parameters is 40 TB of fp32 weights
# Ranges of single numbers. Width, depth and vocabulary are bounded by the parameter budget (so
# the override reaches them); image size, context length and patch size bound activations.
RANGES = {
    "width": (1, 10**6),
    "layers": (1, 10**6),
    "heads": (1, 4096),
    "image_size": (8, 4096),
    "patch_size": (1, 4096),
    "context_length": (1, 4096),
    "vocab_size": (1, 10**8),
    "embed_dim": (1, 10**6),
    "head_width": (1, 10**6),
    "mlp_ratio": (0.1, 64),
}
MAX_TOKENS = 16384  # image tokens a ViT attends over: (image_size / patch_size)^2


def max_params() -> int:
    """The budget: ``TOOLBOX_MAX_MODEL_PARAMS`` (``3e9`` allowed) or the default; a bad value names the variable."""
    return int(env_number(MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS, *MAX_PARAMS_RANGE))


def number(value: Any, name: str, where: str) -> float:
    """``value`` as a number within ``RANGES[name]`` (booleans and strings are not numbers)."""
    low, high = RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{where}: {name} = {value!r} is not a number in [{low}, {high}]")
    if isinstance(low, int) and not float(value).is_integer():
        raise ValueError(f"{where}: {name} = {value!r} is not an integer")
    return value


def image_side(value: Any, where: str) -> float:
    """open_clip's image_size: one side, or [height, width] (the larger side bounds the tokens)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return max(number(v, "image_size", where) for v in value)
    return number(value, "image_size", where)


def _transformer(width: float, layers: float, mlp_ratio: float = 4.0) -> float:
    return layers * (4 + 2 * mlp_ratio) * width * width


def openclip_params(cfg: Mapping[str, Any], where: str) -> float:
    """Parameters an open_clip CLIP config builds (within a few per cent: weights, not biases)."""
    embed = number(cfg.get("embed_dim", 512), "embed_dim", where)
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    size = image_side(vision.get("image_size", 224), f"{where} vision_cfg")
    width = number(vision.get("width", 768), "width", f"{where} vision_cfg")
    layers = vision.get("layers", 12)
    if isinstance(layers, (list, tuple)):  # ModifiedResNet: blocks per stage, stage i at width * 2^i
        if len(layers) != 4:
            raise ValueError(f"{where}: vision_cfg.layers {layers!r} must list 4 ResNet stages")
        blocks = [number(n, "layers", f"{where} vision_cfg") for n in layers]
        visual = sum(n * 17 * (width * 2**i) ** 2 for i, n in enumerate(blocks)) + 4 * (width * 32) ** 2
    else:
        patch = number(vision.get("patch_size", 16), "patch_size", f"{where} vision_cfg")
        if (size / patch) ** 2 > MAX_TOKENS:
            raise ValueError(f"{where}: image_size {size} / patch_size {patch} gives more than {MAX_TOKENS} tokens")
        ratio = number(vision.get("mlp_ratio", 4.0), "mlp_ratio", f"{where} vision_cfg")
        visual = _transformer(width, number(layers, "layers", f"{where} vision_cfg"), ratio) + 3 * patch**2 * width
    if "head_width" in vision:
        number(vision["head_width"], "head_width", f"{where} vision_cfg")
    t_width = number(text.get("width", 512), "width", f"{where} text_cfg")
    for key in ("heads", "context_length"):
        if key in text:
            number(text[key], key, f"{where} text_cfg")
    vocab = number(text.get("vocab_size", 49408), "vocab_size", f"{where} text_cfg")
    textual = (
        _transformer(
            t_width,
            number(text.get("layers", 12), "layers", f"{where} text_cfg"),
            number(text.get("mlp_ratio", 4.0), "mlp_ratio", f"{where} text_cfg"),
        )
        + vocab * t_width
    )
    return visual + textual + embed * (width + t_width)


def hf_params(config: Mapping[str, Any], where: str) -> float:
    """The same for a Hugging Face ``CLIPConfig`` dictionary (``vision_config`` / ``text_config``)."""
    total = 0.0
    for part, default_vocab in (("vision_config", 0), ("text_config", 49408)):
        sub = config.get(part) or {}
        if not isinstance(sub, dict):
            raise ValueError(f"{where}: {part} is not an object")
        width = number(sub.get("hidden_size", 768 if part == "vision_config" else 512), "width", f"{where} {part}")
        layers = number(sub.get("num_hidden_layers", 12), "layers", f"{where} {part}")
        inter = sub.get("intermediate_size", 4 * width)
        ratio = number(inter / width if isinstance(inter, (int, float)) else inter, "mlp_ratio", f"{where} {part}")
        total += _transformer(width, layers, ratio)
        if part == "vision_config":
            size = number(sub.get("image_size", 224), "image_size", f"{where} {part}")
            patch = number(sub.get("patch_size", 32), "patch_size", f"{where} {part}")
            if (size / patch) ** 2 > MAX_TOKENS:
                raise ValueError(f"{where}: image_size {size} / patch_size {patch} gives more than {MAX_TOKENS} tokens")
        else:
            total += number(sub.get("vocab_size", default_vocab), "vocab_size", f"{where} {part}") * width
            number(sub.get("max_position_embeddings", 77), "context_length", f"{where} {part}")
    return total


def check_budget(params: float, where: str) -> None:
    limit = max_params()
    if params > limit:
        raise ValueError(
            f"{where}: the config describes a model of about {params:.3g} parameters, over the limit "
            f"of {limit:.3g}; if the model is genuine, raise it with {MAX_PARAMS_ENV}=N"
        )


# Normalisation a model's preprocessing may ask for. Pixels are in [0, 1] before it, so a mean
# outside [0, 1] is no dataset's; a std below 1e-3 multiplies pixels by over 1000 (and 0 divides
# by zero: NaN embeddings, and a CA computed from them).
PIXEL_MEAN_RANGE = (0.0, 1.0)
PIXEL_STD_RANGE = (1e-3, 10.0)


def channel_values(value: Any, key: str, where: str, low: float, high: float) -> list[float] | None:
    """A per-channel mean or std: absent (None), or three finite numbers in [low, high]."""
    if value is None:
        return None
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in value)
    )
    if not ok:
        raise ValueError(f"{where}: {key} = {show(value)} must be three numbers (R, G, B) in [{low}, {high}]")
    return [float(v) for v in value]


def check_preprocess(
    pre: Any, where: str, mean_key: str = "mean", std_key: str = "std", size_key: str | None = "size"
) -> dict[str, Any]:
    """A model's preprocessing settings, refused when its normalisation or size is not a sane number."""
    if not isinstance(pre, Mapping):
        raise ValueError(f"{where}: the preprocessing settings are {type(pre).__name__}, not an object")
    channel_values(pre.get(mean_key), mean_key, where, *PIXEL_MEAN_RANGE)
    channel_values(pre.get(std_key), std_key, where, *PIXEL_STD_RANGE)
    if size_key is not None and pre.get(size_key) is not None:
        image_side(pre[size_key], f"{where} {size_key}")
    return dict(pre)
