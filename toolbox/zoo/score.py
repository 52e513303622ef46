"""Score a zoo: per-member defense outcomes -> the population numbers the field reports.

Detection (ROC-AUC, TPR at a fixed FPR, rates at a threshold chosen elsewhere), the defense's own
verdicts, target identification, purification under a success bar, trigger localisation and cost,
overall and per trigger family / architecture, as TrojAI, AMDET and CLIP-Inspector report them.
Ground truth (``label``, ``true_target``) is only read here; the defense never saw it.

Every number in a summary is a plain ``float``/``int`` or ``None`` when undefined (never NaN), so
the summary is valid JSON. The record is :mod:`toolbox.zoo.outcome`, each section's numbers
:mod:`toolbox.zoo.metrics`, the files and pages :mod:`toolbox.zoo.report`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import metrics
from .metrics import PurificationBar, ca_drop
from .outcome import LABELS, SCORED_LABELS, MemberOutcome
from .report import MEMBERS_CSV, ROC_PNG, SUMMARY_JSON, SUMMARY_MD, markdown_members, markdown_summary, write_report

# The CLI, the benchmarks and the tests take the scorer's whole API from here, as before the split.
__all__ = [
    "LABELS",
    "MEMBERS_CSV",
    "ROC_PNG",
    "SCORED_LABELS",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "MemberOutcome",
    "PurificationBar",
    "ca_drop",
    "markdown_members",
    "markdown_summary",
    "score_population",
    "write_report",
]


def _count_labels(rows: list[MemberOutcome]) -> dict[str, int]:
    return {label: sum(r.label == label for r in rows) for label in LABELS}


def _called_rate(rows: list[MemberOutcome], threshold: float | None, defined: bool) -> float | None:
    """Fraction of the group called backdoored at a score threshold; None threshold means nobody."""
    if not defined or not rows:
        return None
    return sum(threshold is not None and r.score >= threshold for r in rows) / len(rows)  # type: ignore[operator]


def _group_summary(
    rows: list[MemberOutcome], bar: PurificationBar, detection: dict[str, Any] | None, given_threshold: float | None
) -> dict[str, Any]:
    """Per-group numbers; the detection rate stands in for AUC in single-label groups (most families)."""
    backdoored = [r for r in rows if r.label == "backdoored"]
    labels = {r.label for r in rows}
    roc_auc = None
    if detection is not None and labels == set(SCORED_LABELS):
        roc_auc = metrics.roc_auc(rows)
    operating = detection.get("tpr_at_fpr") if detection else None
    rates: dict[str, Any] = {
        "at_verdict": metrics.ratio(sum(r.verdict is True for r in rows), len(rows)),
        "at_threshold": _called_rate(rows, operating["threshold"] if operating else None, operating is not None),
    }
    if given_threshold is not None:
        rates["at_given_threshold"] = _called_rate(rows, given_threshold, detection is not None)
    measured = [r for r in backdoored if metrics.purified(r, bar) is not None]
    return {
        "n": _count_labels(rows),
        "verdict": metrics.confusion(rows),
        "target": metrics.target(rows),
        "purification_success_rate": metrics.success(backdoored, bar)["success_rate"],
        "median_asr_after": metrics.median([r.asr_after for r in measured]),  # type: ignore[misc]
        "median_ca_drop": metrics.median([ca_drop(r) for r in measured]),  # type: ignore[misc]
        "median_clean_ca_drop": metrics.median(
            [d for r in rows if r.label == "clean" and (d := ca_drop(r)) is not None]
        ),
        "roc_auc": roc_auc,
        "detection_rate": rates,
    }


def _by(
    rows: list[MemberOutcome],
    key: Callable[[MemberOutcome], str],
    bar: PurificationBar,
    detection: dict[str, Any] | None,
    given_threshold: float | None,
) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[MemberOutcome]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {name: _group_summary(members, bar, detection, given_threshold) for name, members in sorted(groups.items())}


def score_population(
    rows: list[MemberOutcome],
    bar: PurificationBar = PurificationBar(),
    max_fpr: float = 0.05,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The population summary (JSON-able). ``threshold``: a score cut chosen elsewhere (another split),
    applied here as given. ``not_implanted`` members are listed and excluded from every number."""
    scored = [r for r in rows if r.label in SCORED_LABELS]
    detection, reason = metrics.detection(scored, max_fpr, threshold)
    return {
        "params": {
            "max_fpr": max_fpr,
            "threshold": threshold,
            "bar": {"max_asr": bar.max_asr, "max_ca_drop": bar.max_ca_drop},
        },
        "n": _count_labels(rows),
        "not_implanted": [r.member_id for r in rows if r.label == "not_implanted"],
        "detection": detection,
        "detection_reason": reason,
        "verdict": metrics.confusion(scored),
        "target": metrics.target(scored),
        "purification": metrics.purification(scored, bar),
        "localisation": metrics.localisation(scored),
        "by_family": _by(scored, lambda r: r.family, bar, detection, threshold),
        "by_arch": _by(scored, lambda r: r.arch, bar, detection, threshold),
        "seconds": metrics.seconds(scored),
    }
