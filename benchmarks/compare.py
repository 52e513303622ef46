"""Issue 6 bars: the attacks x defenses comparison, its sanity checks, and cell reuse.

    python benchmarks/compare.py                       # 7 attacks x 7 defenses on the embedded default
    python benchmarks/compare.py --attacks badnet,blended --defenses none,ft,invertune
    python benchmarks/compare.py --reuse-check         # 2 attacks x 3 defenses, twice: the second call must reuse
    python benchmarks/compare.py --baseline-data-ratio 2   # baselines on 2x InverTune's data (faster)
    python benchmarks/compare.py --rebound-steps 100 --docs docs  # + rebound ASR; writes docs/results/compare-PRESET.md
    python benchmarks/compare.py --preset default-resnet -a badencoder.lambda2=3   # an attack setting for every cell
    python benchmarks/compare.py --keep-cells docs/results/cells/compare-default   # resumable on the next machine

Prints the paper-style table (from `toolbox compare`), then, per baseline, the attacks on
which it lowered ASR@1 by at least 10 points (a baseline that never moves ASR is
suspicious), and the columns where InverTune has the lowest ASR among the defenses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from toolbox.cli import parse_kv
from toolbox.compare import Cell, CompareRequest, compare, markdown_table, split_params
from toolbox.errors import InputError
from toolbox.results import provenance, write_page
from toolbox.runner import Sources

ATTACKS = "badnet,blended,sig,wanet,badencoder,badclip,evasive"
DEFENSES = "none,ft,cleanclip,cleanerclip,par,segoracle,invertune"
MOVED = 0.10  # ASR@1 drop that counts as "moved"
BASELINES = ("ft", "cleanclip", "cleanerclip", "par")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", default=ATTACKS)
    ap.add_argument("--defenses", default=DEFENSES)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--out", type=Path, default=Path("results/compare-benchmark"))
    ap.add_argument("--reuse-check", action="store_true", help="run 2 attacks x 3 defenses twice and time both")
    ap.add_argument("--baseline-data-ratio", type=float, help="the baselines' data_ratio (default: theirs, 10)")
    ap.add_argument("--rebound-steps", type=int, default=0, help="rebound ASR after this many clean fine-tuning steps")
    ap.add_argument("--docs", type=Path, help="also write the tables as DOCS/results/compare-PRESET.md")
    ap.add_argument(
        "--keep-cells",
        type=Path,
        metavar="DIR",
        help="keep finished cells' results in DIR and take them from there (a grid longer than one machine's life)",
    )
    ap.add_argument(
        "-a",
        "--attack-param",
        action="append",
        default=[],
        metavar="ATTACK.KEY=V",
        help="an attack's setting in every cell it is in (repeatable)",
    )
    return ap


def reuse_check(args: argparse.Namespace, params: dict[str, dict[str, str]]) -> None:
    """2 attacks x 3 defenses, twice: the second call's cells must all come from the cache."""
    req = CompareRequest(
        attacks=["badnet", "blended"],
        defenses=["none", "ft", "invertune"],
        out=args.out / "reuse",
        sources=Sources(preset=args.preset),
        defense_params={k: v for k, v in params.items() if k == "ft"},
    )
    for call in (1, 2):
        start = time.perf_counter()
        cells = compare(req)
        print(
            f"call {call}: {len(cells)} cells, {sum(c.from_cache for c in cells)} reused, "
            f"{time.perf_counter() - start:.1f} s"
        )


def sanity_notes(cells: list[Cell]) -> list[str]:
    """Per defense, the attacks whose ASR@1 it moved; and where InverTune has the lowest ASR@1."""
    notes: list[str] = []
    by = {(c.attack, c.defense): c for c in cells}
    attacks = list(dict.fromkeys(c.attack for c in cells))
    defenses = list(dict.fromkeys(c.defense for c in cells))
    for d in defenses:
        if d == "none":
            continue
        moved = [
            a
            for a in attacks
            if (a, d) in by
            and by[(a, d)].before.get("asr") is not None
            and by[(a, d)].before["asr"] - by[(a, d)].after["asr"] >= MOVED
        ]
        notes.append(
            f"{d}: lowered ASR@1 by >= {100 * MOVED:.0f} points on {len(moved)}/{len(attacks)} attacks "
            f"({', '.join(moved) or 'none'})"
        )
    if "invertune" in defenses:
        lowest = []
        for a in attacks:
            asrs = {d: by[(a, d)].after.get("asr") for d in defenses if d != "none" and (a, d) in by}
            if (
                asrs
                and asrs.get("invertune") is not None
                and asrs["invertune"] <= min(v for v in asrs.values() if v is not None)
            ):
                lowest.append(a)
        notes.append(
            f"invertune has the lowest ASR@1 in {len(lowest)}/{len(attacks)} attack columns "
            f"({', '.join(lowest) or 'none'})"
        )
    return notes


def shift_table(cells: list[Cell]) -> str:
    """CA in the world's second art style after each defense: its cost under distribution shift."""
    by = {(c.attack, c.defense): c for c in cells}
    attacks = list(dict.fromkeys(c.attack for c in cells))
    defenses = list(dict.fromkeys(c.defense for c in cells))

    def cell(a: str, d: str) -> str:
        v = by[(a, d)].after.get("ca_shift") if (a, d) in by else None
        return "-" if v is None else f"{100 * v:.2f}"

    return "\n".join(
        [
            "| defense | " + " | ".join(f"{a} CA other style" for a in attacks) + " |",
            "|---|" + "---|" * len(attacks),
            *[f"| {d} | " + " | ".join(cell(a, d) for a in attacks) + " |" for d in defenses],
        ]
    )


def write_docs(
    args: argparse.Namespace,
    prov: dict[str, Any],
    params: dict[str, dict[str, str]],
    attack_params: dict[str, dict[str, str]],
    table: str,
    notes: list[str],
    cells: list[Cell],
) -> Path:
    intro = (
        "Generated by `benchmarks/compare.py`; do not edit by hand. Each cell is one `toolbox run --attack A "
        "--defense D` with every parameter at its default"
        + (f" ({params})" if params else "")
        + (f" except these attack settings: {attack_params}" if attack_params else "")
        + "; the "
        "cells' result.json files are listed in compare.json beside the table."
        + (
            f" Finished cells are kept in `{args.keep_cells}` and may come from earlier machines at the same "
            "plugin code (the code stamps beside them say so); each result.json records when it ran and with "
            "which versions."
            if args.keep_cells
            else ""
        )
    )
    return write_page(
        args.docs / "results" / f"compare-{args.preset}.md",
        f"Attacks x defenses on the embedded world: {args.preset}",
        prov,
        intro,
        [
            table.rstrip(),
            "",
            *[f"- {n}" for n in notes],
            "",
            "CA on the same classes in the world's second art style (docs/world.md), after each defense:",
            "",
            shift_table(cells),
        ],
    )


def main() -> int:
    ap = build_parser()
    args = ap.parse_args()
    try:  # the same NAME.KEY=VALUE parsing as `toolbox compare`
        attack_params = split_params(parse_kv(args.attack_param), args.attacks.split(","), "attack")
    except (InputError, argparse.ArgumentTypeError) as err:
        ap.error(str(err))
    prov = provenance(["python", "benchmarks/compare.py", *sys.argv[1:]])
    params = (
        {b: {"data_ratio": str(args.baseline_data_ratio)} for b in BASELINES}
        if args.baseline_data_ratio is not None
        else {}
    )
    if args.reuse_check:
        reuse_check(args, params)
        return 0
    defenses = args.defenses.split(",")
    req = CompareRequest(
        attacks=args.attacks.split(","),
        defenses=defenses,
        out=args.out,
        sources=Sources(preset=args.preset, rebound_steps=args.rebound_steps),
        defense_params={k: v for k, v in params.items() if k in defenses},
        attack_params=attack_params,
        keep_cells=args.keep_cells,
    )
    start = time.perf_counter()
    cells = compare(req)
    table = markdown_table(cells)
    print(table)
    print(
        f"{len(cells)} cells, {sum(c.from_cache for c in cells)} reused, {time.perf_counter() - start:.0f} s; "
        f"tables under {args.out}\n"
    )
    notes = sanity_notes(cells)
    print("\n".join(notes))
    if args.docs is not None:
        path = write_docs(args, prov, params, attack_params, table, notes, cells)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
