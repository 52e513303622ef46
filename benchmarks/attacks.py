"""Attack bars (issue 4): every attack on the embedded preset, one table.

    python benchmarks/attacks.py                         # six attacks, default preset, target mushroom
    python benchmarks/attacks.py --preset smoke          # quick look
    python benchmarks/attacks.py --variants              # + target banana, + patch at top-left / center

Each cell is a real `toolbox run --attack A --defense none` (in-process), so backdoored
models land in the cache and later benchmarks reuse them. Bars: ASR@1 >= 90 % and CA
within 2 points of the clean model. "untriggered": how often untriggered images already go to
the target (`asr_untriggered`); the trigger's own effect is ASR@1 minus that.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from toolbox.cli import main as toolbox

ATTACKS = ("badnet", "blended", "sig", "wanet", "badencoder", "badclip")
PATCH_ATTACKS = ("badnet", "badencoder", "badclip")


def run_cell(preset: str, attack: str | None, params: list[str], out: Path) -> dict:
    argv = ["run", "--defense", "none", "--preset", preset, "--out", str(out)]
    if attack:
        argv += ["--attack", attack]
        for p in params:
            argv += ["--attack-param", p]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # keep the table clean; details are in result.json
        status = toolbox(argv)
    if status != 0:
        raise SystemExit(f"run failed: {argv}")
    doc = json.loads((out / "result.json").read_text())
    doc["_wall"] = time.perf_counter() - start
    return doc


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--variants", action="store_true", help="also target banana, and other patch locations")
    ap.add_argument("--only-variants", action="store_true", help="skip the default-target rows")
    ap.add_argument("-p", "--attack-param", action="append", default=[], help="extra KEY=VALUE for every attack")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-attacks-"))
    clean = run_cell(args.preset, None, [], tmp / "clean")
    ca0 = clean["metrics"]["before"]["ca"]
    cells: list[tuple[str, str, list[str]]] = [] if args.only_variants else [
        (a, "mushroom, default place" + (f" {' '.join(args.attack_param)}" if args.attack_param else ""),
         list(args.attack_param)) for a in args.attacks.split(",")]
    if args.variants or args.only_variants:
        cells += [(a, "banana", ["target=banana"]) for a in args.attacks.split(",")]
        cells += [(a, f"{loc}", [f"location={loc}"]) for a in PATCH_ATTACKS if a in args.attacks
                  for loc in ("top-left", "center")]
    print(f"clean model ({args.preset}): CA {pct(ca0)} %, recall@10 "
          f"{pct(clean['metrics']['before'].get('retrieval_recall@10'))} %\n")
    print("| attack | variant | poison rate | CA | ΔCA | ASR@1 | untriggered | ASR@5 | retrieval ASR@10 | RA | build s | bars |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, (attack, variant, params) in enumerate(cells):
        doc = run_cell(args.preset, attack, params, tmp / f"{i}-{attack}")
        m = doc["metrics"]["before"]
        rate = doc["attack"]["params"].get("poison_rate")
        build = doc["attack"].get("build_seconds")
        ok = m["asr"] >= 0.90 and abs(m["ca"] - ca0) <= 0.02
        print(f"| {attack} | {variant} | {'-' if rate is None else f'{100 * rate:.1f} %'} | {pct(m['ca'])} | "
              f"{100 * (m['ca'] - ca0):+.1f} | {pct(m['asr'])} | {pct(m.get('asr_untriggered'))} | {pct(m.get('asr_top5'))} | "
              f"{pct(m.get('retrieval_asr@10'))} | {pct(m.get('ra'))} | "
              f"{build if build is not None else '-'}{' (cached)' if doc['attack'].get('from_cache') else ''} | "
              f"{'met' if ok else 'NOT met'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
