"""SegOracle's trigger localisation: where, outside the oracle's objects, the suspect's target score
is most sensitive over the victims, as a mask, a stamp the host reports ASR with, and PNG artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toolbox.api import ClipModel
from toolbox.primitives.tensors import as_float, frozen

# --------------------------------------------------------------------------- f. the trigger


class StampTrigger:
    """The localised trigger as a trigger: ``pattern`` pasted where ``mask`` is set."""

    def __init__(self, mask: Tensor, pattern: Tensor) -> None:
        self.mask = mask.float()  # [H,W]
        self.pattern = pattern.float()  # [3,H,W]

    def __call__(self, images: Tensor) -> Tensor:
        m = self.mask.to(images.device, images.dtype)
        return images * (1 - m) + self.pattern.to(images.device, images.dtype) * m


@dataclass
class Localised:
    saliency: Tensor  # [H,W], mean normalised saliency outside the objects
    mask: Tensor  # [H,W] bool: its top trigger_fraction of pixels
    pattern: Tensor  # [3,H,W]: the victims' mean pixels
    n_images: int

    def bbox(self) -> dict[str, int]:
        """The mask's bounding box in pixels (bottom and right exclusive)."""
        rows, cols = self.mask.any(1).nonzero().flatten(), self.mask.any(0).nonzero().flatten()
        return {
            "top": int(rows.min()),
            "left": int(cols.min()),
            "bottom": int(rows.max()) + 1,
            "right": int(cols.max()) + 1,
        }

    def evidence(self) -> dict[str, Any]:
        box = self.bbox()
        h, w = self.mask.shape
        area = (box["bottom"] - box["top"]) * (box["right"] - box["left"])
        return {
            "trigger_mask_fraction": round(float(self.mask.float().mean()), 4),
            "trigger_bbox": box,
            "trigger_bbox_fraction": round(area / (h * w), 4),
            "saliency_images": self.n_images,
        }

    def stamp(self) -> StampTrigger:
        return StampTrigger(self.mask, self.pattern)


def localise_trigger(
    model: ClipModel,
    images: Tensor,
    object_masks: Tensor,
    weights: Tensor,
    target: int,
    fraction: float,
    batch_size: int,
    device: torch.device,
) -> Localised:
    """Where, outside the object, CLIP's target score is most sensitive on average over the victims."""
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    direction = weights[target].to(device)
    with frozen(model), torch.enable_grad():
        for start in range(0, len(images), batch_size):
            x = as_float(images[start : start + batch_size]).to(device).detach().requires_grad_(True)
            score = (model.encode_image(x).float() @ direction.float()).sum()
            (grad,) = torch.autograd.grad(score, x)
            saliency = grad.abs().sum(1).double().cpu()  # [B,H,W]
            saliency[object_masks[start : start + batch_size]] = 0.0  # the object's own evidence is not the trigger
            peak = saliency.flatten(1).max(1).values.clamp_min(1e-12)
            total += (saliency / peak[:, None, None]).sum(0)  # each victim counts once
    mean = (total / max(1, len(images))).float()
    k = max(1, int(round(fraction * mean.numel())))
    mask = torch.zeros(mean.numel(), dtype=torch.bool)
    mask[mean.flatten().topk(k).indices] = True
    return Localised(saliency=mean, mask=mask.view_as(mean), pattern=as_float(images).mean(0), n_images=len(images))


def write_artifacts(workdir: Path, found: Localised, images: Tensor, foreground: Tensor) -> dict[str, str]:
    """The trigger mask, the saliency map, and up to 8 victims over the oracle's object masks, as PNG."""
    from toolbox.primitives.plots import save_image_grid

    workdir.mkdir(parents=True, exist_ok=True)
    saliency = found.saliency / found.saliency.max().clamp_min(1e-12)
    save_image_grid([found.mask.float().expand(3, -1, -1)], workdir / "segoracle_trigger_mask.png")
    save_image_grid([saliency.expand(3, -1, -1)], workdir / "segoracle_saliency.png")
    shown = as_float(images[:8])
    masks = [m.float().expand(3, -1, -1) for m in foreground[:8]]
    save_image_grid(list(shown) + masks, workdir / "segoracle_victims.png", columns=len(shown))
    return {
        "trigger_mask": "segoracle_trigger_mask.png",
        "trigger_saliency": "segoracle_saliency.png",
        "victims": "segoracle_victims.png",
    }
