"""InverTune bars (issue 5): the paper-style table on the embedded world.

    python benchmarks/invertune.py                                  # ViT, default profile, clean + 6 attacks
    python benchmarks/invertune.py --preset default-resnet          # ResNet-type tiny CLIP
    python benchmarks/invertune.py --profile paper                  # the paper's hyperparameters
    python benchmarks/invertune.py --attacks badnet --attack-param location=top-left
    python benchmarks/invertune.py -p rounds=2                      # any InverTune setting
    python benchmarks/invertune.py --from-compare results/compare   # rows from a `toolbox compare` run's cells
    python benchmarks/invertune.py --docs docs                      # also write docs/results/invertune-default.md

Each row is one real `toolbox run --attack A --defense invertune` (attacked models come
from the cache). Columns: CA / ASR@1 / ASR@10 / retrieval recall@10 / retrieval ASR@10,
before (no defense) and after; stage-1 rank of the true target and the verdict; the
inverted trigger's own ASR, mask size and source (stage-2 inversion or a refined stage-1
patch); wall time of the defense. Bars: the chosen target is the attack's, verdict "no backdoor"
on the clean model, ASR@1 after <= 2 %, CA within 2 points, <= 5 min. A cell whose trigger,
before any defense, sends fewer than NOT_IMPLANTED more images to the target than the untriggered
images already go there (ASR@1 minus `asr_untriggered`; ASR@1 alone when a result lacks it) has no
backdoor to find: it is marked "n/a", not met. The "untriggered" column is that baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from toolbox.cli import main as toolbox
from toolbox.results import provenance, write_page

ATTACKS = ("badnet", "blended", "sig", "wanet", "badencoder", "badclip")
TIME_BAR_S = 300  # the whole defense, every cell, the clean model's included
NOT_IMPLANTED = 0.2  # trigger lift before: below this the attack did not plant a backdoor worth the name


def trigger_lift(metrics: dict) -> float | None:
    """ASR@1 minus the untriggered images' rate of the target (ASR@1 when that is not recorded)."""
    if metrics.get("asr") is None:
        return None
    return metrics["asr"] - (metrics.get("asr_untriggered") or 0.0)


def run_cell(
    preset: str, attack: str | None, profile: str, attack_params: list[str], params: list[str], out: Path
) -> dict:
    argv = ["run", "--defense", "invertune", "--preset", preset, "--out", str(out), "-p", f"profile={profile}"]
    for p in params:
        argv += ["-p", p]
    if attack:
        argv += ["--attack", attack]
        for p in attack_params:
            argv += ["--attack-param", p]
    with contextlib.redirect_stdout(io.StringIO()):
        if toolbox(argv) != 0:
            raise SystemExit(f"run failed: {argv}")
    return json.loads((out / "result.json").read_text())


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def verdict_cell(ok: bool | None, before: dict) -> str:
    if ok is None:
        return (
            f"n/a (no backdoor: ASR@1 {pct(before['asr'])} % triggered, "
            f"{pct(before.get('asr_untriggered'))} % untriggered)"
        )
    return "met" if ok else "NOT met"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--attacks", default="none," + ",".join(ATTACKS))
    ap.add_argument("--attack-param", action="append", default=[])
    ap.add_argument("-p", "--param", action="append", default=[], help="InverTune setting KEY=VALUE (repeatable)")
    ap.add_argument("--out", type=Path, help="keep each cell's run directory here (default: a temp dir)")
    ap.add_argument("--from-compare", type=Path, help="read the invertune cells of a `toolbox compare` output dir")
    ap.add_argument("--docs", type=Path, help="also write the table as DOCS/results/invertune-PRESET[-PROFILE].md")
    return ap


def table_row(attack: str | None, doc: dict) -> str:
    """One result's row: before and after, what stage 1 found, the trigger, and whether the bars are met."""
    b, a = doc["metrics"]["before"], doc["metrics"]["after"]
    det = doc["detection"] or {}
    true_target = (doc["attack"] or {}).get("target")
    ranking = [r["class"] for r in det.get("ranking_top5", [])]
    rank = (ranking.index(true_target) + 1 if true_target in ranking else ">5") if true_target else "-"
    if det.get("target_given"):
        rank = "given"
    inv = det.get("inverted_trigger", {})
    secs = doc["timings_s"].get("defense", 0.0)
    if attack is None:  # the clean model: nothing to remove, but the time bar holds
        ok = det.get("backdoored") is False and secs <= TIME_BAR_S
    elif (lift := trigger_lift(b)) is not None and lift < NOT_IMPLANTED:
        ok = None
    else:
        ok = (
            det.get("target") == true_target
            and det.get("backdoored") is True
            and a["asr"] is not None
            and a["asr"] <= 0.02
            and abs(a["ca"] - b["ca"]) <= 0.02
            and secs <= TIME_BAR_S
        )
    return (
        f"| {attack or 'clean'} | {pct(b['ca'])} | {pct(a['ca'])} | {pct(b['asr'])} | "
        f"{pct(b.get('asr_untriggered'))} | {pct(a['asr'])} | "
        f"{pct(a.get('asr_top10'))} | {pct(b.get('retrieval_recall@10'))} | {pct(a.get('retrieval_recall@10'))} | "
        f"{pct(b.get('retrieval_asr@10'))} | {pct(a.get('retrieval_asr@10'))} | {rank} | "
        f"{det.get('target', '-')} | {det.get('verdict', '-')} | {pct(inv.get('holdout_asr'))} | "
        f"{pct(inv.get('mask_fraction'))} | {inv.get('source', 'stage 2 inversion')} | {secs:.0f} | "
        f"{verdict_cell(ok, b)} |"
    )


def write_docs(args: argparse.Namespace, prov: dict[str, Any], setting: str, table: list[str]) -> Path:
    name = f"invertune-{args.preset}" + ("" if args.profile == "default" else f"-{args.profile}")
    intro = (
        "Generated by `benchmarks/invertune.py`; do not edit by hand. Each row is one `toolbox run "
        "--attack A --defense invertune` (" + setting + '). Percentages; "untriggered" is the target '
        "rate of images without the trigger; a cell whose trigger lifts the target rate by less than "
        f'{NOT_IMPLANTED:.0%} is "n/a" (no backdoor). Bars: the attack\'s target found, ASR@1 after '
        f"<= 2 %, CA within 2 points, defense <= {TIME_BAR_S} s; the clean model not called backdoored."
    )
    write_page(
        args.docs / "results" / f"{name}.md",
        f"InverTune on the embedded world: {args.preset}, profile {args.profile}",
        prov,
        intro,
        table,
    )
    return args.docs / "results" / (name + ".md")


def main() -> int:
    args = build_parser().parse_args()
    prov = provenance(["python", "benchmarks/invertune.py", *sys.argv[1:]])
    cells: dict[str, dict] = {}
    if args.from_compare:
        for c in json.loads((args.from_compare / "compare.json").read_text())["cells"]:
            if c["defense"] == "invertune":
                cells[c["attack"]] = json.loads(Path(c["result"]).read_text())
    tmp = args.out or Path(tempfile.mkdtemp(prefix="bench-invertune-"))
    setting = (
        f"cells read from {args.from_compare}/compare.json (their own parameters are in each result)"
        if cells
        else f"preset {args.preset}, profile {args.profile}, InverTune params {args.param or 'defaults'}, "
        f"attack params {args.attack_param or 'defaults'}"
    )
    table = [
        "| attack | CA before | CA after | ASR@1 before | untriggered before | ASR@1 after | ASR@10 after | "
        "recall@10 before | recall@10 after | retr. ASR before | retr. ASR after | stage-1 rank | target | verdict | "
        "inverted ASR | mask % | trigger from | defense s | bars |",
        "|" + "---|" * 19,
    ]
    print(setting + "\n\n" + "\n".join(table), flush=True)
    for attack in list(cells) if cells else args.attacks.split(","):
        doc = cells[attack] if cells else None
        attack = None if attack == "none" else attack
        if doc is None:
            doc = run_cell(args.preset, attack, args.profile, args.attack_param, args.param, tmp / (attack or "clean"))
        table.append(table_row(attack, doc))
        print(table[-1], flush=True)
    if args.docs is not None:
        print(f"wrote {write_docs(args, prov, setting, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
