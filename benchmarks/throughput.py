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
from pathlib import Path
from typing import Any

import torch

from adapters.clip_model import OpenClipModel, build_clip
from toolbox import precision
from toolbox.compat import import_open_clip
from toolbox.errors import InputError
from toolbox.runner import parse_device
from toolbox.zeroshot import ZeroShotHead
from toolbox_plugins.world.build import TINY_RESNET, TINY_VIT

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # loaded by path (as the tests do), not run as a script: find the sibling module last
    sys.path.append(HERE)
from throughput_loops import LOOPS, Loop, make_loops  # noqa: E402

GOAL = 0.85  # loop img/s over bare img/s, every loop
TEMPLATE = "a photo of a {}."  # one template keeps the class embedding cheap
MODELS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny-vit": lambda: TINY_VIT,
    "tiny-resnet": lambda: TINY_RESNET,
    "vit-b-32": lambda: import_open_clip().get_model_config("ViT-B-32-quickgelu"),
    "rn50": lambda: import_open_clip().get_model_config("RN50-quickgelu"),
}


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
