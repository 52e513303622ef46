"""Per-class statistics of InverTune's trigger searches over a zoo's dev split: the data a
self-calibrated detection score is designed on (issue 22, item 2).

    python benchmarks/detector_stats.py --zoo ~/.cache/invertune-toolbox/zoos/dev [--references 4]

    python benchmarks/detector_stats.py --zoo ZOO --race-only [-p race_global_eps=0.0314,0.0627]

Per clean or backdoored member (resumable: one JSON per member under ZOO/stats/):
- stage 1's race (the default settings, or ``-p`` overrides with ``--race-only``): every class's
  held-out rate and mean logit margin, per family; ``--race-only`` stops there;
- for each refinement family (the best-raced patch location per class, grayscale stripes at
  48/255, full-colour L-inf at 16/255), a 100-step targeted UAP (one restart) toward the top
  ``--top`` classes of that family's ranking and toward ``--references`` classes drawn (seeded)
  from the rest of the vocabulary: held-out rate, and sign-flipped rate for the additive ones.

Then prints each candidate score's ROC-AUC and TPR at FPR <= 5 % on the split, and across
architectures (the threshold chosen on one, applied to the other): a score meant to hold across
architectures should keep its threshold. Refuses a split named ``test``: that one is held out,
except with ``--evaluate CANDIDATE --threshold T``, which reports one candidate fixed on dev, at
dev's threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import toolbox
from invertune_plugin.identify import MAD_TO_SIGMA, IdentifyConfig, fit_and_holdout, identify
from invertune_plugin.race import race_families, success_rate, targeted_uaps
from invertune_plugin.refine import global_ranking
from toolbox import atomic
from toolbox.api import apply_overrides
from toolbox.primitives.perturbations import GLOBAL_FAMILIES, linf_family
from toolbox.primitives.tensors import frozen
from toolbox.primitives.triggers import add_signal
from toolbox.zeroshot import ZeroShotHead
from toolbox.zoo.build import read_manifest, world_of

STEPS, N_IMAGES, SEED = 100, 1024, 0


def load_member(zoo: Path, record: dict[str, Any], device: str = "auto") -> Any:
    """A zoo member's model with its world's vocabulary and defender images (a ``toolbox.Suspect``)."""
    world = world_of(record["preset"], world=record.get("world", "embedded")).data
    return toolbox.load(
        str(zoo / "members" / record["id"] / "model"),
        clean_data=world["clean_data"],
        classes=world["classes"],
        templates=world["templates"],
        device=device,
    )


def member_stats(
    zoo: Path,
    record: dict[str, Any],
    top: int,
    references: int,
    race_only: bool = False,
    cfg: IdentifyConfig | None = None,
) -> dict[str, Any]:
    suspect = load_member(zoo, record)
    model, images = suspect.model, suspect.images(N_IMAGES, seed=SEED)
    head = ZeroShotHead(model, suspect.classnames, suspect.templates, suspect.device)
    cfg = cfg or IdentifyConfig()
    start = time.perf_counter()
    ident = identify(model, images, head, cfg, SEED)
    doc: dict[str, Any] = {
        "id": record["id"],
        "label": record["label"],
        "arch": record["arch"],
        "family": record["family"],
        "target": record.get("target"),
        "race": {
            u.kind: {c: float(r) for c, r in zip(ident.classnames, u.rates.tolist()) if not math.isnan(r)}
            for u in ident.uaps
        },
        "race_margins": {
            u.kind: {c: float(m) for c, m in zip(ident.classnames, u.margins.tolist()) if not math.isnan(m)}
            for u in ident.uaps
        },
        "race_ranking": [c for c, _ in ident.ranking],
        "seconds": {},
    }
    doc["seconds"]["race"] = time.perf_counter() - start
    if race_only:
        return doc
    size = images.shape[-1]
    patch_fams = {f.kind: f for f in race_families(size, cfg) if f.pixels is not None}
    searches: dict[str, tuple[list[str], Callable[[int], Any]]] = {
        "patch": (
            [c for c, _ in ident.ranking],
            lambda c: patch_fams[
                max((u for u in ident.uaps if u.kind in patch_fams), key=lambda u: float(u.shift[c])).kind
            ],
        ),
        "stripes@48/255": (global_ranking(ident), lambda c: GLOBAL_FAMILIES["stripes"](size, 48 / 255)),
        "linf@16/255": (global_ranking(ident), lambda c: linf_family(size, 16 / 255)),
    }
    with frozen(model):
        fit, hold, hold_pred = fit_and_holdout(model, images, head, cfg, SEED)
        for name, (ranking, family_of) in searches.items():
            start = time.perf_counter()
            rest = ranking[top:]
            draw = torch.randperm(len(rest), generator=torch.Generator().manual_seed(SEED + 1))[:references]
            chosen = ranking[:top] + [rest[i] for i in draw.tolist()]
            classes = [head.classnames.index(cls) for cls in chosen]
            groups: dict[str, list[int]] = {}  # classes sharing a family (patch location) are optimised together
            for c in classes:
                groups.setdefault(family_of(c).kind, []).append(c)
            rows: dict[int, dict[str, Any]] = {}
            for members in groups.values():
                family = family_of(members[0])
                gens = [torch.Generator().manual_seed(zlib.crc32(f"{SEED}:{name}:{c}".encode())) for c in members]
                params = targeted_uaps(model, head, fit, family, members, cfg, STEPS, gens)
                for c, param in zip(members, params):
                    row = {
                        "class": head.classnames[c],
                        "searched": classes.index(c) < top,
                        "family": family.kind,
                        "rate": success_rate(model, head, family.apply(hold, param), hold_pred, c),
                    }
                    if family.delta is not None:
                        row["flipped"] = success_rate(model, head, add_signal(hold, -family.delta(param)), hold_pred, c)
                    rows[c] = row
            doc[name] = [rows[c] for c in classes]
            doc["seconds"][name] = time.perf_counter() - start
    return doc


# -------------------- candidate scores (each: member doc -> float)


def logit(rate: float, n: int = 300) -> float:
    p = min(max(rate, 1 / (n + 1)), n / (n + 1))
    return math.log(p / (1 - p))


def robust_z(value: float, reference: list[float], floor: float = 0.25) -> float:
    ref = np.asarray(reference, dtype=float)
    median = float(np.median(ref))
    return (value - median) / max(MAD_TO_SIGMA * float(np.median(np.abs(ref - median))), floor)


def refined_z(doc: dict[str, Any], name: str) -> float:
    """The best searched class's refined rate against the reference classes' (logits, robust z)."""
    rows = doc[name]
    best = max(logit(r["rate"]) for r in rows if r["searched"])
    return robust_z(best, [logit(r["rate"]) for r in rows if not r["searched"]])


def refined_margin(doc: dict[str, Any], name: str) -> float:
    """The best searched class's refined rate over the second best of all classes searched (logits)."""
    rates = sorted((logit(r["rate"]) for r in doc[name]), reverse=True)
    return rates[0] - rates[1]


def race_z(doc: dict[str, Any]) -> float:
    """Per race family, the top class's rate against every raced class's (logits, robust z); the largest."""
    out = []
    for rates in doc["race"].values():
        values = [logit(r) for r in rates.values()]
        out.append(robust_z(max(values), sorted(values)[:-1]))
    return max(out)


def family_z(margins: dict[str, float]) -> dict[str, float]:
    """Every class's margin as a robust z-score against the other classes' margins of one family."""
    return {c: robust_z(m, [v for k, v in margins.items() if k != c], floor=1e-3) for c, m in margins.items()}


def margin_z_max(doc: dict[str, Any]) -> float:
    """Per race family, the top class's margin z against the other classes; the largest."""
    return max(max(family_z(m).values()) for m in doc["race_margins"].values())


def margin_gap(doc: dict[str, Any]) -> float:
    """Per family, the top margin over the second, in units of the others' spread; the largest."""
    out = []
    for margins in doc["race_margins"].values():
        values = sorted(margins.values())
        out.append(robust_z(values[-1], values[:-1], floor=1e-3) - robust_z(values[-2], values[:-1], floor=1e-3))
    return max(out)


def budgets(doc: dict[str, Any], kind: str) -> list[str]:
    """The race families of one kind ("global" or "patch"), smallest budget first."""

    def eps(name: str) -> float:
        return float(name.split("@")[1].split("/")[0]) if kind == "global" else 0.0

    return sorted((k for k in doc["race_margins"] if f":{kind}@" in k), key=eps)


def ladder_min_z(doc: dict[str, Any]) -> float:
    """Global families at several budgets: per class its smallest z over the budgets (a backdoor
    target stays an outlier as the budget shrinks, a natural attractor fades); the largest over
    classes, and over the patch families' z."""
    ladder = [family_z(doc["race_margins"][k]) for k in budgets(doc, "global")]
    classes = ladder[0].keys()
    persistent = max(min(z[c] for z in ladder) for c in classes)
    return max([persistent, *(max(family_z(doc["race_margins"][k]).values()) for k in budgets(doc, "patch"))])


def smallest_budget_z(doc: dict[str, Any]) -> float:
    """The smallest global budget's top z, and the patch families'; the largest."""
    keys = budgets(doc, "global")[:1] + budgets(doc, "patch")
    return max(max(family_z(doc["race_margins"][k]).values()) for k in keys)


RACE_CANDIDATES: dict[str, Callable[[dict[str, Any]], float]] = {
    "ladder: persistent z (min over budgets, max over classes)": ladder_min_z,
    "ladder: smallest budget's z": smallest_budget_z,
    "race z (max over families)": race_z,
    "margin z (max over families)": margin_z_max,
    "margin gap / MAD (max over families)": margin_gap,
}
FAMILIES = ("patch", "stripes@48/255", "linf@16/255")
CANDIDATES: dict[str, Callable[[dict[str, Any]], float]] = {
    **RACE_CANDIDATES,
    "refined z (max over families)": lambda d: max(refined_z(d, f) for f in FAMILIES),
    "refined margin (max over families)": lambda d: max(refined_margin(d, f) for f in FAMILIES),
    **{f"refined z, {f}": (lambda d, f=f: refined_z(d, f)) for f in FAMILIES},
}


def threshold_at(y: np.ndarray, s: np.ndarray, max_fpr: float = 0.05) -> float:
    clean = np.sort(s[y == 0])[::-1]
    allowed = int(math.floor(max_fpr * len(clean)))  # clean members allowed above the threshold
    return float(clean[allowed]) + 1e-9 if allowed < len(clean) else -math.inf


def report(docs: list[dict[str, Any]], candidates: dict[str, Callable[[dict[str, Any]], float]]) -> str:
    lines = [
        "| candidate | ROC-AUC | TPR @ FPR <= 5 % | vit -> resnet (TPR, FPR) | resnet -> vit (TPR, FPR) |",
        "|---|---|---|---|---|",
    ]
    for name, score in candidates.items():
        y = np.array([d["label"] == "backdoored" for d in docs], dtype=int)
        s = np.array([score(d) for d in docs])
        arch = np.array([d["arch"] for d in docs])
        cells = [f"{roc_auc_score(y, s):.3f}" if 0 < y.sum() < len(y) else "–"]
        thr = threshold_at(y, s)
        cells.append(f"{np.mean(s[y == 1] >= thr):.2f} (thr {thr:.2f})")
        for a, b in (("vit", "resnet"), ("resnet", "vit")):
            ya, yb, sb = y[arch == a], y[arch == b], s[arch == b]
            if not (ya == 0).any() or not (yb == 0).any() or not (yb == 1).any():
                cells.append("–")
                continue
            t = threshold_at(ya, s[arch == a])
            cells.append(f"{np.mean(sb[yb == 1] >= t):.2f}, {np.mean(sb[yb == 0] >= t):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def held_out(docs: list[dict[str, Any]], name: str, score: Callable[[dict[str, Any]], float], threshold: float) -> str:
    """One candidate fixed on dev, at dev's threshold: ROC-AUC and the rates it gives here."""
    y = np.array([d["label"] == "backdoored" for d in docs], dtype=int)
    s = np.array([score(d) for d in docs])
    auc = roc_auc_score(y, s) if 0 < y.sum() < len(y) else float("nan")
    rows = [f"{d['id']} {d['label']} {d['family']} {d['arch']}: {v:.3f}" for d, v in zip(docs, s)]
    return "\n".join(
        [
            *rows,
            f"{name}: ROC-AUC {auc:.3f}; at {threshold:.4g}: TPR {np.mean(s[y == 1] >= threshold):.2f}, "
            f"FPR {np.mean(s[y == 0] >= threshold):.2f} ({int(y.sum())} backdoored, {int(len(y) - y.sum())} clean)",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--references", type=int, default=4)
    ap.add_argument("--members", help="comma-separated member ids (default: every clean or backdoored one)")
    ap.add_argument("--race-only", action="store_true", help="stage 1's race only (every class, every family)")
    ap.add_argument(
        "-p",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stage-1 setting (IdentifyConfig), e.g. race_global_eps=0.0314,0.0627; --race-only only",
    )
    ap.add_argument(
        "--evaluate",
        metavar="CANDIDATE",
        help="held-out use: only this candidate (chosen on dev), at --threshold; any split",
    )
    ap.add_argument("--threshold", type=float, help="with --evaluate: the dev split's threshold")
    args = ap.parse_args()
    if args.overrides and not args.race_only:
        ap.error("-p needs --race-only (the refinements use the default stage 1)")
    if (args.evaluate is None) != (args.threshold is None):
        ap.error("--evaluate and --threshold go together")
    candidates = RACE_CANDIDATES if args.race_only else CANDIDATES
    if args.evaluate is not None and args.evaluate not in candidates:
        ap.error(f"unknown candidate {args.evaluate!r}; known: {'; '.join(candidates)}")
    if any("=" not in o for o in args.overrides):
        ap.error("-p takes KEY=VALUE")
    overrides = dict(o.split("=", 1) for o in args.overrides)
    try:
        cfg = apply_overrides(IdentifyConfig(), overrides, "identify")
    except ValueError as exc:
        ap.error(str(exc))
    if args.top < 1 or args.references < 2:
        ap.error("--top must be >= 1 and --references >= 2 (a spread needs two)")
    records = [r for r in read_manifest(args.zoo) if r["label"] in ("clean", "backdoored")]
    if args.evaluate is None and any(r["id"].startswith("test") for r in records):
        print("refusing the test split: it is held out (tune on dev)", file=sys.stderr)
        return 2
    if args.members:
        records = [r for r in records if r["id"] in args.members.split(",")]
    tag = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    out = (
        args.zoo
        / "stats"
        / (
            "race" + (f"-{zlib.crc32(tag.encode()):08x}" if tag else "")
            if args.race_only
            else f"top{args.top}-ref{args.references}"
        )
    )
    docs = []
    for i, record in enumerate(records):
        path = out / f"{record['id']}.json"
        if not path.is_file():
            start = time.perf_counter()
            doc = member_stats(args.zoo, record, args.top, args.references, args.race_only, cfg)
            atomic.write_json(path, {**doc, "identify_overrides": overrides})
            print(
                f"{i + 1}/{len(records)} {record['id']} ({record['label']}, {record['arch']}): "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        docs.append(json.loads(path.read_text(encoding="utf-8")))
    if args.evaluate is not None:
        print(held_out(docs, args.evaluate, candidates[args.evaluate], args.threshold))
    else:
        print(report(docs, candidates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
