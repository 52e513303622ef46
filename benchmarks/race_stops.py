"""Stage 1's early stops (issue 23, item 5): what they save, and whether they leave alone what the
detectors read from the race.

    python benchmarks/race_stops.py --zoo ~/.cache/invertune-toolbox/zoos/dev [--members dev-000,dev-003]
    python benchmarks/race_stops.py --zoo ZOO -p race_cut_after=15 -p race_patience=0

Per zoo member (every one, not-implanted included; resumable: one JSON per member under
ZOO/stats/race-stops[-SETTING]/), stage 1 runs twice on the same images and seed: with the default
settings ("off") and with the ``-p`` overrides (default: ``race_cut_after=10, race_patience=3``).
The detectors read from the race:
the consensus ranking's top classes (the inversion takes the first, the patch detector the top
``refine.classes``), each of those classes' best patch location (and the locations tied with it),
and the global families' ranking (stripes and L-inf take its top). The table says whether each is
the same, and each run's seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from detector_stats import N_IMAGES, SEED, load_member  # the same member loading and image draw

from invertune_plugin.identify import Identification, IdentifyConfig, identify
from invertune_plugin.refine import RefineConfig, global_ranking
from toolbox import atomic
from toolbox.api import apply_overrides
from toolbox.zeroshot import ZeroShotHead
from toolbox.zoo.build import read_manifest

STOPS = {"race_cut_after": "10", "race_patience": "3"}  # the setting measured in issue 23's note
TOP = RefineConfig().classes  # the refinement detectors' default class budget (the inversion takes 1)


def read(ident: Identification) -> dict[str, Any]:
    """What the detectors take from stage 1."""
    top = [c for c, _ in ident.ranking[:TOP]]
    patches = [u for u in ident.uaps if u.kind.startswith("race:patch@")]
    locations = {}
    for cls in top:
        c = ident.classnames.index(cls)
        best = max(patches, key=lambda u: float(u.shift[c]))
        tied = sorted(u.kind for u in patches if float(u.rates[c]) >= float(best.rates[c]) - 1e-9)
        locations[cls] = {"best": best.kind, "tied": tied}
    return {
        "top": top,
        "locations": locations,
        "global_top": global_ranking(ident)[:TOP],
        "anomaly_index": ident.anomaly_index,
    }


def member(zoo: Path, record: dict[str, Any], stops: IdentifyConfig) -> dict[str, Any]:
    suspect = load_member(zoo, record, device="cpu")
    images = suspect.images(N_IMAGES, seed=SEED)
    head = ZeroShotHead(suspect.model, suspect.classnames, suspect.templates, suspect.device)
    doc: dict[str, Any] = {k: record.get(k) for k in ("id", "label", "arch", "family", "target")}
    for name, cfg in (("off", IdentifyConfig()), ("on", stops)):
        start = time.perf_counter()
        ident = identify(suspect.model, images, head, cfg, SEED)
        doc[name] = {
            **read(ident),
            "seconds": round(time.perf_counter() - start, 1),
            "class_steps": sum(int(u.steps[u.steps >= 0].sum()) for u in ident.uaps),
        }
    return doc


def report(docs: list[dict[str, Any]]) -> str:
    lines = [
        "| member | label | family, arch | target (off) | top-3 same | locations same | global top-3 same "
        "| race s off -> on | class-steps off -> on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    same_all = True
    for d in docs:
        off, on = d["off"], d["on"]
        same = (off["top"] == on["top"], off["locations"] == on["locations"], off["global_top"] == on["global_top"])
        same_all &= all(same)
        lines.append(
            f"| {d['id']} | {d['label']} | {d['family']}, {d['arch']} | {off['top'][0]} | "
            + " | ".join("yes" if s else "**no**" for s in same)
            + f" | {off['seconds']:.0f} -> {on['seconds']:.0f} | {off['class_steps']} -> {on['class_steps']} |"
        )
    off_s, on_s = sum(d["off"]["seconds"] for d in docs), sum(d["on"]["seconds"] for d in docs)
    lines.append(
        f"\n{len(docs)} members; race {off_s:.0f} s -> {on_s:.0f} s ({1 - on_s / max(off_s, 1e-9):.0%} less); "
        f"everything the detectors read is {'the same on every member' if same_all else 'NOT the same'}."
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--members", help="comma-separated member ids (default: all)")
    ap.add_argument(
        "-p",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stage-1 setting (IdentifyConfig) of the 'on' run; default: "
        + ", ".join(f"{k}={v}" for k, v in STOPS.items()),
    )
    args = ap.parse_args()
    if any("=" not in o for o in args.overrides):
        ap.error("-p takes KEY=VALUE")
    overrides = dict(o.split("=", 1) for o in args.overrides) or STOPS
    try:
        stops = apply_overrides(IdentifyConfig(), overrides, "identify")
    except ValueError as exc:
        ap.error(str(exc))
    records = read_manifest(args.zoo)
    if args.members:
        wanted = args.members.split(",")
        unknown = sorted(set(wanted) - {r["id"] for r in records})
        if unknown:
            ap.error(f"unknown members: {', '.join(unknown)}")
        records = [r for r in records if r["id"] in wanted]
    tag = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    out = args.zoo / "stats" / ("race-stops" + ("" if overrides == STOPS else f"-{zlib.crc32(tag.encode()):08x}"))
    docs = []
    for i, record in enumerate(records):
        path = out / f"{record['id']}.json"
        if not path.is_file():
            atomic.write_json(path, {**member(args.zoo, record, stops), "overrides": overrides})
            print(f"{i + 1}/{len(records)} {record['id']}", flush=True)
        docs.append(json.loads(path.read_text(encoding="utf-8")))
    print(report(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
