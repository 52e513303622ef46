"""Embedded-default bars: cold build time, warm load time, zero-shot CA, retrieval recall@10.

    python benchmarks/embedded.py                     # default + smoke, cold builds in a fresh cache
    python benchmarks/embedded.py --presets smoke     # just one
    python benchmarks/embedded.py --warm-only         # use the normal cache (no cold build)

Bars (issue 3): default CA >= 95 %, cold <= 600 s, warm <= 10 s; smoke cold <= 90 s, CA >= 60 %.
Cold means an empty cache: world generation + training + evaluation, in this process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARS = {"default": (600, 0.95), "default-resnet": (600, 0.95), "smoke": (90, 0.60), "smoke-resnet": (90, 0.60)}


def measure(preset: str, cache: str) -> dict:
    """Run the build in a child process (a clean interpreter: imports count in the warm time)."""
    code = (
        "import time, json, torch; t0 = time.perf_counter()\n"
        "from toolbox.plugins import get_host\n"
        "from toolbox.runner import load_model\n"
        "reg = get_host().build_registry(quiet=True)\n"
        f"_, loaded = load_model(reg, 'embedded:{preset}', None, torch.device('cpu'))\n"
        "t1 = time.perf_counter()\n"
        "from toolbox.evaluation import EvalInputs, MetricConfig, evaluate\n"
        "from toolbox.runner import load_data, read_lines\n"
        "d = loaded.data_defaults\n"
        "names = read_lines(d['classes'])\n"
        "ev = load_data(reg, d['eval_data'], 32, names, False)\n"
        "rt = load_data(reg, d['retrieval_data'], 32, names, False)\n"
        "m = evaluate(loaded.model, EvalInputs(ev, ev.classnames, read_lines(d['templates']), rt), MetricConfig(),"
        " reg, torch.device('cpu'))\n"
        "print(json.dumps({'load_s': t1 - t0, 'n_eval': len(ev.dataset), 'arch': loaded.arch, **m}))\n"
    )
    env = dict(os.environ, TOOLBOX_CACHE=cache)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    doc = json.loads(out.stdout.strip().splitlines()[-1])
    doc["wall_s"] = time.perf_counter() - start
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="default,smoke")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold build; use the normal cache")
    args = ap.parse_args()
    rows = []
    for preset in args.presets.split(","):
        if args.warm_only:
            cold = None
            cache = os.environ.get("TOOLBOX_CACHE") or str(Path.home() / ".cache" / "invertune-toolbox")
        else:
            cache = tempfile.mkdtemp(prefix=f"bench-{preset}-")
            cold = measure(preset, cache)
        warm = measure(preset, cache)
        rows.append((preset, cold, warm))
    print("| preset | arch | cold build s | warm load s | CA top-1 | CA top-5 | recall@10 | bars |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, cold, warm in rows:
        max_cold, min_ca = BARS.get(preset, (float("inf"), 0))
        ok = warm["ca"] >= min_ca and warm["load_s"] <= 10 and (cold is None or cold["wall_s"] <= max_cold)
        cold_s = "-" if cold is None else f"{cold['wall_s']:.0f}"
        print(
            f"| {preset} | {warm['arch']} | {cold_s} | {warm['load_s']:.1f} | {100 * warm['ca']:.1f} % | "
            f"{100 * warm['ca_top5']:.1f} % | {100 * warm['retrieval_recall@10']:.1f} % | "
            f"{'met' if ok else 'NOT met'} (cold <= {max_cold}s, CA >= {100 * min_ca:.0f} %) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
