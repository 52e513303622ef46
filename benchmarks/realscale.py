"""InverTune at real CLIP scale: 224 px, the ImageNet-1K vocabulary, RN50 / ViT-B-32.

Nothing can be downloaded here, so the architectures are real and the weights random: the run
measures cost (per-stage seconds, peak memory), not defense quality. The class names and OpenAI
templates are open_clip's; the clean and evaluation images are generated (smooth random colour
fields at 224 px, written as PNG), the evaluation labels drawn at random over the 1,000 classes.
Each architecture runs in its own process (``--one``), so its peak memory is its own; with
``--eval-growth K`` the evaluation alone is also run on N and K x N images, to show that its
memory does not grow with the evaluation set (images are streamed; see adapters/datasets.py).

    python benchmarks/realscale.py                                   # both archs, quick profile, CPU
    python benchmarks/realscale.py --archs ViT-B-32-quickgelu --templates 1 --images 256
    python benchmarks/realscale.py --device cuda --precision bf16 --profile default --templates 80

``--profile quick`` (the default) runs every stage for a handful of steps; ``default`` is the
defense as shipped. Timings taken while anything else runs on the machine are not timings.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import toolbox  # noqa: F401  (the torchvision fix before open_clip loads)
from adapters.clip_model import OpenClipModel, build_clip
from adapters.models import write_openclip_dir
from toolbox.compat import import_open_clip

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("RN50-quickgelu", "ViT-B-32-quickgelu")


def generated_images(folder: Path, n: int, size: int, seed: int) -> list[str]:
    """``n`` smooth random colour fields (a 4x4 to 16x16 grid, bilinearly enlarged) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        cells = int(rng.integers(4, 17))
        grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        name = f"img{i:06d}.png"
        Image.fromarray(grid).resize((size, size), Image.BILINEAR).save(folder / name)
        names.append(name)
    return names


def prepare(work: Path, arch: str, n_clean: int, n_eval: int, n_templates: int, seed: int) -> dict[str, str]:
    """The model folder, clean folder, labels.csv evaluation set, class names and templates files."""
    open_clip = import_open_clip()
    cfg = open_clip.get_model_config(arch)
    size = int(cfg["vision_cfg"]["image_size"])
    model_dir = work / f"model-{arch}"
    if not (model_dir / "open_clip_config.json").exists():
        torch.manual_seed(seed)
        write_openclip_dir(OpenClipModel(build_clip(cfg), cfg), model_dir)
    classes = list(open_clip.IMAGENET_CLASSNAMES)
    (work / "classes.txt").write_text("\n".join(classes) + "\n")
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES][:n_templates]
    (work / "templates.txt").write_text("\n".join(templates) + "\n")
    clean = work / f"clean-{n_clean}-{size}"
    if not clean.exists():  # written aside, then renamed: a killed run leaves no half folder to reuse
        partial = clean.with_name(clean.name + ".partial")
        generated_images(partial, n_clean, size, seed)
        partial.rename(clean)
    eval_csv = eval_set(work, n_eval, size, len(classes), seed)
    return {
        "model": str(model_dir),
        "clean_data": str(clean),
        "eval_data": str(eval_csv),
        "classes": str(work / "classes.txt"),
        "templates": str(work / "templates.txt"),
    }


def eval_set(work: Path, n: int, size: int, n_classes: int, seed: int) -> Path:
    folder = work / f"eval-{n}-{size}"
    csv_path = folder / "labels.csv"
    if not csv_path.exists():
        names = generated_images(folder / "images", n, size, seed + 1)
        labels = random.Random(seed).choices(range(n_classes), k=n)
        csv_path.write_text("image,label\n" + "".join(f"images/{f},{y}\n" for f, y in zip(names, labels)))
    return csv_path


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (Linux: KiB), and the accelerator's peak allocation."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def run_one(args: argparse.Namespace, arch: str) -> dict:
    """One whole ``toolbox run --defense invertune`` (no attack: random weights) on ``arch``."""
    from toolbox.notebook import run
    from toolbox.runner import parse_device

    work = Path(args.work)
    sources = prepare(work, arch, args.images, args.eval_images, args.templates, args.seed)
    device = parse_device(args.device)
    params = {
        "profile": args.profile,
        "precision": args.precision,
        "n_images": args.n_images,
        **dict(kv.split("=", 1) for kv in args.param),
    }
    start = time.perf_counter()
    result = run(
        "invertune",
        **sources,
        device=args.device,
        seed=args.seed,
        out=work / f"run-{arch}-{args.profile}",
        params=params,
        eval_batch_size=args.eval_batch_size,
    )
    wall = time.perf_counter() - start
    return {
        "arch": arch,
        "device": str(device),
        "precision": args.precision,
        "profile": args.profile,
        "params": params,
        "clean_images": args.images,
        "n_images": args.n_images,
        "eval_images": args.eval_images,
        "classes": 1000,
        "templates": args.templates,
        "wall_s": round(wall, 1),
        "timings_s": result.timings,
        **peak_memory_mb(device),
    }


def eval_only(args: argparse.Namespace, arch: str, n: int) -> dict:
    """Evaluation alone (CA over ``n`` images) and the peak memory it took."""
    from toolbox.evaluation import EvalInputs, MetricConfig, evaluate
    from toolbox.notebook import load
    from toolbox.plugins import get_host
    from toolbox.runner import parse_device, read_lines

    work = Path(args.work)
    sources = prepare(work, arch, 8, n, args.templates, args.seed)
    registry = get_host().build_registry(quiet=True)
    device = parse_device(args.device)
    suspect = load(
        sources["model"],
        clean_data=sources["clean_data"],
        classes=sources["classes"],
        templates=sources["templates"],
        device=args.device,
    )
    from toolbox.runner import load_data

    data = load_data(registry, sources["eval_data"], suspect.model.image_size, suspect.classnames, False)
    before = peak_memory_mb(device)
    start = time.perf_counter()
    evaluate(
        suspect.model,
        EvalInputs(data, suspect.classnames, read_lines(sources["templates"], "templates")),
        MetricConfig(top_k=(1,), batch_size=args.eval_batch_size),
        registry,
        device,
    )
    return {
        "arch": arch,
        "eval_images": n,
        "eval_s": round(time.perf_counter() - start, 1),
        "rss_before_eval_mb": before["peak_rss_mb"],
        **peak_memory_mb(device),
    }


def in_subprocess(argv: list[str]) -> dict:
    """Run this script with ``argv`` in a fresh process; its last stdout line is a JSON record."""
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def common(args: argparse.Namespace) -> list[str]:
    return [
        "--work",
        args.work,
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--profile",
        args.profile,
        "--images",
        str(args.images),
        "--n-images",
        str(args.n_images),
        "--eval-images",
        str(args.eval_images),
        "--templates",
        str(args.templates),
        "--seed",
        str(args.seed),
        "--eval-batch-size",
        str(args.eval_batch_size),
        *[x for kv in args.param for x in ("-p", kv)],
    ]


def table(rows: list[dict]) -> str:
    stages = sorted({k for r in rows for k in r["timings_s"]})
    lines = [
        "| stage | " + " | ".join(f"{r['arch']} ({r['precision']}, {r['device']})" for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(f"{r['timings_s'].get(s, 0):.1f}" for r in rows) + " |")
    lines.append("| **wall (s)** | " + " | ".join(f"{r['wall_s']:.1f}" for r in rows) + " |")
    lines.append("| peak RSS (MB) | " + " | ".join(f"{r['peak_rss_mb']:.0f}" for r in rows) + " |")
    if any("peak_cuda_mb" in r for r in rows):
        lines.append("| peak CUDA (MB) | " + " | ".join(f"{r.get('peak_cuda_mb', 0):.0f}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default=",".join(ARCHS), help="open_clip model names (random weights)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--profile", default="quick", help="InverTune profile: quick (a handful of steps) or default")
    p.add_argument("--images", type=int, default=2048, help="generated clean images the defender holds")
    p.add_argument("--n-images", type=int, default=64, help="of which InverTune uses (-p n_images)")
    p.add_argument("--eval-images", type=int, default=64, help="generated evaluation images (random labels)")
    p.add_argument("--eval-growth", type=int, default=0, help="also evaluate on N and this x N images (memory)")
    p.add_argument("--no-run", action="store_true", help="only the --eval-growth measurement")
    p.add_argument("--prepare-only", action="store_true", help="write the models and images, run nothing")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--templates", type=int, default=1, help="how many of the 80 OpenAI templates (80: as the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-p", "--param", action="append", default=[], help="InverTune setting KEY=VALUE (as toolbox run)")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "invertune-toolbox" / "realscale"))
    p.add_argument("--json", help="write the records here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one arch in this process
    p.add_argument("--eval-only", type=int, help=argparse.SUPPRESS)  # internal: evaluation alone on N images
    args = p.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.one:
        record = eval_only(args, args.one, args.eval_only) if args.eval_only else run_one(args, args.one)
        print(json.dumps(record))
        return 0
    rows, growth = [], []

    def save() -> None:  # after every record: a run stopped by a time limit keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": rows, "eval_growth": growth}, indent=2))

    for arch in args.archs.split(","):
        if args.prepare_only:
            prepare(Path(args.work), arch, args.images, args.eval_images, args.templates, args.seed)
            if args.eval_growth:
                size = int(import_open_clip().get_model_config(arch)["vision_cfg"]["image_size"])
                eval_set(Path(args.work), args.eval_growth * args.eval_images, size, 1000, args.seed)
            continue
        if not args.no_run:
            print(f"{arch}: a whole run ...", file=sys.stderr, flush=True)
            rows.append(in_subprocess([*common(args), "--one", arch]))
            save()
        if args.eval_growth:
            for n in (args.eval_images, args.eval_growth * args.eval_images):
                print(f"{arch}: evaluation alone on {n} images ...", file=sys.stderr, flush=True)
                growth.append(in_subprocess([*common(args), "--one", arch, "--eval-only", str(n)]))
                save()
    if rows:
        print(table(rows))
    for g in growth:
        print(
            f"\nevaluation of {g['arch']} on {g['eval_images']} images: {g['eval_s']} s, peak RSS "
            f"{g['peak_rss_mb']:.0f} MB (before evaluating: {g['rss_before_eval_mb']:.0f} MB)"
            + (f", peak CUDA {g['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in g else "")
        )
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
