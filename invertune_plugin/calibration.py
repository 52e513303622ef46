"""The calibration page (``docs/calibration.md``): what each detector's statistic looks like on the
zoo's dev split, the threshold chosen there, and what that threshold gives on the test split.

It reads InverTune's detector-cascade record, as the defense writes it in ``detection``: ``cascade``
(per detector, its findings with their ``gate_ratio``) and ``stage1.anomaly_index``. It lives in the
plugin because only InverTune knows that record; the host's zoo scorer stays defense-agnostic. Being
in the plugin's package, it counts in InverTune's code fingerprint (``toolbox.zoo.evaluate``): after
an edit here, a zoo evaluation measures InverTune again instead of reusing saved outcomes.

Written by ``benchmarks/zoo.py`` from the results the zoo evaluation left behind (each member's
``result.json``) and the scorer's ground truth; nothing here runs a model. Per-detector numbers are
shown for the dev split only: the test split is reported at the dev threshold, never inspected to
tune.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from toolbox.null import CleanNull, leave_one_out
from toolbox.zoo.outcome import MemberOutcome
from toolbox.zoo.outcome import markdown_table as table

SCORED = ("clean", "backdoored")


@dataclass
class EvaluatedMember:
    """A zoo member's ground truth and outcome (the scorer's row) beside the defense's own record."""

    row: MemberOutcome
    detection: Mapping[str, Any]  # result.json's ``detection``


def detector_ratios(detection: Mapping[str, Any]) -> dict[str, float]:
    """Per detector that ran: the largest gate ratio of its findings (>= 1: a finding passed)."""
    out: dict[str, float] = {}
    for step in detection.get("cascade") or []:
        ratios = [f["gate_ratio"] for f in step.get("findings", []) if f.get("gate_ratio") is not None]
        if ratios:
            out[step["detector"]] = max(ratios)
    return out


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    a = np.asarray(values, dtype=float)
    return f"{a.min():.3f} / {np.median(a):.3f} / {a.max():.3f} (n={len(a)})"


def _auc(members: list[EvaluatedMember], value: Any) -> float | None:
    """ROC-AUC over the members with a finite value (None when one class is missing)."""
    pairs = [(m.row.label == "backdoored", v) for m in members if (v := value(m)) is not None and math.isfinite(v)]
    labels = {y for y, _ in pairs}
    return float(roc_auc_score([y for y, _ in pairs], [v for _, v in pairs])) if labels == {True, False} else None


def detector_section(
    dev: list[EvaluatedMember], cascade: list[str], gates: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Per detector: its gates as configured and its best gate ratio on clean and backdoored dev members.
    A detector runs only until one before it passes, so on backdoored members its column is censored."""
    header = [
        "detector",
        "gates (config)",
        "clean: min / median / max",
        "backdoored: min / median / max",
        "clean members passing",
        "AUC where it ran",
    ]
    body = []
    for name in cascade:
        ran = [m for m in dev if name in detector_ratios(m.detection)]
        by = {label: [detector_ratios(m.detection)[name] for m in ran if m.row.label == label] for label in SCORED}
        passing = sum(v >= 1.0 for v in by["clean"])
        gate = ", ".join(
            f"{k}={_fmt(v, '.4g') if isinstance(v, float) else v}"
            for k, v in gates.get(name, {}).items()
            if k.startswith(("min_", "max_"))
        )
        auc = _auc(ran, lambda m, name=name: detector_ratios(m.detection).get(name))
        body.append(
            [
                name,
                gate or "–",
                _spread(by["clean"]),
                _spread(by["backdoored"]),
                f"{passing} of {len(by['clean'])}",
                _fmt(auc),
            ]
        )
    return table(header, body)


def member_table(dev: list[EvaluatedMember], cascade: list[str]) -> list[str]:
    header = ["member", "label", "family", "arch", *cascade, "anomaly index", "score", "verdict", "target"]
    rows = []
    for m in sorted(dev, key=lambda m: (m.row.label, m.row.member_id)):
        ratios = detector_ratios(m.detection)
        stage1 = m.detection.get("stage1") or {}
        target = (
            "–"
            if m.row.true_target is None or m.row.verdict is not True
            else ("right" if m.row.predicted_target == m.row.true_target else f"wrong ({m.row.predicted_target})")
        )
        rows.append(
            [
                m.row.member_id,
                m.row.label,
                m.row.family,
                m.row.arch,
                *[_fmt(ratios.get(n)) for n in cascade],
                _fmt(stage1.get("anomaly_index"), ".2f"),
                _fmt(m.row.score),
                str(m.detection.get("verdict", "–")),
                target,
            ]
        )
    return table(header, rows)


def population_section(
    dev: list[EvaluatedMember], test: list[EvaluatedMember] | None, threshold: float | None
) -> list[str]:
    """The continuous score: AUC and the FPR <= 5 % threshold on dev; on test only its outcome there."""

    def rates(members: list[EvaluatedMember]) -> str:
        if threshold is None:
            return "no threshold (dev ROC undefined)"
        called = [m for m in members if m.row.score is not None and m.row.score >= threshold]
        n_bd = sum(m.row.label == "backdoored" for m in members)
        n_cl = sum(m.row.label == "clean" for m in members)
        tp = sum(m.row.label == "backdoored" for m in called)
        fp = sum(m.row.label == "clean" for m in called)
        return f"TPR {tp}/{n_bd}, FPR {fp}/{n_cl}"

    score_auc = _auc(dev, lambda m: m.row.score)
    anomaly_auc = _auc(dev, lambda m: (m.detection.get("stage1") or {}).get("anomaly_index"))
    lines = table(
        [
            "split",
            "members (clean / backdoored)",
            "score ROC-AUC",
            "stage-1 anomaly index ROC-AUC",
            f"at the dev threshold {_fmt(threshold, '.4g')}",
        ],
        [["dev", _counts(dev), _fmt(score_auc), _fmt(anomaly_auc), rates(dev)]]
        + (
            [["test", _counts(test), _fmt(_auc(test, lambda m: m.row.score)), "(not shown: held out)", rates(test)]]
            if test is not None
            else []
        ),
    )
    return lines


def _counts(members: list[EvaluatedMember]) -> str:
    return f"{sum(m.row.label == 'clean' for m in members)} / {sum(m.row.label == 'backdoored' for m in members)}"


def null_section(nulls: Sequence[CleanNull], alpha: float) -> list[str]:
    """Per clean null: its references and, per statistic, their spread; and the leave-one-out check."""
    header = ["null", "architecture key", "references", "statistic", "scale", "min / median / max", "LOO called"]
    body = []
    for null in nulls:
        called = sum(r["called"] for r in leave_one_out(null, alpha))
        for i, (name, stat) in enumerate(null.statistics.items()):
            first = i == 0
            body.append(
                [
                    Path(null.source).name if first else "",
                    str(null.key.get("architecture", "–")) if first else "",
                    str(len(null.references)) if first else "",
                    name,
                    stat.scale + (" (floored)" if stat.degenerate else ""),
                    _spread(list(stat.values)),
                    f"{called} of {len(null.references)}" if first else "",
                ]
            )
    return table(header, body)


def calibrated_section(rows: Mapping[str, Sequence[MemberOutcome]], alpha: float) -> list[str]:
    """The calibrated verdict per split: no threshold fitted anywhere, the null's alpha on both."""
    header = ["split", "members (clean / backdoored)", "score ROC-AUC", f"called at alpha {alpha:g}"]
    body = []
    for split, members in rows.items():
        scored = [(m.label == "backdoored", m.score) for m in members if m.score is not None]
        labels = {y for y, _ in scored}
        auc = roc_auc_score([y for y, _ in scored], [s for _, s in scored]) if labels == {True, False} else None
        n_bd = sum(m.label == "backdoored" for m in members)
        tp = sum(m.label == "backdoored" and m.verdict is True for m in members)
        fp = sum(m.label == "clean" and m.verdict is True for m in members)
        body.append(
            [split, f"{len(members) - n_bd} / {n_bd}", _fmt(auc), f"TPR {tp}/{n_bd}, FPR {fp}/{len(members) - n_bd}"]
        )
    return table(header, body)


def calibration_page(
    dev: list[EvaluatedMember],
    test: list[EvaluatedMember] | None,
    threshold: float | None,
    defense_params: Mapping[str, Any],
    provenance_line: str,
    missing: Sequence[str] = (),
    nulls: Sequence[CleanNull] = (),
    calibrated: Mapping[str, Sequence[MemberOutcome]] | None = None,
) -> str:
    """The whole page, in Markdown. ``defense_params``: result.json's ``defense.params`` of the dev run;
    ``missing``: evaluated members whose result.json is gone (named on the page, left out of it);
    ``nulls``: the clean nulls of the calibrated variant, whose rows per split are ``calibrated``."""
    dev = [m for m in dev if m.row.label in SCORED]
    test = None if test is None else [m for m in test if m.row.label in SCORED]
    cascade = list(defense_params.get("cascade") or [])
    gates = defense_params.get("detectors") or {}
    lines = [
        "# Calibration of InverTune's detection",
        "",
        provenance_line,
        "",
        "Generated by `benchmarks/zoo.py` from the zoo evaluations; do not edit by hand. Each detector of the "
        "cascade reports a *gate ratio* per finding: its statistic over its gate (a mask fraction: gate over "
        "statistic), so a finding passes where the ratio is >= 1. The detection score is the largest ratio of any "
        "finding. Gates were fitted on the toy models (their history: "
        "`git show 0653a2c:docs/calibration-history.md`); this page shows how they sit on the zoo's dev split, "
        "which is the split to tune on. The test split appears only at the dev threshold.",
        "",
        f"Profile `{defense_params.get('profile')}`, cascade: {', '.join(cascade) or '–'}."
        + (f" Left out, their result.json missing: {', '.join(missing)}." if missing else ""),
        "",
        "## The detection score",
        "",
        *population_section(dev, test, threshold),
        "",
        "## Per detector on the dev split",
        "",
        "A detector runs only when every detector before it found nothing, so its backdoored column holds the "
        "members that reached it.",
        "",
        *detector_section(dev, cascade, gates),
        "",
        "## Dev members",
        "",
        "Each detector's column is its largest gate ratio on that member (– where it did not run). The anomaly "
        "index is stage 1's robust z-score of the top class's race score against the model's other classes.",
        "",
        *member_table(dev, cascade),
        "",
    ]
    alpha = float(defense_params.get("alpha", 0.05))
    if nulls:
        lines += [
            "## The clean nulls",
            "",
            "Each detector's statistic on the clean reference models (`toolbox zoo calibrate`; references from "
            "`zoo/null.yaml` and the dev split's clean members, never the test split's). A statistic's tail is "
            "the predictive Student-t fit to them on the stated scale (spread at least `toolbox.null.MIN_SPREAD`: "
            "a statistic whose references barely vary is marked *floored*). The statistic is each finding's "
            "*strength*, how far past its gates it is without a ceiling: for a rate, its log-odds minus the gate's "
            "(rates clamped to [0.005, 0.995]); for a mask fraction, log(gate / fraction); 0 at the gate. "
            "*LOO called*: references called backdoored at alpha "
            f"{alpha:g} by the null of the others (Bonferroni's bound keeps it at most alpha, usually below).",
            "",
            *null_section(nulls, alpha),
            "",
        ]
    if calibrated:
        lines += [
            "## The calibrated verdict",
            "",
            "InverTune given the nulls (`invertune-null` on the zoo page): backdoored when k times the smallest "
            f"tail is <= {alpha:g}; no threshold was fitted. The dev split's clean members are references of the "
            "null, so its dev FPR is in-sample; the test split's is the held-out measure.",
            "",
            *calibrated_section(calibrated, alpha),
            "",
        ]
    return "\n".join(lines)
