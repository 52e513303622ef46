"""Exploration (issue 22, item 2): stage-1 scores normalised by the model's own classes, on the
zoo's dev split, from two `detector_stats.py --race-only` runs of the same members.

    python benchmarks/detector_stats.py --zoo ZOO --race-only
    python benchmarks/detector_stats.py --zoo ZOO --race-only -p race_global_eps=0.031372549,0.062745098 \\
        -p race_patch_fraction=0.09375
    python benchmarks/explore/race_ladder.py ZOO/stats/race ZOO/stats/race-XXXXXXXX

The first run holds 4-px patches and L-inf 32/255, the second 3-px patches, 8/255 and 16/255.
Each candidate: ROC-AUC, TPR at zero false positives on the split, whether its top class is the
target, and the threshold fitted on one architecture applied to the other (TPR/FPR). Dev only:
these are candidates, picked by looking at these members.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector_stats import MAD_TO_SIGMA, family_z  # noqa: E402

Score = tuple[float, str]  # (value, the class it points at)


def merged(first: Path, second: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(first.glob("*.json")):
        other = second / path.name
        if not other.is_file():
            continue
        doc, more = json.loads(path.read_text()), json.loads(other.read_text())
        doc["race_margins"] = {
            **{k.replace("patch@", "patch4@"): v for k, v in doc["race_margins"].items()},
            **{k.replace("patch@", "patch3@"): v for k, v in more["race_margins"].items()},
        }
        docs.append(doc)
    return docs


def kinds(doc: dict[str, Any], prefix: str) -> list[str]:
    return [k for k in doc["race_margins"] if f":{prefix}@" in k]


def global_at(doc: dict[str, Any], eps: int) -> str:
    return next(k for k in kinds(doc, "global") if f"@{eps}/" in k)


def top(doc: dict[str, Any], kind: str) -> Score:
    z = family_z(doc["race_margins"][kind])
    c = max(z, key=z.get)
    return z[c], c


def persistent(doc: dict[str, Any], fams: list[str]) -> Score:
    """Per class its smallest z over ``fams``; the largest over classes."""
    zs = [family_z(doc["race_margins"][k]) for k in fams]
    return max((min(z[c] for z in zs), c) for c in zs[0])


def pooled(doc: dict[str, Any], fams: list[str]) -> Score:
    """Each family's margins minus its median, over one MAD pooled across ``fams``; the largest."""
    centred = {
        k: {c: v - float(np.median(list(m.values()))) for c, v in m.items()}
        for k, m in doc["race_margins"].items()
        if k in fams
    }
    spread = MAD_TO_SIGMA * float(np.median(np.abs(np.concatenate([list(m.values()) for m in centred.values()]))))
    return max((v / spread, c) for m in centred.values() for c, v in m.items())


CANDIDATES: dict[str, Callable[[dict[str, Any]], Score]] = {
    "z, L-inf 8/255": lambda d: top(d, global_at(d, 8)),
    "z, L-inf 16/255": lambda d: top(d, global_at(d, 16)),
    "z, L-inf 32/255 (default race)": lambda d: top(d, global_at(d, 32)),
    "z, 4-px patches (default race), max": lambda d: max(top(d, k) for k in kinds(d, "patch4")),
    "z, 3-px patches, max": lambda d: max(top(d, k) for k in kinds(d, "patch3")),
    "persistent z, L-inf 8..32": lambda d: persistent(d, kinds(d, "global")),
    "persistent z, every ladder": lambda d: max(
        persistent(d, kinds(d, "global")),
        *(persistent(d, [k, k.replace("patch3", "patch4")]) for k in kinds(d, "patch3")),
    ),
    "pooled MAD, default race": lambda d: pooled(d, kinds(d, "patch4") + [global_at(d, 32)]),
    "pooled MAD, 4-px + 16/255": lambda d: pooled(d, kinds(d, "patch4") + [global_at(d, 16)]),
    "pooled MAD, every family": lambda d: pooled(d, list(d["race_margins"])),
}


def main() -> int:
    docs = merged(Path(sys.argv[1]), Path(sys.argv[2]))
    y = np.array([d["label"] == "backdoored" for d in docs])
    arch = np.array([d["arch"] for d in docs])
    print(f"{int(y.sum())} backdoored, {int((~y).sum())} clean\n")
    print("| candidate | ROC-AUC | TPR at 0 FP | target right | vit -> resnet TPR/FPR | resnet -> vit TPR/FPR |")
    print("|---|---|---|---|---|---|")
    for name, score in CANDIDATES.items():
        out = [score(d) for d in docs]
        s = np.array([v for v, _ in out])
        right = np.mean([c == d["target"] for (_, c), d, b in zip(out, docs, y) if b])
        cross = []
        for fit, apply in (("vit", "resnet"), ("resnet", "vit")):
            t = s[(arch == fit) & ~y].max()
            sa, ya = s[arch == apply], y[arch == apply]
            cross.append(f"{np.mean(sa[ya] > t):.2f} / {np.mean(sa[~ya] > t):.2f}")
        print(
            f"| {name} | {roc_auc_score(y, s):.3f} | {np.mean(s[y] > s[~y].max()):.2f} | {right:.2f} | "
            f"{cross[0]} | {cross[1]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
