"""``toolbox run``: one defense, optionally after one attack, and the console's account of the result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import EXIT_OK
from ..outputs import kept_folders, out_arg
from .options import add_source_args, parse_kv, sources_from


def cmd_run(args: argparse.Namespace) -> int:
    from ..runner import RunRequest, default_out_dir, run

    req = RunRequest(
        defense=args.defense,
        attack=args.attack,
        sources=sources_from(args),
        out=args.out,
        defense_params=parse_kv(args.param),
        attack_params=parse_kv(args.attack_param),
        skip_unreadable=args.skip_unreadable,
        command=["toolbox", *args.argv],
        metrics=tuple(args.metric),
        calibration=tuple(args.calibration),
        references=tuple(args.reference),
    )
    before = kept_folders(Path(req.out) if req.out else default_out_dir(req))
    path = run(req)
    print(summary(json.loads(Path(path).read_text()), Path(path)))
    print_kept(Path(path).parent, before)
    return EXIT_OK


def print_kept(out: Path, before: set[str]) -> None:
    """Where this command moved what was in its way (a user's files, an older version's outputs)."""
    for name in sorted(kept_folders(out) - before):
        what = "this run's outputs, not moved into place" if name.startswith("unplaced-") else "what was in the way"
        print(f"kept      {out / name}: {what} (nothing was deleted)")


def summary(doc: dict[str, Any], path: Path) -> str:
    """The console's account of a run: verdict, CA / ASR before and after, time, where the files are."""
    from ..evaluation import IMPLANT_MARGIN, trigger_effect

    before, after = doc["metrics"]["before"], doc["metrics"]["after"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f} %"

    lines = [f"result    {path}"]
    world = (doc.get("model") or {}).get("world")
    if world:
        lines.append(f"world     {world['name']}:{world['preset']}, {world['n_classes']} classes")
    det = doc.get("detection") or {}
    attack = doc.get("attack") or {}
    if det:
        called = det.get("backdoored")
        verdict = det.get("verdict") or {True: "backdoored", False: "no backdoor found"}.get(called, "not assessed")
        target = f", target {det['target']!r}" if det.get("target") else ""
        if det.get("target") and attack.get("target") and det["target"] != attack["target"]:
            target += f" (the attack's: {attack['target']!r})"
        lines.append(f"verdict   {verdict}{target}")
        null = det.get("null") or {}
        if null.get("calibrated"):
            lines.append(
                f"score     {null['score']:.3g} under the clean null of {null['references']} references "
                f"(backdoored at <= {null['alpha']:g})"
            )
        elif "null" in det:
            lines.append("score     uncalibrated (no --calibration): the verdict is the detectors' own gates")
    effect = trigger_effect(before) if attack else None
    if effect is not None and effect < IMPLANT_MARGIN:
        lines.append(
            f"warning   the attack did not implant: its trigger adds {100 * effect:.1f} points of ASR@1 "
            f"(< {100 * IMPLANT_MARGIN:.0f}), so the suspect is effectively clean; on a small preset, "
            f"raise --attack-param poison_rate / epochs"
        )
    shift_style = ((world or {}).get("styles") or {}).get("shift_data", "shifted split")
    rows = [("CA (top-1)", "ca"), (f"CA {shift_style}", "ca_shift")]
    rows += [("ASR@1", "asr"), ("ASR untriggered", "asr_untriggered")]
    rows += [
        (f"ASR@1 {k[4:]}", k)
        for k in after
        if k.startswith("asr_") and not k[4:].startswith(("top", "untr")) and "_top" not in k
    ]
    rows += [(k, k) for k in after if k.startswith("retrieval_")]
    lines.append(f"{'':<22}{'before':>10}{'after':>10}")
    lines += [
        f"{label:<22}{pct(before.get(key)):>10}{pct(after.get(key)):>10}"
        for label, key in rows
        if before.get(key) is not None or after.get(key) is not None
    ]

    def num(v: float | None) -> str:  # a --metric's unit is its own: printed as computed
        return "-" if v is None else f"{v:.4g}"

    extra = [k for name in (doc["metric_config"].get("extra") or {}) for k in (name, f"{name}_triggered") if k in after]
    lines += [f"{key:<22}{num(before.get(key)):>10}{num(after.get(key)):>10}" for key in extra]
    stages = {k: v for k, v in doc["timings_s"].items() if "." not in k}
    lines.append(
        "time      " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + f" (total {sum(stages.values()):.1f} s)"
    )
    for name, rel in doc["artifacts"].items():
        lines.append(f"{'files' if name == next(iter(doc['artifacts'])) else '':<10}{name}: {path.parent / rel}")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run one defense (optionally after one attack) and write a result",
        description="Load a model (default: the embedded toy-world CLIP), optionally backdoor it, "
        "run a defense, measure CA/ASR before and after, and write OUT/result.json.",
    )
    p.add_argument("--defense", required=True, help="registered defense name (see `toolbox list --kind defense`)")
    p.add_argument("--attack", help="registered attack name to apply first (embedded world only needs nothing else)")
    add_source_args(p)
    p.add_argument("--out", type=out_arg, help="output directory (default: results/ATTACK-DEFENSE-seedN)")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="defense parameter override")
    p.add_argument("--attack-param", action="append", metavar="KEY=VALUE", help="attack parameter override")
    p.add_argument(
        "--calibration",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a clean null (`toolbox zoo calibrate`; repeatable, one per architecture): the verdict becomes "
        "a tail probability under the one that holds for the model",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="MODEL",
        help="a clean model of the suspect's architecture (as --model takes it; repeatable): a trigger that "
        "moves it as much as the suspect is natural, not a backdoor",
    )
    p.add_argument("--skip-unreadable", action="store_true", help="skip unreadable images (counted in the result)")
    p.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        default=[],
        help="a registered metric to measure beside CA/ASR, on clean and triggered images (repeatable)",
    )
    p.set_defaults(func=cmd_run)
