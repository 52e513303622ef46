"""Attack bars (issue 4): every attack on the embedded preset, one table.

    python benchmarks/attacks.py                         # seven attacks, default preset, target mushroom
    python benchmarks/attacks.py --preset smoke          # quick look
    python benchmarks/attacks.py --variants              # + target banana, + patch at top-left / center
    python benchmarks/attacks.py --preset default-resnet -a badencoder.lambda2=3 --docs docs

Each cell is a real `toolbox run --attack A --defense none` (in-process), so backdoored
models land in the cache and later benchmarks reuse them. "untriggered": how often untriggered
images already go to the target (`asr_untriggered`); the trigger's effect is ASR@1 minus that.
Bars (issue 24): trigger effect >= 90 points and CA within 2 points of the clean model.
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
from typing import Any

from toolbox.cli import main as toolbox
from toolbox.cli import parse_kv
from toolbox.compare import split_params
from toolbox.errors import InputError
from toolbox.results import provenance, write_page

ATTACKS = ("badnet", "blended", "sig", "wanet", "badencoder", "badclip", "evasive")
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--variants", action="store_true", help="also target banana, and other patch locations")
    ap.add_argument("--only-variants", action="store_true", help="skip the default-target rows")
    ap.add_argument("-p", "--attack-param", action="append", default=[], help="extra KEY=VALUE for every attack")
    ap.add_argument(
        "-a",
        "--one-attack-param",
        action="append",
        default=[],
        metavar="ATTACK.KEY=V",
        help="KEY=V for one attack only (repeatable)",
    )
    ap.add_argument("--docs", type=Path, help="also write the table as DOCS/results/attacks-PRESET.md")
    return ap


def planned_cells(args: argparse.Namespace, own: dict[str, list[str]]) -> list[tuple[str, str, list[str]]]:
    """(attack, variant label, attack params) for every row, in table order."""

    def settings(a: str) -> list[str]:
        return [*args.attack_param, *own.get(a, [])]

    cells: list[tuple[str, str, list[str]]] = (
        []
        if args.only_variants
        else [
            (a, "mushroom, default place" + (f" {' '.join(settings(a))}" if settings(a) else ""), settings(a))
            for a in args.attacks.split(",")
        ]
    )
    if args.variants or args.only_variants:
        cells += [(a, "banana", ["target=banana"]) for a in args.attacks.split(",")]
        cells += [
            (a, f"{loc}", [f"location={loc}"])
            for a in PATCH_ATTACKS
            if a in args.attacks
            for loc in ("top-left", "center")
        ]
    return cells


def table_row(attack: str, variant: str, doc: dict, ca0: float) -> str:
    m = doc["metrics"]["before"]
    rate = doc["attack"]["params"].get("poison_rate")
    build = doc["attack"].get("build_seconds")
    effect = m["asr"] - (m.get("asr_untriggered") or 0.0)
    misses = [f"effect {90 - 100 * effect:.1f} short"] if effect < 0.90 else []
    if abs(m["ca"] - ca0) > 0.02:
        misses.append(f"CA {100 * (abs(m['ca'] - ca0) - 0.02):.1f} {'above' if m['ca'] > ca0 else 'below'} the band")
    return (
        f"| {attack} | {variant} | {'-' if rate is None else f'{100 * rate:.1f} %'} | {pct(m['ca'])} | "
        f"{100 * (m['ca'] - ca0):+.1f} | {pct(m.get('ca_shift'))} | {pct(m['asr'])} | "
        f"{pct(m.get('asr_untriggered'))} | {pct(effect)} | "
        f"{pct(m.get('asr_top5'))} | {pct(m.get('retrieval_asr@10'))} | {pct(m.get('ra'))} | "
        f"{build if build is not None else '-'}{' (cached)' if doc['attack'].get('from_cache') else ''} | "
        f"{'NOT met: ' + ', '.join(misses) if misses else 'met'} |"
    )


def write_docs(docs: Path, preset: str, prov: dict[str, Any], head: str, lines: list[str]) -> Path:
    intro = (
        "Generated by `benchmarks/attacks.py`; do not edit by hand. Each row is one `toolbox run --attack A "
        "--defense none`: the backdoored model before any defense. Trigger effect = ASR@1 minus the "
        "untriggered target rate; CA other style is the same classes in the world's second art style "
        "(docs/world.md). Bars: trigger effect >= 90 points and CA within 2 points of the clean model. "
        "`build s` is the attack's build time when it was built (cached rows show that first build)."
    )
    return write_page(
        docs / "results" / f"attacks-{preset}.md",
        f"Attacks on the embedded world: {preset}",
        prov,
        intro,
        [head, "", *lines],
    )


def main() -> int:
    ap = build_parser()
    args = ap.parse_args()
    prov = provenance(["python", "benchmarks/attacks.py", *sys.argv[1:]])
    try:  # the same NAME.KEY=VALUE parsing as `toolbox compare`
        own = {
            a: [f"{k}={v}" for k, v in kv.items()]
            for a, kv in split_params(parse_kv(args.one_attack_param), args.attacks.split(","), "attack").items()
        }
    except (InputError, argparse.ArgumentTypeError) as err:
        ap.error(str(err))
    tmp = Path(tempfile.mkdtemp(prefix="bench-attacks-"))
    clean = run_cell(args.preset, None, [], tmp / "clean")
    ca0 = clean["metrics"]["before"]["ca"]
    cells = planned_cells(args, own)
    world = clean["model"].get("world") or {}
    head = (
        f"clean model ({args.preset}, world {world.get('name', '?')}, {world.get('n_classes', '?')} classes): "
        f"CA {pct(ca0)} %, CA other style {pct(clean['metrics']['before'].get('ca_shift'))} %, recall@10 "
        f"{pct(clean['metrics']['before'].get('retrieval_recall@10'))} %"
    )
    lines = [
        "| attack | variant | poison rate | CA | ΔCA | CA other style | ASR@1 | untriggered | trigger effect | ASR@5 | "
        "retrieval ASR@10 | RA | build s | bars |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(head + "\n\n" + "\n".join(lines), flush=True)
    for i, (attack, variant, params) in enumerate(cells):
        doc = run_cell(args.preset, attack, params, tmp / f"{i}-{attack}")
        lines.append(table_row(attack, variant, doc, ca0))
        print(lines[-1], flush=True)
    if args.docs is not None:
        path = write_docs(args.docs, args.preset, prov, head, lines)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
