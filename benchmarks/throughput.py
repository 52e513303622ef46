"""Throughput of InverTune's stage loops against a bare pass of the same model at the same batch.

Each loop is driven through the real function, with random weights and random images (throughput
does not depend on them: nothing is downloaded or trained), next to a bare pass of its model:

    loop                   images a step                      bare pass (same precision, same batch)
    race/patch, race/linf  race_batch_classes x batch_size    forward + backward, input gradients
    refine/patch, /linf    IdentifyConfig.batch_size          forward + backward, input gradients
    invert                 InvertConfig.batch_size            forward + backward, input gradients
    tune                   2 x TuneConfig.batch_size          forward + backward, vision-tower parameter gradients
    eval                   every image, batches of 256        forward only (no_grad), batches of 256

Every loop runs for N and for 2N steps (after a warmup). "loop img/s" is the N-step run with its
setup (clean embeddings, held-out rates, K-means, the agreement guard); "per-step img/s" divides by
the 2N run's extra time, so the fixed setup cancels. ratio = loop img/s / bare img/s; the goal is
>= 85 % for every loop.

    python benchmarks/throughput.py --models tiny-vit --steps 5
    python benchmarks/throughput.py --models vit-b-32 --device cuda --precision fp32,bf16 --json tp.json

Timings taken while anything else runs on the machine are not timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from adapters.clip_model import OpenClipModel, build_clip
from invertune_plugin.identify import IdentifyConfig
from invertune_plugin.invert import InvertConfig, invert
from invertune_plugin.race import race_families, targeted_uap, targeted_uaps
from invertune_plugin.tune import TuneConfig, tune
from toolbox import precision
from toolbox.api import ImageData
from toolbox.compat import import_open_clip
from toolbox.errors import InputError
from toolbox.primitives.perturbations import PerturbationFamily
from toolbox.primitives.tensors import as_float, frozen, split_indices
from toolbox.runner import parse_device
from toolbox.zeroshot import ZeroShotHead, image_features
from toolbox_plugins.world.build import TINY_RESNET, TINY_VIT

GOAL = 0.85  # loop img/s over bare img/s, every loop
EVAL_BATCH = 256  # toolbox.evaluation's default batch size
TEMPLATE = "a photo of a {}."  # one template keeps the class embedding cheap
LOOPS = ("race/patch", "race/linf", "refine/patch", "refine/linf", "invert", "tune", "eval")
MODELS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny-vit": lambda: TINY_VIT,
    "tiny-resnet": lambda: TINY_RESNET,
    "vit-b-32": lambda: import_open_clip().get_model_config("ViT-B-32-quickgelu"),
    "rn50": lambda: import_open_clip().get_model_config("RN50-quickgelu"),
}


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


# -- timing --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[int], Any], steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn(steps)
    sync(device)
    return time.perf_counter() - start


def measure(
    loop: Loop, steps: int, warmup: int, device: torch.device, bare_seen: dict[tuple[str, int], float]
) -> dict[str, Any]:
    if warmup:
        loop.run(warmup)
    t_n = timed(loop.run, steps, device)
    t_2n = timed(loop.run, 2 * steps, device)
    key = (loop.bare_kind, loop.images_per_step)
    if key not in bare_seen:  # the same bare pass serves every loop of its kind and batch
        if warmup:
            loop.bare(warmup)
        bare_seen[key] = timed(loop.bare, steps, device)
    images = steps * loop.images_per_step
    loop_rate, bare_rate = images / t_n, images / bare_seen[key]
    # setup cancels in the difference; a noisy run can make it non-positive: then no per-step figure
    step_rate = images / (t_2n - t_n) if t_2n > t_n else math.nan
    return {
        "loop": loop.name,
        "batch": loop.images_per_step,
        "bare": loop.bare_kind,
        "steps": steps,
        "loop_s": t_n,
        "loop_2x_s": t_2n,
        "bare_s": bare_seen[key],
        "loop_img_s": loop_rate,
        "step_img_s": step_rate,
        "bare_img_s": bare_rate,
        "ratio": loop_rate / bare_rate,
        "step_ratio": step_rate / bare_rate,
    }


def bench_model(
    name: str, precisions: list[str], device: torch.device, args: argparse.Namespace, wanted: list[str]
) -> list[dict[str, Any]]:
    cfg = MODELS[name]()
    torch.manual_seed(0)  # random weights, the same every run
    model = OpenClipModel(build_clip(cfg), cfg).to(device)
    size = model.image_size
    classes = args.classes or (10 if size <= 64 else 1000)
    head = ZeroShotHead(model, [f"class {i}" for i in range(classes)], [TEMPLATE], device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    loops = make_loops(model, head, images, device, wanted)
    rows = []
    for prec in precisions:
        bare_seen: dict[tuple[str, int], float] = {}
        with precision.autocast(prec, device):
            for loop in loops:
                row = {
                    "model": name,
                    "precision": prec,
                    "classes": classes,
                    **measure(loop, args.steps, args.warmup, device, bare_seen),
                }
                rows.append(row)
                print(
                    f"  {name} {prec} {loop.name}: {row['loop_img_s']:.1f} img/s, bare {row['bare_img_s']:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


# -- output --------------------------------------------------------------------------------------


def pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.0f} %"


def rate(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "model",
        "precision",
        "loop",
        "batch",
        "loop img/s",
        "per-step img/s",
        "bare img/s",
        "bare pass",
        "ratio",
        "per-step ratio",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["model"],
            r["precision"],
            r["loop"],
            str(r["batch"]),
            rate(r["loop_img_s"]),
            rate(r["step_img_s"]),
            rate(r["bare_img_s"]),
            r["bare"],
            pct(r["ratio"]),
            pct(r["step_ratio"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-vit,tiny-resnet,vit-b-32", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--loops", default=",".join(LOOPS), help=f"comma list of {', '.join(LOOPS)}")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    ap.add_argument("--precision", default="fp32", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--steps", type=int, default=10, help="loop steps per measurement (and 2x that)")
    ap.add_argument("--warmup", type=int, default=2, help="steps run before timing each loop and bare pass")
    ap.add_argument("--classes", type=int, default=None, help="vocabulary size (default 10 at 32 px, 1000 at 224)")
    ap.add_argument("--images", type=int, default=256, help="random clean images")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--json", type=Path, help="also write the rows and machine info here")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    wanted = [name for name in args.loops.split(",") if name]
    precisions = [p for p in args.precision.split(",") if p]
    if unknown := [m for m in models if m not in MODELS] + [w for w in wanted if w not in LOOPS]:
        ap.error(f"unknown model or loop: {', '.join(unknown)}")
    if (
        args.steps < 1
        or args.warmup < 0
        or args.images < 2
        or any(v is not None and v < 1 for v in (args.classes, args.threads))
    ):
        ap.error("--steps >= 1, --warmup >= 0, --images >= 2, --classes >= 1, --threads >= 1")
    try:
        for p in precisions:
            precision.check(p, "--precision")
        device = parse_device(args.device)
    except (ValueError, InputError) as err:
        ap.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [row for name in models for row in bench_model(name, precisions, device, args, wanted)]
    info = machine_info(device)
    print(
        f"{info['device_name']}, {info['threads']} threads, torch {info['torch']}, commit {info['commit']}; "
        f"{args.steps} and {2 * args.steps} steps after {args.warmup} warmup, {args.images} images\n"
    )
    print(table(rows))
    print()
    for what, key in (("with setup", "ratio"), ("per step", "step_ratio")):
        short = [f"{r['model']} {r['precision']} {r['loop']}" for r in rows if not r[key] >= GOAL]
        print(f"below the goal ({GOAL:.0%}) {what}: {', '.join(short) or 'none'}")
    if args.json:
        doc = {
            "machine": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows],
        }  # NaN is not JSON
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
