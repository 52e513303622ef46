"""InverTune's stage loops for benchmarks/throughput.py, each next to the bare pass it is measured against.

A ``Loop`` drives the real stage function for a number of steps; its ``bare`` runs the same model on
the same number of images a step with nothing but the forward (and backward) pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import TensorDataset

from adapters.clip_model import OpenClipModel
from invertune_plugin.identify import IdentifyConfig
from invertune_plugin.invert import InvertConfig, invert
from invertune_plugin.race import race_families, targeted_uap, targeted_uaps
from invertune_plugin.tune import TuneConfig, tune
from toolbox.api import ImageData
from toolbox.primitives.perturbations import PerturbationFamily
from toolbox.primitives.tensors import as_float, frozen, split_indices
from toolbox.zeroshot import ZeroShotHead, image_features

EVAL_BATCH = 256  # toolbox.evaluation's default batch size
LOOPS = ("race/patch", "race/linf", "refine/patch", "refine/linf", "invert", "tune", "eval")


@dataclass
class Loop:
    name: str
    images_per_step: int
    run: Callable[[int], Any]  # the real loop with this many steps
    bare_kind: str  # "input grads", "param grads" or "forward"
    bare: Callable[[int], None]  # this many bare steps of images_per_step images


# -- bare passes ---------------------------------------------------------------------------------


def bare_input_grads(model: OpenClipModel, x: torch.Tensor) -> Callable[[int], None]:
    """Forward + backward to the input only, parameters frozen (what a UAP or trigger step needs)."""

    def run(steps: int) -> None:
        with frozen(model):
            for _ in range(steps):
                model.encode_image(x.detach().requires_grad_(True)).float().sum().backward()

    return run


def bare_param_grads(model: OpenClipModel, x: torch.Tensor) -> Callable[[int], None]:
    """Forward + backward to every vision-tower parameter (more than tuning's masked rows)."""
    visual = list(model.clip.visual.parameters())

    def run(steps: int) -> None:
        with frozen(model):  # restores every flag afterwards
            for p in visual:
                p.requires_grad_(True)
            for _ in range(steps):
                model.encode_image(x).float().sum().backward()
                for p in visual:
                    p.grad = None

    return run


def bare_forward(model: OpenClipModel, x: torch.Tensor, batch: int) -> Callable[[int], None]:
    """One no-grad pass over ``x`` in batches of ``batch`` per step."""

    def run(steps: int) -> None:
        with torch.no_grad():
            for _ in range(steps):
                for i in range(0, len(x), batch):
                    model.encode_image(x[i : i + batch])

    return run


def batch_of(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` float images (cycling through ``images`` when there are fewer)."""
    return as_float(images[torch.arange(n, device=images.device) % len(images)])


# -- the loops -----------------------------------------------------------------------------------


def short_kind(family: PerturbationFamily) -> str:
    return "patch" if family.pixels is not None else "linf"


def race_loop(
    model: OpenClipModel, head: ZeroShotHead, images: torch.Tensor, family: PerturbationFamily, cfg: IdentifyConfig
) -> Loop:
    """Stage 1: one pass of the race, ``race_batch_classes`` targets optimised together."""
    # all images are fit images here (identify keeps 30 % back): only the batch they give matters
    targets = list(range(min(cfg.race_batch_classes, len(head.classnames))))
    n = len(targets) * min(cfg.batch_size, len(images))

    def run(steps: int) -> None:
        gens = [torch.Generator().manual_seed(t) for t in targets]
        with frozen(model):  # as identify() runs it
            targeted_uaps(model, head, images, family, targets, cfg, steps, gens)

    return Loop(f"race/{short_kind(family)}", n, run, "input grads", bare_input_grads(model, batch_of(images, n)))


def refine_loop(
    model: OpenClipModel, head: ZeroShotHead, images: torch.Tensor, family: PerturbationFamily, cfg: IdentifyConfig
) -> Loop:
    """The refinement detectors: one targeted UAP, one class at a time (refine.py)."""
    n = min(cfg.batch_size, len(images))

    def run(steps: int) -> None:
        with frozen(model):  # as refine_patches / refine_globals run it
            targeted_uap(model, head, images, family, 0, cfg, steps, torch.Generator().manual_seed(0))

    return Loop(f"refine/{short_kind(family)}", n, run, "input grads", bare_input_grads(model, batch_of(images, n)))


def invert_loop(model: OpenClipModel, head: ZeroShotHead, images: torch.Tensor) -> Loop:
    """Stage 2, setup (clean embeddings, held-out ASR) included."""
    cfg = InvertConfig()
    fit, _ = split_indices(len(images), cfg.holdout_fraction, 0)
    n = min(cfg.batch_size, len(fit))

    def run(steps: int) -> None:
        invert(model, images, head, head.classnames[0], InvertConfig(steps=steps), 0)

    return Loop("invert", n, run, "input grads", bare_input_grads(model, batch_of(images, n)))


def corner_trigger(x: torch.Tensor) -> torch.Tensor:
    """A white 4x4 corner: stands in for the detector's trigger (its content does not change the cost)."""
    out = x.clone()
    out[..., -4:, -4:] = 1.0
    return out


def tune_loop(model: OpenClipModel, head: ZeroShotHead, images: torch.Tensor) -> Loop:
    """Stage 3: a clean and a triggered forward of batch_size, one masked parameter backward a step;
    setup (model copy, activation means, K-means, guard) included."""
    n = 2 * min(TuneConfig().batch_size, len(images))

    def run(steps: int) -> None:
        tune(model, images, corner_trigger, head, TuneConfig(steps=steps), 0)

    return Loop("tune", n, run, "param grads", bare_param_grads(model, batch_of(images, n)))


def eval_loop(model: OpenClipModel, images: torch.Tensor, device: torch.device) -> Loop:
    """The evaluation's feature pass over a dataset (DataLoader collation included); a step is one pass."""
    x = as_float(images).cpu()  # evaluation data comes from the host, as from disk
    data = ImageData(dataset=TensorDataset(x, torch.arange(len(x))), kind="unlabelled", source="random images")

    def run(steps: int) -> None:
        for _ in range(steps):
            image_features(model, data, EVAL_BATCH, device)

    return Loop(
        "eval", len(x), run, "forward", bare_forward(model, as_float(images), EVAL_BATCH)
    )  # bare: on the device


def make_loops(
    model: OpenClipModel, head: ZeroShotHead, images: torch.Tensor, device: torch.device, wanted: list[str]
) -> list[Loop]:
    cfg = IdentifyConfig()
    families = race_families(model.image_size, cfg)
    patch, linf = families[0], families[-1]
    makers: dict[str, Callable[[], Loop]] = {
        "race/patch": lambda: race_loop(model, head, images, patch, cfg),
        "race/linf": lambda: race_loop(model, head, images, linf, cfg),
        "refine/patch": lambda: refine_loop(model, head, images, patch, cfg),
        "refine/linf": lambda: refine_loop(model, head, images, linf, cfg),
        "invert": lambda: invert_loop(model, head, images),
        "tune": lambda: tune_loop(model, head, images),
        "eval": lambda: eval_loop(model, images, device),
    }
    return [makers[name]() for name in wanted]
