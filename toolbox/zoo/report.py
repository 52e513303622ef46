"""The files and pages of a scored zoo: the summary as JSON and Markdown, the members as CSV and a
Markdown table, the ROC curve as PNG."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_curve

from toolbox import atomic, escape

from .metrics import ca_drop, labels_and_scores
from .outcome import SCORED_LABELS, MemberOutcome, markdown_table

SUMMARY_JSON = "zoo_summary.json"
MEMBERS_CSV = "zoo_members.csv"
ROC_PNG = "zoo_roc.png"
SUMMARY_MD = "zoo_summary.md"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _fraction_of(part: int, whole: int, rate: float | None) -> str:
    return f"{_pct(rate)} ({part}/{whole})"


def _overall_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    n, det, conf = summary["n"], summary["detection"], summary["verdict"]
    target, purif = summary["target"], summary["purification"]
    max_fpr = summary["params"]["max_fpr"]
    rows = [
        ["Members", f"{n['clean']} clean, {n['backdoored']} backdoored, {n['not_implanted']} not implanted (excluded)"]
    ]
    if det is None:
        rows.append(["Detection", f"n/a: {summary.get('detection_reason')}"])
    else:
        op = det["tpr_at_fpr"]
        rows.append(["ROC-AUC", _num(det["roc_auc"]) + (f" ({det['reason']})" if det["reason"] else "")])
        rows.append(
            [
                f"TPR @ FPR ≤ {_pct(max_fpr)}",
                "n/a"
                if op is None
                else f"{_pct(op['tpr'])} (threshold {_num(op['threshold'], '.4g')}, FPR {_pct(op['fpr'])})",
            ]
        )
        given = det.get("at_given_threshold")
        if given is not None:
            rows.append(
                [
                    f"At given threshold {_num(given['threshold'], '.4g')}",
                    f"TPR {_pct(given['tpr'])}, FPR {_pct(given['fpr'])}",
                ]
            )
    rows.append(
        [
            "Confusion at verdict",
            f"TP {conf['tp']} · FP {conf['fp']} · TN {conf['tn']} · FN {conf['fn']} · "
            f"not assessed {conf['not_assessed']}",
        ]
    )
    rows.append(["TPR / FPR at verdict", f"{_pct(conf['tpr'])} / {_pct(conf['fpr'])}"])
    rows.append(["Target accuracy (detected)", _fraction_of(target["correct"], target["n"], target["accuracy"])])
    for key, what in (("all", "all backdoored"), ("detected", "detected")):
        s = purif[key]
        rows.append(
            [
                f"Purification success ({what})",
                _fraction_of(s["successes"], s["n"], s["success_rate"])
                + (f", {s['n_unmeasured']} unmeasured" if s["n_unmeasured"] else ""),
            ]
        )
    bar = purif["bar"]
    rows.append(["Purification bar", f"ASR after ≤ {_pct(bar['max_asr'])}, CA drop ≤ {_pct(bar['max_ca_drop'])}"])
    for key, what in (
        ("asr_after", "Median ASR after"),
        ("asr_rebound", "Median ASR after rebound fine-tuning"),
        ("ca_drop", "Median CA drop (backdoored)"),
        ("clean_ca_drop", "Median CA drop (clean)"),
    ):
        dist = purif.get(key)
        if key == "asr_rebound" and dist is None:  # not measured (zoo eval --rebound-steps 0)
            continue
        rows.append([what, "n/a" if dist is None else f"{_pct(dist['median'])} (max {_pct(dist['max'])})"])
    loc = summary["localisation"]
    if loc is not None:
        rows.append(["Localisation (mean / median)", f"{_pct(loc['mean'])} / {_pct(loc['median'])} (n={loc['n']})"])
    sec = summary["seconds"]
    rows.append(
        ["Seconds per member (mean)", "n/a" if sec is None else f"{sec['mean']:.1f} s (total {sec['total']:.1f} s)"]
    )
    return rows


def _group_table(groups: Mapping[str, Mapping[str, Any]], what: str, max_fpr: float, given: float | None) -> list[str]:
    """One row per group; the given-threshold column appears only when a threshold was given."""
    header = [
        what.capitalize(),
        "clean",
        "backdoored",
        "TP/FP/TN/FN",
        "not assessed",
        "called (verdict)",
        f"called (FPR ≤ {_pct(max_fpr)} thr.)",
    ]
    header += [] if given is None else [f"called (thr. {_num(given, '.4g')})"]
    header += ["ROC-AUC", "target acc.", "purif. success", "median ASR after", "median CA drop", "median clean CA drop"]
    body = []
    for name, g in groups.items():
        n, conf, rates = g["n"], g["verdict"], g["detection_rate"]
        row = [
            name,
            n["clean"],
            n["backdoored"],
            f"{conf['tp']}/{conf['fp']}/{conf['tn']}/{conf['fn']}",
            conf["not_assessed"],
            _pct(rates["at_verdict"]),
            _pct(rates["at_threshold"]),
        ]
        row += [] if given is None else [_pct(rates.get("at_given_threshold"))]
        row += [
            _num(g["roc_auc"]),
            _pct(g["target"]["accuracy"]),
            _pct(g["purification_success_rate"]),
            _pct(g["median_asr_after"]),
            _pct(g["median_ca_drop"]),
            _pct(g["median_clean_ca_drop"]),
        ]
        body.append(row)
    return markdown_table(header, body)


def markdown_summary(summary: Mapping[str, Any], title: str) -> str:
    """A readable page of the summary: overall, then per trigger family and per architecture."""
    lines = [f"# {title}", "", "## Overall", ""] + markdown_table(["Metric", "Value"], _overall_rows(summary))
    if summary["not_implanted"]:
        lines += ["", "Not implanted (excluded from every number): " + ", ".join(summary["not_implanted"])]
    for key, what in (("by_family", "trigger family"), ("by_arch", "architecture")):
        lines += ["", f"## By {what}", ""] + _group_table(
            summary[key], what, summary["params"]["max_fpr"], summary["params"]["threshold"]
        )
    return "\n".join(lines) + "\n"


def markdown_members(rows: list[MemberOutcome]) -> str:
    """One line per member: ground truth beside what the defense said and what it left."""

    def target(r: MemberOutcome) -> str:
        if r.true_target is None or r.verdict is not True:
            return "–"
        return "right" if r.predicted_target == r.true_target else f"wrong ({r.predicted_target})"

    rebound = any(r.asr_rebound is not None for r in rows)  # a column only when it was measured
    body = [
        [
            r.member_id,
            r.label,
            r.family,
            r.arch,
            _num(r.score),
            {True: "backdoored", False: "clean"}.get(r.verdict, "–")
            if r.label != "not_implanted"
            else "(not evaluated)",
            target(r),
            _pct(r.asr_before),
            _pct(r.asr_after),
            *([_pct(r.asr_rebound)] if rebound else []),
            _pct(ca_drop(r)),
            _pct(r.localisation),
            f"{r.seconds:.0f}",
        ]
        for r in rows
    ]
    header = [
        "member",
        "label",
        "family",
        "arch",
        "score",
        "verdict",
        "target",
        "ASR before",
        "ASR after",
        *(["ASR rebound"] if rebound else []),
        "CA drop",
        "localisation",
        "seconds",
    ]
    return "\n".join(markdown_table(header, body)) + "\n"


def _members_csv(rows: list[MemberOutcome]) -> str:
    names = [f.name for f in fields(MemberOutcome)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(escape.csv_row({k: "" if v is None else v for k, v in r.to_dict().items()}))
    return buf.getvalue()


def _roc_plot(rows: list[MemberOutcome], detection: Mapping[str, Any], max_fpr: float, title: str, path: Path) -> None:
    """Headless (Agg canvas, no pyplot state), so it is safe inside a running benchmark."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, s = labels_and_scores(rows)
    fpr, tpr, _ = roc_curve(y, s)
    fig = Figure(figsize=(5.2, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, marker=".", label=f"ROC (AUC = {detection['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.axvline(max_fpr, linestyle="--", color="tab:red", label=f"FPR = {_pct(max_fpr)}")
    op = detection["tpr_at_fpr"]
    ax.scatter(
        [op["fpr"]],
        [op["tpr"]],
        color="tab:red",
        zorder=3,
        label=f"TPR {_pct(op['tpr'])} @ threshold {_num(op['threshold'], '.4g')}",
    )
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
        _roc_plot(
            [r for r in rows if r.label in SCORED_LABELS],
            detection,
            summary["params"]["max_fpr"],
            title,
            written[ROC_PNG],
        )
    written[SUMMARY_MD] = out_dir / SUMMARY_MD
    atomic.write_text(written[SUMMARY_MD], markdown_summary(summary, title))
    return written
