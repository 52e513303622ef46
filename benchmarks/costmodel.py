"""Projected wall time of one default InverTune run at real scale, with its arithmetic.

Work: how many images each stage passes through the vision tower (forward only, forward plus
backward to the input, forward plus backward to the parameters) and how many prompts through the
text tower, counted from the configuration itself (``InverTuneConfig``, a vocabulary size, an
evaluation set size). Cost per image: FLOPs counted on this machine with
``torch.utils.flop_counter`` on the real architecture (random weights; FLOPs do not depend on
them), divided by an accelerator's sustained rate: ``--peak-tflops`` times ``--utilisation``.
The utilisation is an assumption until ``benchmarks/gpu.sh`` has measured it; the loop
efficiencies of ``benchmarks/throughput.py`` (>= 85 % is the goal) multiply in. Refinement
detectors run only when the inversion finds no trigger: the projection counts them all (the
worst case) and says so.

    python benchmarks/costmodel.py                                         # RN50, 1,000 classes, A100 bf16
    python benchmarks/costmodel.py --arch ViT-B-32-quickgelu --peak-tflops 19.5 --utilisation 0.5   # A100 fp32
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import toolbox  # noqa: F401  (the torchvision fix before open_clip loads)
from invertune_plugin.defense import InverTune, InverTuneConfig
from invertune_plugin.identify import IdentifyConfig
from invertune_plugin.screen import group_count
from toolbox.compat import import_open_clip


def flops_per_image(arch: str) -> dict[str, float]:
    """FLOPs of one 224-px image: forward; forward + input gradient; forward + parameter gradients;
    and of one 77-token prompt through the text tower."""
    open_clip = import_open_clip()
    model = open_clip.create_model(arch).eval()
    size = int(open_clip.get_model_config(arch)["vision_cfg"]["image_size"])
    x = torch.rand(1, 3, size, size)
    out: dict[str, float] = {}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.encode_image(x)
    out["fwd"] = fc.get_total_flops()
    for p in model.parameters():
        p.requires_grad_(False)
    with FlopCounterMode(display=False) as fc:
        model.encode_image(x.clone().requires_grad_(True)).sum().backward()
    out["fwd_bwd_input"] = fc.get_total_flops()
    for p in model.visual.parameters():
        p.requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        model.encode_image(x).sum().backward()
    out["fwd_bwd_params"] = fc.get_total_flops()
    tokens = open_clip.get_tokenizer(arch)(["a photo of a dog."])
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.encode_text(tokens)
    out["text"] = fc.get_total_flops()
    return out


Row = tuple[str, str, int, str]  # (stage, kind, count, how it is counted)


def stage1_rows(ident: IdentifyConfig, n_classes: int, fit: int, hold: int) -> list[Row]:
    """Stage 1: the screens (when the vocabulary is too big to race; the untargeted one also by choice) and the race."""
    rows: list[Row] = []
    screened = n_classes > ident.max_race_classes
    raced = min(n_classes, ident.max_race_classes)
    uaps = len(ident.patch_locations) + len(ident.global_eps)
    untargeted_screen = screened and ident.screen in ("untargeted", "both")
    if untargeted_screen or ident.method == "untargeted":
        rows.append(
            (
                "stage 1 screen",
                "fwd_bwd_input",
                uaps * ident.steps * min(ident.batch_size, fit),
                f"{uaps} untargeted UAPs x {ident.steps} steps x batch {ident.batch_size}",
            )
        )
        rows.append(("stage 1 screen", "fwd", fit + hold * (1 + uaps), "fit + held-out predictions per UAP"))
    if screened and ident.method == "targeted" and ident.screen in ("groups", "both"):
        groups = group_count(n_classes, ident.screen_groups)
        fams = len(ident.race_global_eps) + (len(ident.race_patch_locations) if ident.screen_families == "all" else 0)
        uaps = groups * fams * ident.screen_rounds
        rows.append(
            (
                "stage 1 group screen",
                "fwd_bwd_input",
                uaps * ident.screen_steps * min(ident.batch_size, fit),
                f"{groups} groups x {fams} families x {ident.screen_rounds} rounds x {ident.screen_steps} steps "
                f"x batch {ident.batch_size}",
            )
        )
        rows.append(("stage 1 group screen", "fwd", uaps * hold, "held-out landings per group UAP"))
    if ident.method == "targeted":
        families = len(ident.race_patch_locations) + len(ident.race_global_eps)
        # the cut: after race_cut_after steps only the upper half + 1 goes on (saturation stops not counted)
        cut = ident.race_cut_after if 0 < ident.race_cut_after < ident.race_steps else ident.race_steps
        class_steps = raced * cut + (raced // 2 + 1 if cut < ident.race_steps else 0) * (ident.race_steps - cut)
        rows.append(
            (
                "stage 1 race",
                "fwd_bwd_input",
                families * class_steps * min(ident.batch_size, fit),
                f"{families} families x ({raced} classes x {cut} steps + {raced // 2 + 1} x "
                f"{ident.race_steps - cut} after the cut) x batch {ident.batch_size}"
                if cut < ident.race_steps
                else f"{raced} classes x {families} families x {ident.race_steps} steps x batch {ident.batch_size}",
            )
        )
        rows.append(("stage 1 race", "fwd", raced * families * hold + hold, "held-out rate per class and family"))
    return rows


def detector_rows(cfg: InverTuneConfig, fit: int, hold: int) -> list[Row]:
    """Stage 2's inversion, then every refinement detector as if each ran (the worst case)."""
    rows: list[Row] = []
    ident, inv = cfg.identify, cfg.invert
    inversion = cfg.detectors.get("inversion")
    if inversion is not None:
        k = inversion.candidates
        rows.append(
            (
                "inversion",
                "fwd_bwd_input",
                k * inv.steps * inv.batch_size,
                f"{k} candidate(s) x {inv.steps} steps x batch {inv.batch_size}",
            )
        )
        rows.append(("inversion", "fwd", k * (fit + 2 * hold), "clean anchors + held-out ASR"))
    for name in ("patch", "stripes", "linf"):
        det = cfg.detectors.get(name)
        if det is None or not det.classes:
            continue
        rows.append(
            (
                f"{name} (worst case)",
                "fwd_bwd_input",
                det.classes * det.restarts * det.steps * ident.batch_size,
                f"{det.classes} classes x {det.restarts} restarts x {det.steps} steps x batch {ident.batch_size}",
            )
        )
        rows.append(
            (
                f"{name} (worst case)",
                "fwd",
                det.classes * det.restarts * (det.judge_images + hold),
                "judging + held-out rate per restart",
            )
        )
    return rows


def tune_rows(cfg: InverTuneConfig, n: int) -> list[Row]:
    """Stage 3: the masked fine-tuning steps, and its forward-only passes."""
    tune = cfg.tune
    inversion = cfg.detectors.get("inversion")
    steps = inversion.tune_steps if inversion is not None and inversion.tune_steps else tune.steps
    guard = (steps // tune.guard_every) * min(tune.guard_images, n) if tune.guard_every else 0
    return [
        (
            "stage 3 tune",
            "fwd_bwd_params",
            steps * 2 * tune.batch_size,
            f"{steps} steps x (clean + triggered) batch {tune.batch_size}",
        ),
        ("stage 3 tune", "fwd", 3 * n + guard, "activation means (2 x n_images), anchors, guard checks"),
    ]


def work(n_classes: int, n_templates: int, n_eval: int, profile: str) -> list[Row]:
    """(stage, kind, count, how it is counted) for one run of ``profile`` on a vocabulary of ``n_classes``."""
    cfg = InverTune.configure({"profile": profile})
    n = cfg.n_images
    hold = max(1, round(n * cfg.identify.holdout_fraction))
    fit = n - hold
    rows: list[Row] = [
        (
            "class embeddings",
            "text",
            2 * n_classes * n_templates,
            "2 x classes x templates (fp32 evaluation head, and the defense's under autocast)",
        )
    ]
    rows += stage1_rows(cfg.identify, n_classes, fit, hold)
    rows += detector_rows(cfg, fit, hold)
    rows += tune_rows(cfg, n)
    rows.append(("evaluation", "fwd", 4 * n_eval, "CA before and after, inverted-trigger ASR before and after"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="RN50-quickgelu")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--templates", type=int, default=80, help="OpenAI ImageNet templates: 80")
    p.add_argument("--eval-images", type=int, default=50_000, help="ImageNet-1K validation: 50,000")
    p.add_argument("--profile", default="default")
    p.add_argument("--peak-tflops", type=float, default=312.0, help="A100 dense bf16: 312; fp32 19.5 (tf32 156)")
    p.add_argument(
        "--utilisation",
        type=float,
        default=0.35,
        help="sustained fraction of peak (an assumption until gpu.sh measures it)",
    )
    p.add_argument("--loop-efficiency", type=float, default=0.85, help="loop img/s over bare img/s (throughput.py)")
    args = p.parse_args(argv)
    flops = flops_per_image(args.arch)
    rate = args.peak_tflops * 1e12 * args.utilisation
    print(
        f"{args.arch}: GFLOPs per image forward {flops['fwd'] / 1e9:.2f}, + input gradient "
        f"{flops['fwd_bwd_input'] / 1e9:.2f}, + parameter gradients {flops['fwd_bwd_params'] / 1e9:.2f}; "
        f"per prompt {flops['text'] / 1e9:.2f}"
    )
    print(
        f"sustained rate {args.peak_tflops:g} TFLOP/s x {args.utilisation:g} = {rate / 1e12:.1f} TFLOP/s; "
        f"loops at {args.loop_efficiency:.0%} of bare\n"
    )
    print("| stage | pass | count | seconds | how counted |\n|---|---|---:|---:|---|")
    total = 0.0
    for stage, kind, count, how in work(args.classes, args.templates, args.eval_images, args.profile):
        secs = count * flops[kind] / rate / (1.0 if kind == "text" else args.loop_efficiency)
        total += secs
        print(f"| {stage} | {kind} | {count:,} | {secs:.1f} | {how} |")
    print(f"| **total** | | | **{total:.0f} s = {total / 60:.1f} min** | goal <= 10 min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
