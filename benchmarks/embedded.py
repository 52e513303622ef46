"""The embedded world's presets: cold build, warm load, zero-shot CA in both styles, retrieval.

    python benchmarks/embedded.py                          # default + smoke, cold builds in a fresh cache
    python benchmarks/embedded.py --presets smoke          # just one
    python benchmarks/embedded.py --warm-only              # use the normal cache (no cold build)
    python benchmarks/embedded.py --docs docs              # + docs/results/world.md

Goals (issue 41): CA in style (Twemoji) >= 80 % for the default presets; the other style
(OpenMoji) is reported, not a bar; smoke CA >= 60 % and cold <= 90 s; warm load <= 10 s.
Cold means an empty cache: world generation + training (or the shipped weights) + evaluation,
in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolbox.results import provenance, write_page

BARS = {"default": (900, 0.80), "default-resnet": (3600, 0.80), "smoke": (90, 0.60), "smoke-resnet": (90, 0.60)}
CHILD = """
import time, json, torch; t0 = time.perf_counter()
from toolbox.plugins import get_host
from toolbox.runner import load_model
reg = get_host().build_registry(quiet=True)
_, loaded = load_model(reg, 'embedded:{preset}', None, torch.device('cpu'))
t1 = time.perf_counter()
from toolbox.evaluation import EvalInputs, MetricConfig, evaluate
from toolbox.runner import load_data, read_lines
d = loaded.data_defaults
names = read_lines(d['classes'], 'class names')
ev, sh, rt = (load_data(reg, d[k], 32, names, False) for k in ('eval_data', 'shift_data', 'retrieval_data'))
m = evaluate(loaded.model, EvalInputs(ev, ev.classnames, read_lines(d['templates'], 'templates'), rt, shift_data=sh),
             MetricConfig(), reg, torch.device('cpu'))
from toolbox_plugins.world.build import ensure_embedded
record = ensure_embedded('{preset}').build_info  # the build this load used (trained or shipped)
print(json.dumps({{'load_s': t1 - t0, 'n_eval': len(ev.dataset), 'arch': loaded.arch, 'world': loaded.world,
                  'source': record.get('source'), 'build_ca': record.get('eval_ca_top1'), **m}}))
"""


def measure(preset: str, cache: str) -> dict:
    """Run the build in a child process (a clean interpreter: imports count in the warm time)."""
    env = dict(os.environ, TOOLBOX_CACHE=cache)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(preset=preset)], env=env, capture_output=True, text=True, check=True
    )
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    doc["wall_s"] = time.perf_counter() - start
    return doc


def table(rows: list[tuple[str, dict | None, dict]]) -> list[str]:
    lines = [
        "| preset | arch | classes | source | cold build s | warm load s | CA Twemoji | CA top-5 | CA OpenMoji "
        "| recall@10 | goals |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, cold, warm in rows:
        max_cold, min_ca = BARS.get(preset, (float("inf"), 0))
        ok = warm["ca"] >= min_ca and warm["load_s"] <= 10 and (cold is None or cold["wall_s"] <= max_cold)
        source = str(warm.get("source") or "?").split(" (")[0]
        cold_s = "-" if cold is None else f"{cold['wall_s']:.0f}"
        lines.append(
            f"| {preset} | {warm['arch']} | {warm['world']['n_classes']} | {source} | "
            f"{cold_s} | {warm['load_s']:.1f} | {100 * warm['ca']:.1f} % | "
            f"{100 * warm['ca_top5']:.1f} % | {100 * warm['ca_shift']:.1f} % | "
            f"{100 * warm['retrieval_recall@10']:.1f} % | "
            f"{'met' if ok else 'NOT met'} (cold <= {max_cold} s, CA >= {100 * min_ca:.0f} %) |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="default,smoke")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold build; use the normal cache")
    ap.add_argument("--docs", type=Path, help="write DOCS/results/world.md")
    args = ap.parse_args()
    prov = provenance(["python", "benchmarks/embedded.py", *sys.argv[1:]])
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
    lines = table(rows)
    print("\n".join(lines))
    if args.docs:
        intro = (
            "Each preset of the embedded world (docs/world.md): zero-shot CA on its in-style evaluation split "
            "(Twemoji, the art it trained on) and on the same classes in OpenMoji's hand (a second style, never "
            "trained on), retrieval recall@10, and build times. *Source* says whether the model was trained here "
            "or loaded from the shipped weights (`python -m toolbox_plugins.world.shipped PRESET` rebuilds those)."
        )
        page = write_page(args.docs / "results" / "world.md", "The embedded world's presets", prov, intro, lines)
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
