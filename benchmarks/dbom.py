"""DBOM (issue 43) on the embedded world, FLARE beside it: seen and unseen trigger-object pairings.

    python benchmarks/dbom.py                                   # default preset, five attacks, detection only
    python benchmarks/dbom.py --preset default-resnet --retrain --docs docs

Each attack's own poisoned training set (same seed as `toolbox run`: its poisoning record is the
ground truth) is scanned by `toolbox scan-data --defense dbom` and by `--defense flare`. DBOM knows
the trigger families in its ``known`` setting (default badnet, blended, sig) and learns them on the
defender's clean images; a quarter of each known trigger's objects is held out of its training.
A poisoned sample of a known family is a *seen* pairing when its object (the frozen clean model's
zero-shot label of the sample's clean image, as the primitives set labels objects) is not among
that trigger's held-out objects, *unseen* when it is; every sample of a family DBOM does not know
(wanet, badclip) is unseen. TPR is given per kind against the FPR over all clean samples; then
DBOM's own held-out test on its primitives set. With ``--retrain`` the clean model is trained on
DBOM's purified set with the attack's recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from toolbox.cli import main as toolbox
from toolbox.results import provenance, write_page

ATTACKS = "badnet,blended,sig,wanet,badclip"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def scan(defense: str, attack: str, preset: str, out: Path, params: list[str], retrain: bool) -> dict:
    """One scan-data run into ``out``; a finished one with the same arguments is read back (resumable)."""
    argv = ["scan-data", "--defense", defense, "--attack", attack, "--preset", preset, "--out", str(out)]
    argv += [x for p in params for x in ("-p", p)] + (["--retrain"] if retrain else [])
    done = out.with_name(out.name + ".argv.json")  # written after the scan: its arguments, so a rerun reuses it
    if (out / "scan.json").exists() and done.exists() and json.loads(done.read_text()) == argv:
        return json.loads((out / "scan.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        if toolbox(argv) != 0:
            raise SystemExit(f"scan failed: {argv}")
    done.write_text(json.dumps(argv))
    return json.loads((out / "scan.json").read_text())


@functools.cache
def _training_set(preset: str, source: str) -> Any:  # toolbox.Suspect, loaded once for every attack
    import toolbox

    return toolbox.load(preset=preset, clean_data=source, device="cpu")


def clean_objects(preset: str, doc: dict, rows: list[int]) -> list[str]:
    """The frozen clean model's zero-shot object of each poisoned sample's clean image: the sample at the
    same index of the world's training set (a poisoned set is that set, some samples stamped)."""
    import torch

    from toolbox.primitives.tensors import as_float
    from toolbox.zeroshot import ZeroShotHead

    source = doc["data"]["source"].rsplit(" (poisoned by ", 1)[0]
    world = _training_set(preset, source)
    if len(world.clean.dataset) != doc["data"]["n"]:
        raise SystemExit(f"{source} and the poisoned set differ in length: no index to pair them by")
    head = ZeroShotHead(world.model, world.classnames, world.templates, world.device)
    predicted = head.predict(world.model, as_float(world.clean.uint8(torch.tensor(rows, dtype=torch.long))))
    return [world.classnames[i] for i in predicted.tolist()]


def pairing_rates(out: Path, doc: dict, attack: str, preset: str) -> tuple[float | None, float | None, int, int]:
    """(TPR over seen-pairing poisoned samples, over unseen ones, how many of each) from scores.csv and
    the poisoned samples' clean objects."""
    unseen_objects = set((doc["scan_info"]["primitives_set"]["unseen_pairs"] or {}).get(attack, []))
    known = attack in doc["scan_info"]["known"]
    with open(out / "scores.csv", newline="") as fh:
        poisoned = [row for row in csv.DictReader(fh) if row["poisoned"] == "1"]
    objects = clean_objects(preset, doc, [int(row["index"]) for row in poisoned]) if known else [""] * len(poisoned)
    counts = {"seen": [0, 0], "unseen": [0, 0]}  # [flagged, all]
    for row, obj in zip(poisoned, objects, strict=True):
        kind = "seen" if known and obj not in unseen_objects else "unseen"
        counts[kind][0] += row["flagged"] == "1"
        counts[kind][1] += 1

    def rate(kind: str) -> float | None:
        return counts[kind][0] / counts[kind][1] if counts[kind][1] else None

    return rate("seen"), rate("unseen"), counts["seen"][1], counts["unseen"][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--attacks", default=ATTACKS)
    ap.add_argument("--retrain", action="store_true", help="also train on DBOM's purified set (the attack's recipe)")
    ap.add_argument("-p", "--param", action="append", default=[], help="DBOM setting KEY=VALUE (repeatable)")
    ap.add_argument("--docs", type=Path, help="also write DOCS/results/dbom-PRESET.md")
    ap.add_argument("--work", type=Path, help="where each scan is kept, and reused by a rerun (results/dbom-PRESET)")
    args = ap.parse_args()
    prov = provenance(["python", "benchmarks/dbom.py", *sys.argv[1:]])
    work = args.work or Path("results") / f"dbom-{args.preset}"  # an attack's scans take up to half an hour
    work.mkdir(parents=True, exist_ok=True)
    table = [
        "| attack | DBOM knows it | poisoned | DBOM TPR seen pairs | DBOM TPR unseen pairs | DBOM FPR | DBOM AUROC | "
        "FLARE TPR | FLARE FPR | FLARE AUROC | on DBOM's purified set: CA / ASR@1 | DBOM s |",
        "|" + "---|" * 12,
    ]
    own = ["| known trigger | TPR (its test images) | FPR (clean test images) |", "|---|---|---|"]
    split = ""
    print("\n".join(table), flush=True)
    for attack in args.attacks.split(","):
        start = time.perf_counter()
        doc = scan("dbom", attack, args.preset, work / f"dbom-{attack}", args.param, args.retrain)
        flare = scan("flare", attack, args.preset, work / f"flare-{attack}", [], False)["metrics"]["detection"]
        det, re = doc["metrics"]["detection"], doc["metrics"].get("retrain")
        seen, unseen, n_seen, n_unseen = pairing_rates(work / f"dbom-{attack}", doc, attack, args.preset)
        after = (re or {}).get("purified_set")
        purified = "-" if not after else f"{pct(after['ca'])} / {pct(after['asr'])}"
        if re and not after:
            purified = re.get("note", "-")
        table.append(
            f"| {attack} | {'yes' if attack in doc['scan_info']['known'] else 'no'} | {det['n_poisoned']} of "
            f"{det['n']} | {pct(seen)} (n={n_seen}) | {pct(unseen)} (n={n_unseen}) | {pct(det['fpr'])} | "
            f"{det['auroc']:.3f} | {pct(flare['tpr'])} | {pct(flare['fpr'])} | "
            f"{'-' if flare['auroc'] is None else format(flare['auroc'], '.3f')} | {purified} | "
            f"{doc['timings_s'].get('scan', 0):.0f} |"
        )
        print(table[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
        if len(own) == 2:  # DBOM's held-out test on its own primitives set: the same for every attack
            test = doc["scan_info"]["primitives_test"]
            own += [f"| {name} | {pct(r['tpr'])} | {pct(r['fpr'])} |" for name, r in test["per_trigger"].items()]
            split = (
                f"Seen pairings: TPR {pct(test['seen']['tpr'])} %; unseen pairings: "
                f"TPR {pct(test['unseen']['tpr'])} %, both at FPR {pct(test['seen']['fpr'])} %."
            )
    print("\n".join(["", *own, "", split]))
    if args.docs is not None:
        intro = (
            "Generated by `benchmarks/dbom.py`; do not edit by hand. Each row: the attack's own poisoned training "
            "set scanned by DBOM and by FLARE (`toolbox scan-data --defense dbom|flare --attack A`); rates in %. "
            f"DBOM settings: {args.param or 'defaults'}. What DBOM is and the choices made: "
            "[dataset defenses](../dataset-defenses.md)."
            + ("" if args.retrain else " Run without `--retrain`: no model was trained on the purified sets.")
        )
        body = [*table, "", "DBOM's own test, on held-out images of its primitives set:", "", *own, "", split]
        path = write_page(
            args.docs / "results" / f"dbom-{args.preset}.md",
            f"DBOM on the embedded world: {args.preset}",
            prov,
            intro,
            body,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
