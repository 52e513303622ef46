"""Stage-3 variants on one detection (issue 42): purification settings compared on zoo members.

    python benchmarks/purify.py --zoo ZOOS/dev --ids dev-004,dev-011 -v lr3e-4:tune.lr=3e-4 -v beta2:tune.beta=2
    python benchmarks/purify.py --zoo ZOOS/dev --ids dev-004 -v refresh:tune.refresh_every=10 --rebound-steps 100

Per member, InverTune's default detection runs once (stage 1 and the cascade, as a run would); then
stage 3 runs once per variant (``base``, the default, first) on that same finding, and each purified
model is scored against the member's own trigger: CA (in style) and real-trigger ASR@1, optionally
after ``--rebound-steps`` of clean fine-tuning. A variant may set ``tune.*``, ``min_round_asr`` and a
detector's tuning rule (``detectors.NAME.tune_steps``, ``.rounds``) only: anything that would change
the detection is refused (``-p`` sets the base, for every variant).
Stage 3 draws from its own seeded generators, so each variant tunes as a run with it would. Tune on
the dev split; the test split is for reporting.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import toolbox
from invertune_plugin.cascade import CascadeResult, Verdict
from invertune_plugin.defense import InverTune, InverTuneConfig
from toolbox import precision
from toolbox.api import DefenseContext
from toolbox.evaluation import EvalInputs, MetricConfig, evaluate
from toolbox.plugins import get_host
from toolbox.rebound import ReboundConfig, rebound
from toolbox.runner.request import seed_everything
from toolbox.zoo.build import read_manifest, world_of
from toolbox.zoo.evaluate import real_trigger_inputs
from toolbox.zoo.metrics import PurificationBar
from toolbox.zoo.spec import DEFAULT_WORLD

# settings a variant may change: none reaches the detection
PURIFY_ONLY = re.compile(r"tune\.\w+|min_round_asr|detectors\.\w+\.(tune_steps|rounds)")
BAR = PurificationBar()  # the zoo's: real ASR@1 <= 2 %, CA drop <= 2 points


def key_values(items: list[str], what: str) -> dict[str, str]:
    if bad := [i for i in items if "=" not in i]:
        raise SystemExit(f"{what}: KEY=VALUE expected, got {', '.join(map(repr, bad))}")
    return dict(i.split("=", 1) for i in items)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=V,KEY=V`` -> (NAME, {KEY: V}); every key a purification setting."""
    name, _, rest = text.partition(":")
    pairs = key_values([p for p in rest.split(",") if p], f"variant {name!r}")
    bad = [k for k in pairs if not PURIFY_ONLY.fullmatch(k)]
    if not name or name in ("base", "-") or bad:
        raise SystemExit(f"variant {text!r}: NAME:KEY=V,... (NAME not base) with keys {PURIFY_ONLY.pattern}; not {bad}")
    return name, pairs


def parse_variants(texts: list[str], base_params: dict[str, str]) -> dict[str, InverTuneConfig]:
    """``base`` (the ``-p`` settings) and every variant, configured before anything runs."""
    out: dict[str, InverTuneConfig] = {}
    for name, params in [("base", {}), *map(parse_variant, texts)]:
        if name in out:
            raise SystemExit(f"variant {name!r} given twice")
        try:
            out[name] = InverTune.configure({**base_params, **params})
        except ValueError as err:
            raise SystemExit(f"variant {name!r}: {err}") from err
    return out


def load_member(zoo: Path, record: dict[str, Any]) -> tuple[Any, Any]:
    """The suspect as a defender holds it, and the scorer's inputs (eval split, real trigger, target)."""
    world_name = record.get("world", DEFAULT_WORLD)
    world = world_of(record["preset"], world=world_name).data
    suspect = toolbox.load(
        str(zoo / "members" / record["id"] / "model"),
        clean_data=world["clean_data"],
        classes=world["classes"],
        templates=world["templates"],
        device="cpu",
    )
    inputs, data = real_trigger_inputs(zoo, record, suspect.model.image_size, ("eval", "train"))
    return suspect, (inputs, data["train"])


def score(model: Any, scorer: tuple[EvalInputs, Any], rebound_steps: int, seed: int) -> dict[str, float | None]:
    inputs, train = scorer
    registry = get_host().build_registry(quiet=True)
    cpu, metric = torch.device("cpu"), MetricConfig(top_k=(1,))
    got = evaluate(model, inputs, metric, registry, cpu)
    out = {"ca": got.get("ca"), "asr": got.get("asr"), "rebound": None}
    if rebound_steps:
        again, _ = rebound(model, train, ReboundConfig(steps=rebound_steps), seed, cpu)
        out["rebound"] = evaluate(again, inputs, metric, registry, cpu).get("asr")
    return out


def with_rule(result: CascadeResult, cfg: InverTuneConfig) -> CascadeResult:
    """``result`` with its detector's tuning rule (rounds, round 1's steps) as ``cfg`` sets it."""
    rule = cfg.detectors.get(result.detector.name)
    if rule is None:  # a known target's inversion, outside the cascade: its defaults, as the defense
        return result
    detector = copy.copy(result.detector)
    detector.config = replace(detector.config, rounds=rule.rounds, tune_steps=rule.tune_steps)
    return replace(result, detector=detector)


def member_rows(
    zoo: Path, record: dict[str, Any], variants: dict[str, InverTuneConfig], rebound_steps: int, seed: int
) -> list[dict[str, Any]]:
    suspect, scorer = load_member(zoo, record)
    before = score(suspect.model, scorer, 0, seed)
    base = InverTune(variants["base"])
    with tempfile.TemporaryDirectory() as work:
        ctx = DefenseContext(
            suspect.model, suspect.clean, suspect.classnames, suspect.templates, seed, suspect.device, Path(work)
        )
        seed_everything(seed)  # as a run: its global generators, then the defense
        start = time.perf_counter()
        with precision.autocast(base.config.precision, ctx.device):  # as defend()
            search, result, _, _ = base.detect(ctx)
        detect_s = time.perf_counter() - start
    row = {"id": record["id"], "arch": record["arch"], "family": record["family"], "target": record["target"]}
    row |= {"found": result.finding.target, "verdict": result.verdict.value, "detect_s": round(detect_s, 1)}
    if result.verdict is Verdict.NO_BACKDOOR_FOUND and not base.config.purify_when_clean:  # as the defense
        return [row | {"variant": "-", "ca_before": before["ca"], "asr_before": before["asr"]}]
    rows = []
    for name, cfg in variants.items():
        if result.finding.adversary is not None:
            result.finding.adversary.reset()  # each variant starts from the finding's own trigger
        start = time.perf_counter()
        with precision.autocast(cfg.precision, ctx.device):
            model, _, rounds, _ = InverTune(cfg).purify(search, with_rule(result, cfg))
        took = time.perf_counter() - start
        after = score(model, scorer, rebound_steps, seed)
        guard = [g["agreement"] for r in rounds for g in r["guard"]]
        rows.append(
            row
            | {"variant": name, "ca_before": before["ca"], "asr_before": before["asr"], "tune_s": round(took, 1)}
            | {"ca_after": after["ca"], "asr_after": after["asr"], "rebound": after["rebound"], "rounds": len(rounds)}
            | {"agreement": guard[-1] if guard else None, "tune_steps": [r["tune_steps"] for r in rounds]}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def report(rows: list[dict[str, Any]], variants: list[str]) -> str:
    lines = [
        "| member | arch | family | target (found) | variant | CA before -> after | real ASR@1 | rebound ASR "
        "| agreement | tune steps | tune s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        named = r["target"] if r["found"] == r["target"] else f"{r['target']} ({r['found']}: wrong)"
        if r["variant"] == "-":
            lines.append(f"| {r['id']} | {r['arch']} | {r['family']} | {named} | not detected | | | | | | |")
            continue
        agreement = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        lines.append(
            f"| {r['id']} | {r['arch']} | {r['family']} | {named} | {r['variant']} | {pct(r['ca_before'])} -> "
            f"{pct(r['ca_after'])} | {pct(r['asr_after'])} | {pct(r['rebound'])} | {agreement} | "
            f"{'+'.join(map(str, r['tune_steps']))} | {r['tune_s']:.0f} |"
        )
    lines += [
        "",
        f"{sum(r['variant'] == '-' for r in rows)} member(s) not detected: not purified, counted in no row below.",
        "",
        "| variant | members purified | bar met | median CA drop | median real ASR@1 | median rebound |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        if not mine:
            continue
        drops = [r["ca_before"] - r["ca_after"] for r in mine]
        met = sum(BAR.passed(r["asr_after"], r["ca_before"] - r["ca_after"]) for r in mine)
        rebounds = [r["rebound"] for r in mine if r["rebound"] is not None]
        lines.append(
            f"| {v} | {len(mine)} | {met} | {pct(statistics.median(drops))} | "
            f"{pct(statistics.median(r['asr_after'] for r in mine))} | "
            f"{pct(statistics.median(rebounds)) if rebounds else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True, help="a built zoo split (its members' manifest)")
    ap.add_argument("--ids", required=True, help="member ids, comma-separated (backdoored ones; clean are skipped)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=V", help="for every variant")
    ap.add_argument("-v", "--variant", action="append", default=[], metavar="NAME:KEY=V,...")
    ap.add_argument("--rebound-steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    variants = parse_variants(args.variant, key_values(args.param, "-p"))
    records = {r["id"]: r for r in read_manifest(args.zoo)}
    wanted = args.ids.split(",")
    if missing := [i for i in wanted if i not in records]:
        raise SystemExit(f"not members of {args.zoo}: {', '.join(missing)}")
    rows = []
    for i in wanted:
        if records[i]["label"] != "backdoored":
            print(f"{i}: {records[i]['label']}, skipped")
            continue
        rows += member_rows(args.zoo, records[i], variants, args.rebound_steps, args.seed)
    print(report(rows, list(variants)))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
