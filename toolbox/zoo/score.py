"""Score a zoo: per-member defense outcomes -> the population numbers the field reports.

Detection (ROC-AUC, TPR at a fixed FPR, rates at a threshold chosen elsewhere), the defense's own
verdicts, target identification, purification under a success bar, trigger localisation and cost,
overall and per trigger family / architecture, as TrojAI, AMDET and CLIP-Inspector report them.
Ground truth (``label``, ``true_target``) is only read here; the defense never saw it.

Every number in a summary is a plain ``float``/``int`` or ``None`` when undefined (never NaN), so
the summary is valid JSON.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from toolbox import atomic

LABELS = ("clean", "backdoored", "not_implanted")
SCORED_LABELS = ("clean", "backdoored")
_FRACTION_FIELDS = ("ca_before", "ca_after", "asr_before", "asr_after", "localisation", "asr_rebound")
# Measured fractions are differences of floats (0.50 - 0.48 > 0.02 in binary): compare with slack.
_EPS = 1e-9

SUMMARY_JSON = "zoo_summary.json"
MEMBERS_CSV = "zoo_members.csv"
ROC_PNG = "zoo_roc.png"
SUMMARY_MD = "zoo_summary.md"


@dataclass
class MemberOutcome:
    """One zoo member after a defense ran on it: ground truth (the defense never saw it) + what the defense said."""

    member_id: str
    label: str            # "clean" | "backdoored" | "not_implanted"
    family: str           # trigger family, e.g. "badnet", "patch-random", "clean-finetune", "clean-scratch"
    arch: str             # e.g. "vit", "resnet"
    true_target: str | None
    score: float | None   # the defense's continuous detection score (detection.score); None if it gives none
    verdict: bool | None  # the defense's own call: True backdoored, False clean, None not assessed / no detection
    predicted_target: str | None
    ca_before: float | None   # fractions in [0, 1]
    ca_after: float | None
    asr_before: float | None  # real-trigger ASR@1, backdoored members only
    asr_after: float | None
    seconds: float
    localisation: float | None = None  # fraction of inverted-mask mass inside the true patch (patch families)
    asr_rebound: float | None = None  # real-trigger ASR@1 after clean fine-tuning of the defended model (rebound.py)

    def __post_init__(self) -> None:
        """Reject what would silently corrupt the scores: unknown labels and percentages passed as fractions."""
        if self.label not in LABELS:
            raise ValueError(f"{self.member_id}: label {self.label!r} is not one of {LABELS}")
        if self.verdict is not None and not isinstance(self.verdict, bool):
            raise ValueError(f"{self.member_id}: verdict must be True, False or None, got {self.verdict!r}")
        for name in _FRACTION_FIELDS:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{self.member_id}: {name}={value!r} is not a fraction in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; a non-finite score becomes None because JSON has no NaN."""
        return {f.name: _json_float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberOutcome:
        """Strict about keys, so a misspelt column fails loudly instead of reading as None."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in d]
        if unknown or missing:
            raise ValueError(f"MemberOutcome.from_dict: unknown keys {unknown}, missing keys {missing}")
        return cls(**{n: d[n] for n in names if n in d})


@dataclass(frozen=True)
class PurificationBar:
    """When a purified backdoored model counts as repaired: trigger gone, clean accuracy kept."""

    max_asr: float = 0.02
    max_ca_drop: float = 0.02

    def passed(self, asr_after: float, ca_drop: float) -> bool:
        return asr_after <= self.max_asr + _EPS and ca_drop <= self.max_ca_drop + _EPS


# -------------------- helpers


def _json_float(value: Any) -> Any:
    """Floats that JSON can hold: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _distribution(values: list[float]) -> dict[str, Any] | None:
    """Median and quartiles as well as the mean: a few failed members would drag a mean alone."""
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {"n": len(values), "mean": float(a.mean()), "median": float(np.median(a)),
            "p25": float(np.percentile(a, 25)), "p75": float(np.percentile(a, 75)), "max": float(a.max())}


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _has_score(row: MemberOutcome) -> bool:
    return row.score is not None and math.isfinite(row.score)


def ca_drop(row: MemberOutcome) -> float | None:
    """Clean-accuracy lost to the defense (negative when it gained)."""
    if row.ca_before is None or row.ca_after is None:
        return None
    return row.ca_before - row.ca_after


def _purified(row: MemberOutcome, bar: PurificationBar) -> bool | None:
    """None when the member lacks the measurements to judge."""
    drop = ca_drop(row)
    if row.asr_after is None or drop is None:
        return None
    return bar.passed(row.asr_after, drop)


def _labels_and_scores(rows: list[MemberOutcome]) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([r.label == "backdoored" for r in rows], dtype=int)
    s = np.array([r.score for r in rows], dtype=float)
    return y, s


# -------------------- detection


def _operating_point(y: np.ndarray, s: np.ndarray, max_fpr: float) -> dict[str, Any]:
    """The smallest threshold whose FPR stays <= max_fpr, i.e. the most sensitive admissible one.

    All ROC points are kept (drop_intermediate=False): a dropped point on a flat stretch would give
    a higher threshold than the smallest admissible one.
    """
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    idx = int(np.nonzero(fpr <= max_fpr + _EPS)[0][-1])
    threshold = float(thresholds[idx])
    point: dict[str, Any] = {"max_fpr": max_fpr, "tpr": float(tpr[idx]), "fpr": float(fpr[idx]),
                             "threshold": threshold if math.isfinite(threshold) else None}
    if point["threshold"] is None:
        point["note"] = "every finite threshold exceeds max_fpr (a clean member scores highest): nothing is called"
    return point


def _rates_at(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    called = s >= threshold
    return {"threshold": threshold,
            "tpr": _ratio(int(np.sum(called & (y == 1))), int(np.sum(y == 1))),
            "fpr": _ratio(int(np.sum(called & (y == 0))), int(np.sum(y == 0)))}


def _detection(rows: list[MemberOutcome], max_fpr: float,
               threshold: float | None) -> tuple[dict[str, Any] | None, str | None]:
    """(section, reason): the section is None when some member has no usable score."""
    if not rows:
        return None, "no clean or backdoored members"
    missing = [r.member_id for r in rows if not _has_score(r)]
    if missing:
        return None, f"{len(missing)} of {len(rows)} members have no finite score: {', '.join(missing[:10])}"
    y, s = _labels_and_scores(rows)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    section: dict[str, Any] = {"n_clean": n_neg, "n_backdoored": n_pos, "roc_auc": None, "reason": None,
                               "tpr_at_fpr": None}
    if n_pos and n_neg:
        section["roc_auc"] = float(roc_auc_score(y, s))
        section["tpr_at_fpr"] = _operating_point(y, s, max_fpr)
    else:
        section["reason"] = f"only one class present ({n_neg} clean, {n_pos} backdoored): ROC undefined"
    if threshold is not None:
        section["at_given_threshold"] = _rates_at(y, s, threshold)
    return section, None


# -------------------- verdicts, targets, purification


def _confusion(rows: list[MemberOutcome]) -> dict[str, Any]:
    """At the defense's own call; unassessed members are counted apart, not as negatives."""
    def count(label: str, verdict: bool | None) -> int:
        return sum(r.label == label and r.verdict is verdict for r in rows)

    tp, fn = count("backdoored", True), count("backdoored", False)
    fp, tn = count("clean", True), count("clean", False)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "not_assessed": sum(r.verdict is None for r in rows),
            "not_assessed_by_label": {label: count(label, None) for label in SCORED_LABELS},
            "tpr": _ratio(tp, tp + fn), "fpr": _ratio(fp, fp + tn)}


def _target(rows: list[MemberOutcome]) -> dict[str, Any]:
    """Top-1 target accuracy, only where the defense claimed a backdoor and a true target exists."""
    eligible = [r for r in rows if r.label == "backdoored" and r.verdict is True and r.true_target is not None]
    correct = sum(r.predicted_target == r.true_target for r in eligible)
    return {"n": len(eligible), "correct": correct, "accuracy": _ratio(correct, len(eligible))}


def _success(rows: list[MemberOutcome], bar: PurificationBar) -> dict[str, Any]:
    outcomes = [_purified(r, bar) for r in rows]
    measured = [o for o in outcomes if o is not None]
    return {"n": len(measured), "successes": sum(measured), "success_rate": _ratio(sum(measured), len(measured)),
            "n_unmeasured": len(outcomes) - len(measured)}


def _purification(rows: list[MemberOutcome], bar: PurificationBar) -> dict[str, Any]:
    backdoored = [r for r in rows if r.label == "backdoored"]
    measured = [r for r in backdoored if _purified(r, bar) is not None]
    clean_drops = [d for r in rows if r.label == "clean" and (d := ca_drop(r)) is not None]
    return {"bar": {"max_asr": bar.max_asr, "max_ca_drop": bar.max_ca_drop},
            "all": _success(backdoored, bar),
            "detected": _success([r for r in backdoored if r.verdict is True], bar),
            "asr_after": _distribution([r.asr_after for r in measured]),  # type: ignore[misc]
            "asr_rebound": _distribution([r.asr_rebound for r in backdoored if r.asr_rebound is not None]),
            "ca_drop": _distribution([ca_drop(r) for r in measured]),  # type: ignore[misc]
            "clean_ca_drop": _distribution(clean_drops)}


def _localisation(rows: list[MemberOutcome]) -> dict[str, Any] | None:
    values = [r.localisation for r in rows if r.localisation is not None]
    if not values:
        return None
    return {"n": len(values), "mean": float(np.mean(values)), "median": float(np.median(values))}


def _seconds(rows: list[MemberOutcome]) -> dict[str, Any] | None:
    if not rows:
        return None
    a = np.asarray([r.seconds for r in rows], dtype=float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max()), "total": float(a.sum())}


# -------------------- groups


def _count_labels(rows: list[MemberOutcome]) -> dict[str, int]:
    return {label: sum(r.label == label for r in rows) for label in LABELS}


def _called_rate(rows: list[MemberOutcome], threshold: float | None, defined: bool) -> float | None:
    """Fraction of the group called backdoored at a score threshold; None threshold means nobody."""
    if not defined or not rows:
        return None
    return sum(threshold is not None and r.score >= threshold for r in rows) / len(rows)  # type: ignore[operator]


def _group_summary(rows: list[MemberOutcome], bar: PurificationBar, detection: dict[str, Any] | None,
                   given_threshold: float | None) -> dict[str, Any]:
    """Per-group numbers; the detection rate stands in for AUC in single-label groups (most families)."""
    backdoored = [r for r in rows if r.label == "backdoored"]
    labels = {r.label for r in rows}
    roc_auc = None
    if detection is not None and labels == set(SCORED_LABELS):
        y, s = _labels_and_scores(rows)
        roc_auc = float(roc_auc_score(y, s))
    operating = detection.get("tpr_at_fpr") if detection else None
    rates: dict[str, Any] = {
        "at_verdict": _ratio(sum(r.verdict is True for r in rows), len(rows)),
        "at_threshold": _called_rate(rows, operating["threshold"] if operating else None, operating is not None)}
    if given_threshold is not None:
        rates["at_given_threshold"] = _called_rate(rows, given_threshold, detection is not None)
    measured = [r for r in backdoored if _purified(r, bar) is not None]
    return {"n": _count_labels(rows), "verdict": _confusion(rows), "target": _target(rows),
            "purification_success_rate": _success(backdoored, bar)["success_rate"],
            "median_asr_after": _median([r.asr_after for r in measured]),  # type: ignore[misc]
            "median_ca_drop": _median([ca_drop(r) for r in measured]),  # type: ignore[misc]
            "median_clean_ca_drop": _median([d for r in rows if r.label == "clean" and (d := ca_drop(r)) is not None]),
            "roc_auc": roc_auc, "detection_rate": rates}


def _by(rows: list[MemberOutcome], key: Callable[[MemberOutcome], str], bar: PurificationBar,
        detection: dict[str, Any] | None, given_threshold: float | None) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[MemberOutcome]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {name: _group_summary(members, bar, detection, given_threshold) for name, members in sorted(groups.items())}


# -------------------- public


def score_population(rows: list[MemberOutcome], bar: PurificationBar = PurificationBar(), max_fpr: float = 0.05,
                     threshold: float | None = None) -> dict[str, Any]:
    """The population summary (JSON-able). ``threshold``: a score cut chosen elsewhere (another split),
    applied here as given. ``not_implanted`` members are listed and excluded from every number."""
    scored = [r for r in rows if r.label in SCORED_LABELS]
    detection, reason = _detection(scored, max_fpr, threshold)
    return {
        "params": {"max_fpr": max_fpr, "threshold": threshold,
                   "bar": {"max_asr": bar.max_asr, "max_ca_drop": bar.max_ca_drop}},
        "n": _count_labels(rows),
        "not_implanted": [r.member_id for r in rows if r.label == "not_implanted"],
        "detection": detection,
        "detection_reason": reason,
        "verdict": _confusion(scored),
        "target": _target(scored),
        "purification": _purification(scored, bar),
        "localisation": _localisation(scored),
        "by_family": _by(scored, lambda r: r.family, bar, detection, threshold),
        "by_arch": _by(scored, lambda r: r.arch, bar, detection, threshold),
        "seconds": _seconds(scored),
    }


# -------------------- reports


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], body: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]


def _fraction_of(part: int, whole: int, rate: float | None) -> str:
    return f"{_pct(rate)} ({part}/{whole})"


def _overall_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    n, det, conf = summary["n"], summary["detection"], summary["verdict"]
    target, purif = summary["target"], summary["purification"]
    max_fpr = summary["params"]["max_fpr"]
    rows = [["Members", f"{n['clean']} clean, {n['backdoored']} backdoored, {n['not_implanted']} not implanted "
                        "(excluded)"]]
    if det is None:
        rows.append(["Detection", f"n/a: {summary.get('detection_reason')}"])
    else:
        op = det["tpr_at_fpr"]
        rows.append(["ROC-AUC", _num(det["roc_auc"]) + (f" ({det['reason']})" if det["reason"] else "")])
        rows.append([f"TPR @ FPR ≤ {_pct(max_fpr)}",
                     "n/a" if op is None else f"{_pct(op['tpr'])} (threshold {_num(op['threshold'], '.4g')}, "
                                              f"FPR {_pct(op['fpr'])})"])
        given = det.get("at_given_threshold")
        if given is not None:
            rows.append([f"At given threshold {_num(given['threshold'], '.4g')}",
                         f"TPR {_pct(given['tpr'])}, FPR {_pct(given['fpr'])}"])
    rows.append(["Confusion at verdict", f"TP {conf['tp']} · FP {conf['fp']} · TN {conf['tn']} · FN {conf['fn']} · "
                                         f"not assessed {conf['not_assessed']}"])
    rows.append(["TPR / FPR at verdict", f"{_pct(conf['tpr'])} / {_pct(conf['fpr'])}"])
    rows.append(["Target accuracy (detected)", _fraction_of(target["correct"], target["n"], target["accuracy"])])
    for key, what in (("all", "all backdoored"), ("detected", "detected")):
        s = purif[key]
        rows.append([f"Purification success ({what})",
                     _fraction_of(s["successes"], s["n"], s["success_rate"])
                     + (f", {s['n_unmeasured']} unmeasured" if s["n_unmeasured"] else "")])
    bar = purif["bar"]
    rows.append(["Purification bar", f"ASR after ≤ {_pct(bar['max_asr'])}, CA drop ≤ {_pct(bar['max_ca_drop'])}"])
    for key, what in (("asr_after", "Median ASR after"), ("asr_rebound", "Median ASR after rebound fine-tuning"),
                      ("ca_drop", "Median CA drop (backdoored)"), ("clean_ca_drop", "Median CA drop (clean)")):
        dist = purif.get(key)
        if key == "asr_rebound" and dist is None:  # not measured (zoo eval --rebound-steps 0)
            continue
        rows.append([what, "n/a" if dist is None else f"{_pct(dist['median'])} (max {_pct(dist['max'])})"])
    loc = summary["localisation"]
    if loc is not None:
        rows.append(["Localisation (mean / median)", f"{_pct(loc['mean'])} / {_pct(loc['median'])} (n={loc['n']})"])
    sec = summary["seconds"]
    rows.append(["Seconds per member (mean)",
                 "n/a" if sec is None else f"{sec['mean']:.1f} s (total {sec['total']:.1f} s)"])
    return rows


def _group_table(groups: Mapping[str, Mapping[str, Any]], what: str, max_fpr: float,
                 given: float | None) -> list[str]:
    """One row per group; the given-threshold column appears only when a threshold was given."""
    header = [what.capitalize(), "clean", "backdoored", "TP/FP/TN/FN", "not assessed", "called (verdict)",
              f"called (FPR ≤ {_pct(max_fpr)} thr.)"]
    header += [] if given is None else [f"called (thr. {_num(given, '.4g')})"]
    header += ["ROC-AUC", "target acc.", "purif. success", "median ASR after", "median CA drop",
               "median clean CA drop"]
    body = []
    for name, g in groups.items():
        n, conf, rates = g["n"], g["verdict"], g["detection_rate"]
        row = [name, n["clean"], n["backdoored"], f"{conf['tp']}/{conf['fp']}/{conf['tn']}/{conf['fn']}",
               conf["not_assessed"], _pct(rates["at_verdict"]), _pct(rates["at_threshold"])]
        row += [] if given is None else [_pct(rates.get("at_given_threshold"))]
        row += [_num(g["roc_auc"]), _pct(g["target"]["accuracy"]), _pct(g["purification_success_rate"]),
                _pct(g["median_asr_after"]), _pct(g["median_ca_drop"]), _pct(g["median_clean_ca_drop"])]
        body.append(row)
    return _table(header, body)


def markdown_summary(summary: Mapping[str, Any], title: str) -> str:
    """A readable page of the summary: overall, then per trigger family and per architecture."""
    lines = [f"# {title}", "", "## Overall", ""] + _table(["Metric", "Value"], _overall_rows(summary))
    if summary["not_implanted"]:
        lines += ["", "Not implanted (excluded from every number): " + ", ".join(summary["not_implanted"])]
    for key, what in (("by_family", "trigger family"), ("by_arch", "architecture")):
        lines += ["", f"## By {what}", ""] + _group_table(summary[key], what, summary["params"]["max_fpr"],
                                                          summary["params"]["threshold"])
    return "\n".join(lines) + "\n"


def markdown_members(rows: list[MemberOutcome]) -> str:
    """One line per member: ground truth beside what the defense said and what it left."""
    def target(r: MemberOutcome) -> str:
        if r.true_target is None or r.verdict is not True:
            return "–"
        return "right" if r.predicted_target == r.true_target else f"wrong ({r.predicted_target})"

    rebound = any(r.asr_rebound is not None for r in rows)  # a column only when it was measured
    body = [[r.member_id, r.label, r.family, r.arch, _num(r.score), {True: "backdoored", False: "clean"}.get(
        r.verdict, "–") if r.label != "not_implanted" else "(not evaluated)", target(r), _pct(r.asr_before),
        _pct(r.asr_after), *([_pct(r.asr_rebound)] if rebound else []), _pct(ca_drop(r)), _pct(r.localisation),
        f"{r.seconds:.0f}"] for r in rows]
    header = ["member", "label", "family", "arch", "score", "verdict", "target", "ASR before", "ASR after",
              *(["ASR rebound"] if rebound else []), "CA drop", "localisation", "seconds"]
    return "\n".join(_table(header, body)) + "\n"


def _members_csv(rows: list[MemberOutcome]) -> str:
    names = [f.name for f in fields(MemberOutcome)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.to_dict().items()})
    return buf.getvalue()


def _roc_plot(rows: list[MemberOutcome], detection: Mapping[str, Any], max_fpr: float, title: str, path: Path) -> None:
    """Headless (Agg canvas, no pyplot state), so it is safe inside a running benchmark."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, s = _labels_and_scores(rows)
    fpr, tpr, _ = roc_curve(y, s)
    fig = Figure(figsize=(5.2, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, marker=".", label=f"ROC (AUC = {detection['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.axvline(max_fpr, linestyle="--", color="tab:red", label=f"FPR = {_pct(max_fpr)}")
    op = detection["tpr_at_fpr"]
    ax.scatter([op["fpr"]], [op["tpr"]], color="tab:red", zorder=3,
               label=f"TPR {_pct(op['tpr'])} @ threshold {_num(op['threshold'], '.4g')}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (clean called backdoored)")
    ax.set_ylabel("true positive rate (backdoored detected)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_report(summary: dict[str, Any], rows: list[MemberOutcome], out_dir: Path, title: str) -> dict[str, Path]:
    """Write the JSON, CSV, ROC PNG (only when the ROC is defined) and Markdown; file name -> path."""
    out_dir = Path(out_dir)
    written = {SUMMARY_JSON: out_dir / SUMMARY_JSON, MEMBERS_CSV: out_dir / MEMBERS_CSV}
    atomic.write_json(written[SUMMARY_JSON], {"title": title, "summary": summary, "rows": [r.to_dict() for r in rows]})
    atomic.write_text(written[MEMBERS_CSV], _members_csv(rows))
    detection = summary.get("detection")
    if detection is not None and detection.get("roc_auc") is not None:
        written[ROC_PNG] = out_dir / ROC_PNG
        _roc_plot([r for r in rows if r.label in SCORED_LABELS], detection, summary["params"]["max_fpr"], title,
                  written[ROC_PNG])
    written[SUMMARY_MD] = out_dir / SUMMARY_MD
    atomic.write_text(written[SUMMARY_MD], markdown_summary(summary, title))
    return written
