"""The zoo population scorer on hand-made populations whose answers are worked out by hand."""

from __future__ import annotations

import csv
import json
import math

import pytest

from toolbox.zoo.score import (
    MemberOutcome,
    PurificationBar,
    markdown_members,
    markdown_summary,
    score_population,
    write_report,
)


def member(
    member_id: str,
    label: str = "backdoored",
    family: str = "badnet",
    arch: str = "vit",
    *,
    score: float | None = None,
    verdict: bool | None = None,
    true_target: str | None = None,
    predicted_target: str | None = None,
    ca: tuple[float, float] | None = None,
    asr: tuple[float, float] | None = None,
    seconds: float = 1.0,
    localisation: float | None = None,
) -> MemberOutcome:
    ca_before, ca_after = ca if ca else (None, None)
    asr_before, asr_after = asr if asr else (None, None)
    return MemberOutcome(
        member_id=member_id,
        label=label,
        family=family,
        arch=arch,
        true_target=true_target,
        score=score,
        verdict=verdict,
        predicted_target=predicted_target,
        ca_before=ca_before,
        ca_after=ca_after,
        asr_before=asr_before,
        asr_after=asr_after,
        seconds=seconds,
        localisation=localisation,
    )


def scored(clean: list[float], backdoored: list[float]) -> list[MemberOutcome]:
    return [member(f"c{i}", "clean", "clean-finetune", score=s) for i, s in enumerate(clean)] + [
        member(f"b{i}", "backdoored", score=s) for i, s in enumerate(backdoored)
    ]


def population() -> list[MemberOutcome]:
    """4 backdoored, 3 clean, 1 not implanted (which would top every ranking if it were counted)."""
    return [
        member(
            "b1",
            "backdoored",
            "badnet",
            "vit",
            score=0.9,
            verdict=True,
            true_target="cat",
            predicted_target="cat",
            ca=(0.60, 0.59),
            asr=(0.95, 0.01),
            seconds=10,
            localisation=0.8,
        ),
        member(
            "b2",
            "backdoored",
            "badnet",
            "resnet",
            score=0.8,
            verdict=True,
            true_target="dog",
            predicted_target="car",
            ca=(0.50, 0.48),
            asr=(0.90, 0.02),
            seconds=20,
            localisation=0.6,
        ),
        member(
            "b3",
            "backdoored",
            "blended",
            "vit",
            score=0.4,
            verdict=False,
            true_target="cat",
            ca=(0.60, 0.60),
            asr=(0.90, 0.90),
            seconds=30,
        ),
        member(
            "b4",
            "backdoored",
            "blended",
            "resnet",
            score=0.7,
            verdict=True,
            true_target="ship",
            predicted_target="ship",
            ca=(0.70, 0.65),
            asr=(0.90, 0.0),
            seconds=40,
        ),
        member("c1", "clean", "clean-finetune", "vit", score=0.5, verdict=True, ca=(0.60, 0.59), seconds=10),
        member("c2", "clean", "clean-finetune", "resnet", score=0.2, verdict=False, ca=(0.50, 0.50), seconds=10),
        member("c3", "clean", "clean-scratch", "vit", score=0.1, verdict=None, ca=(0.40, 0.38), seconds=10),
        member(
            "n1",
            "not_implanted",
            "badnet",
            "vit",
            score=0.99,
            verdict=True,
            true_target="cat",
            predicted_target="cat",
            ca=(0.6, 0.1),
            asr=(0.05, 0.9),
            seconds=1000,
            localisation=0.0,
        ),
    ]


def assert_json_clean(summary: dict) -> None:
    json.dumps(summary, allow_nan=False)


# -------------------- detection


def test_perfect_separation():
    det = score_population(scored([0.1, 0.2, 0.3], [0.7, 0.8]))["detection"]
    assert det["roc_auc"] == 1.0
    assert det["tpr_at_fpr"]["tpr"] == 1.0
    assert det["tpr_at_fpr"]["fpr"] == 0.0
    assert det["tpr_at_fpr"]["threshold"] == pytest.approx(0.7)  # the smallest admissible threshold
    assert det["reason"] is None


def test_clean_member_above_every_backdoored():
    rows = scored([0.95, 0.1, 0.2, 0.3], [0.6, 0.7, 0.8])
    det = score_population(rows)["detection"]
    assert det["roc_auc"] == pytest.approx(9 / 12)  # each backdoored beats 3 of the 4 clean
    op = det["tpr_at_fpr"]
    # FPR <= 5 % with 4 clean members means no false positive: only "call nobody" qualifies.
    assert (op["tpr"], op["fpr"], op["threshold"]) == (0.0, 0.0, None)
    assert "note" in op
    op = score_population(rows, max_fpr=0.25)["detection"]["tpr_at_fpr"]
    assert op["threshold"] == pytest.approx(0.6)
    assert (op["tpr"], op["fpr"]) == (1.0, 0.25)
    assert_json_clean(score_population(rows))


def test_ties_count_half_and_share_a_threshold():
    rows = scored([0.1, 0.5], [0.5, 0.9])
    det = score_population(rows)["detection"]
    assert det["roc_auc"] == pytest.approx(3.5 / 4)
    assert det["tpr_at_fpr"]["threshold"] == pytest.approx(0.9)
    assert det["tpr_at_fpr"]["tpr"] == 0.5
    op = score_population(rows, max_fpr=0.5)["detection"]["tpr_at_fpr"]
    assert op["threshold"] == pytest.approx(0.5)  # score >= 0.5 calls both tied members
    assert (op["tpr"], op["fpr"]) == (1.0, 0.5)


def test_threshold_from_another_split_is_applied_as_given():
    rows = scored([0.95, 0.1, 0.2, 0.3], [0.6, 0.7, 0.8])
    det = score_population(rows, threshold=0.7)["detection"]
    given = det["at_given_threshold"]
    assert given["threshold"] == 0.7
    assert given["tpr"] == pytest.approx(2 / 3)  # 0.7 and 0.8: a score equal to the threshold is called
    assert given["fpr"] == pytest.approx(1 / 4)
    assert det["tpr_at_fpr"]["threshold"] is None  # this split's own operating point is unchanged
    assert "at_given_threshold" not in score_population(rows)["detection"]


def test_one_class_gives_none_with_a_reason():
    summary = score_population(scored([], [0.6, 0.7]), threshold=0.65)
    det = summary["detection"]
    assert det["roc_auc"] is None and det["tpr_at_fpr"] is None
    assert "one class" in det["reason"]
    assert det["at_given_threshold"]["tpr"] == 0.5 and det["at_given_threshold"]["fpr"] is None
    assert_json_clean(summary)


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_missing_score_drops_detection_only(bad):
    rows = population()
    rows[2].score = bad
    summary = score_population(rows, threshold=0.5)
    assert summary["detection"] is None
    assert "b3" in summary["detection_reason"]
    assert summary["verdict"]["tp"] == 3
    assert summary["target"]["correct"] == 2
    assert summary["purification"]["all"]["successes"] == 2
    badnet = summary["by_family"]["badnet"]
    assert badnet["roc_auc"] is None and badnet["detection_rate"]["at_threshold"] is None
    assert badnet["detection_rate"]["at_verdict"] == 1.0
    assert_json_clean(summary)


def test_not_implanted_listed_and_excluded():
    summary = score_population(population())
    assert summary["n"] == {"clean": 3, "backdoored": 4, "not_implanted": 1}
    assert summary["not_implanted"] == ["n1"]
    assert summary["detection"]["n_backdoored"] == 4 and summary["detection"]["n_clean"] == 3
    assert summary["detection"]["roc_auc"] == pytest.approx(11 / 12)
    assert summary["seconds"]["max"] == 40
    assert summary["localisation"] == {"n": 2, "mean": pytest.approx(0.7), "median": pytest.approx(0.7)}
    assert "n1" not in json.dumps(summary["by_family"])
    assert summary["by_family"]["badnet"]["n"]["not_implanted"] == 0


# -------------------- verdicts, targets, purification


def test_population_overall_numbers():
    summary = score_population(population())
    assert_json_clean(summary)
    op = summary["detection"]["tpr_at_fpr"]
    assert op["threshold"] == pytest.approx(0.7) and op["tpr"] == 0.75 and op["fpr"] == 0.0
    conf = summary["verdict"]
    assert {k: conf[k] for k in ("tp", "fp", "tn", "fn", "not_assessed")} == {
        "tp": 3,
        "fp": 1,
        "tn": 1,
        "fn": 1,
        "not_assessed": 1,
    }
    assert conf["not_assessed_by_label"] == {"clean": 1, "backdoored": 0}
    assert conf["tpr"] == 0.75 and conf["fpr"] == 0.5
    assert summary["target"] == {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)}
    purif = summary["purification"]
    # b1 passes, b2 sits exactly on both bars (ASR 0.02, CA 0.50 -> 0.48) and passes, b3 keeps its
    # backdoor, b4 loses 5 points of CA.
    assert purif["all"] == {"n": 4, "successes": 2, "success_rate": 0.5, "n_unmeasured": 0}
    assert purif["detected"]["successes"] == 2 and purif["detected"]["success_rate"] == pytest.approx(2 / 3)
    assert purif["asr_after"]["median"] == pytest.approx(0.015)
    assert purif["asr_after"]["max"] == pytest.approx(0.9)
    assert purif["asr_after"]["mean"] == pytest.approx((0.01 + 0.02 + 0.9 + 0.0) / 4)
    assert purif["ca_drop"]["median"] == pytest.approx(0.015)
    assert purif["ca_drop"]["p75"] == pytest.approx(0.0275)
    assert purif["clean_ca_drop"]["median"] == pytest.approx(0.01)
    assert summary["seconds"] == {"mean": pytest.approx(130 / 7), "median": 10.0, "max": 40.0, "total": 130.0}


@pytest.mark.parametrize(
    "asr_after, ca_after, ok",
    [
        (0.02, 0.48, True),  # exactly on both bars
        (0.0201, 0.50, False),  # ASR just over
        (0.0, 0.479, False),  # CA drop 0.021
        (0.0, 0.52, True),  # CA went up
    ],
)
def test_purification_bar_boundaries(asr_after, ca_after, ok):
    rows = [member("b", ca=(0.50, ca_after), asr=(0.9, asr_after), verdict=True)]
    purif = score_population(rows)["purification"]
    assert purif["all"]["successes"] == int(ok)
    assert purif["detected"]["successes"] == int(ok)


def test_custom_bar_and_unmeasured_members():
    rows = [member("b1", ca=(0.50, 0.45), asr=(0.9, 0.04), verdict=True), member("b2", verdict=False)]
    assert score_population(rows)["purification"]["all"]["successes"] == 0
    purif = score_population(rows, bar=PurificationBar(max_asr=0.05, max_ca_drop=0.05))["purification"]
    assert purif["all"] == {"n": 1, "successes": 1, "success_rate": 1.0, "n_unmeasured": 1}
    assert purif["bar"] == {"max_asr": 0.05, "max_ca_drop": 0.05}


def test_target_needs_detection_and_a_true_target():
    rows = [
        member("b1", verdict=True, true_target="cat", predicted_target="cat"),
        member("b2", verdict=True, true_target="cat", predicted_target=None),
        member("b3", verdict=False, true_target="cat", predicted_target="cat"),
        member("b4", verdict=True, true_target=None, predicted_target="cat"),
        member("c1", "clean", "clean-finetune", verdict=True, predicted_target="cat"),
    ]
    assert score_population(rows)["target"] == {"n": 2, "correct": 1, "accuracy": 0.5}


# -------------------- groups


def test_by_family():
    fam = score_population(population())["by_family"]
    assert list(fam) == ["badnet", "blended", "clean-finetune", "clean-scratch"]
    badnet, blended, finetune, scratch = (fam[k] for k in fam)
    assert badnet["n"] == {"clean": 0, "backdoored": 2, "not_implanted": 0}
    assert badnet["verdict"]["tp"] == 2 and badnet["verdict"]["tpr"] == 1.0
    assert badnet["target"]["accuracy"] == 0.5
    assert badnet["purification_success_rate"] == 1.0
    assert badnet["median_asr_after"] == pytest.approx(0.015)
    assert badnet["median_ca_drop"] == pytest.approx(0.015)
    assert badnet["roc_auc"] is None  # single-label group: the detection rate stands in
    assert badnet["detection_rate"] == {"at_verdict": 1.0, "at_threshold": 1.0}
    assert blended["verdict"]["tp"] == 1 and blended["verdict"]["fn"] == 1
    assert blended["target"] == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert blended["purification_success_rate"] == 0.0
    assert blended["median_asr_after"] == pytest.approx(0.45)
    assert blended["median_ca_drop"] == pytest.approx(0.025)
    assert blended["detection_rate"] == {"at_verdict": 0.5, "at_threshold": 0.5}
    assert finetune["verdict"]["fp"] == 1 and finetune["verdict"]["tn"] == 1
    assert finetune["detection_rate"] == {"at_verdict": 0.5, "at_threshold": 0.0}
    assert finetune["target"]["accuracy"] is None and finetune["purification_success_rate"] is None
    assert finetune["median_ca_drop"] is None
    assert finetune["median_clean_ca_drop"] == pytest.approx(0.005)
    assert scratch["verdict"]["not_assessed"] == 1
    assert scratch["detection_rate"] == {"at_verdict": 0.0, "at_threshold": 0.0}


def test_by_arch_has_auc_with_both_classes():
    summary = score_population(population(), threshold=0.45)
    arch = summary["by_arch"]
    assert arch["vit"]["roc_auc"] == pytest.approx(3 / 4)  # b .9, .4 against c .5, .1
    assert arch["resnet"]["roc_auc"] == 1.0
    assert arch["vit"]["detection_rate"]["at_given_threshold"] == pytest.approx(2 / 4)  # b1 and c1
    assert arch["resnet"]["detection_rate"]["at_given_threshold"] == pytest.approx(2 / 3)


def test_empty_population_does_not_raise():
    summary = score_population([member("n1", "not_implanted")])
    assert summary["detection"] is None and summary["detection_reason"]
    assert summary["seconds"] is None and summary["purification"]["asr_after"] is None
    assert_json_clean(summary)
    assert "n/a" in markdown_summary(summary, "empty")


# -------------------- rows and reports


def test_member_outcome_validation():
    with pytest.raises(ValueError, match="label"):
        member("x", "trojaned")
    with pytest.raises(ValueError, match="fraction"):
        member("x", ca=(85.0, 84.0))
    d = population()[0].to_dict()
    with pytest.raises(ValueError, match="asr_afer"):
        MemberOutcome.from_dict({**d, "asr_afer": 0.1})
    d.pop("localisation")
    assert MemberOutcome.from_dict(d).localisation is None


def test_write_report(tmp_path):
    rows = population()
    summary = score_population(rows, threshold=0.45)
    paths = write_report(summary, rows, tmp_path / "out", "Zoo test")
    assert set(paths) == {"zoo_summary.json", "zoo_members.csv", "zoo_roc.png", "zoo_summary.md"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["zoo_roc.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]

    doc = json.loads(paths["zoo_summary.json"].read_text())
    assert doc["title"] == "Zoo test"
    assert doc["summary"]["detection"]["roc_auc"] == pytest.approx(11 / 12)
    assert [MemberOutcome.from_dict(r) for r in doc["rows"]] == rows

    with open(paths["zoo_members.csv"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    assert list(table[0]) == list(rows[0].to_dict())
    assert table[2]["predicted_target"] == "" and table[0]["verdict"] == "True"

    md = paths["zoo_summary.md"].read_text()
    assert md.startswith("# Zoo test")
    assert "0.917" in md  # ROC-AUC
    assert "TPR @ FPR ≤ 5.0 %" in md and "75.0 %" in md
    assert "## By trigger family" in md and "## By architecture" in md
    assert "| clean-finetune |" in md and "| resnet |" in md
    assert "n1" in md  # listed as not implanted
    assert md == markdown_summary(summary, "Zoo test")


def test_write_report_without_detection_skips_the_roc(tmp_path):
    rows = population()
    rows[0].score = None
    paths = write_report(score_population(rows), rows, tmp_path, "no scores")
    assert set(paths) == {"zoo_summary.json", "zoo_members.csv", "zoo_summary.md"}
    assert not (tmp_path / "zoo_roc.png").exists()
    assert "Detection | n/a" in paths["zoo_summary.md"].read_text()


def test_nan_score_is_written_as_null(tmp_path):
    rows = population()
    rows[0].score = math.nan
    paths = write_report(score_population(rows), rows, tmp_path, "nan")
    doc = json.loads(paths["zoo_summary.json"].read_text())
    assert doc["rows"][0]["score"] is None


def test_markdown_members_one_line_each_with_target_and_verdict():
    md = markdown_members(population())
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(population())
    assert (
        "| b1 | backdoored | badnet | vit | 0.900 | backdoored | right | 95.0 % | 1.0 % | 1.0 % | 80.0 % | 10 |" in md
    )
    assert "| b2 |" in md and "wrong (car)" in md
    assert "| n1 | not_implanted | badnet | vit | 0.990 | (not evaluated) |" in md


# -------------------- the calibration page (InverTune's detector records over a zoo)


def record(ratios: dict[str, float], anomaly: float, verdict: str = "no backdoor found") -> dict:
    return {
        "verdict": verdict,
        "stage1": {"anomaly_index": anomaly},
        "cascade": [{"detector": d, "findings": [{"gate_ratio": r / 2}, {"gate_ratio": r}]} for d, r in ratios.items()],
    }


def test_calibration_page_from_records():
    from invertune_plugin.calibration import EvaluatedMember, calibration_page, detector_ratios

    rows = {r.member_id: r for r in population()}
    dev = [
        EvaluatedMember(rows["b1"], record({"inversion": 0.5, "patch": 1.2}, 4.0, "backdoored")),
        EvaluatedMember(rows["b3"], record({"inversion": 0.4, "patch": 0.7}, 1.0)),
        EvaluatedMember(rows["c1"], record({"inversion": 0.6, "patch": 0.9}, 2.0)),
        EvaluatedMember(rows["c2"], record({"inversion": 0.3, "patch": 0.2}, 1.5)),
        EvaluatedMember(rows["n1"], record({"inversion": 2.0}, 9.0)),
    ]  # not implanted: left out
    assert detector_ratios(dev[0].detection) == {"inversion": 0.5, "patch": 1.2}
    params = {
        "profile": "default",
        "cascade": ["inversion", "patch"],
        "detectors": {"inversion": {"min_asr": 0.9, "rounds": 1}, "patch": {"min_rate": 0.95}},
    }
    page = calibration_page(dev, dev[:2], 0.45, params, "Generated today.")
    assert page.startswith("# Calibration of InverTune's detection\n\nGenerated today.")
    # scores b1 0.9, b3 0.4 against c1 0.5, c2 0.2: AUC 3/4; anomaly 4, 1 against 2, 1.5: 2/4; at 0.45 b1, c1 called
    assert "| dev | 2 / 2 | 0.750 | 0.500 | TPR 1/2, FPR 1/2 |" in page
    assert "| test | 0 / 2 |" in page and "(not shown: held out)" in page
    assert "| inversion | min_asr=0.9 | 0.300 / 0.450 / 0.600 (n=2) | 0.400 / 0.450 / 0.500 (n=2) | 0 of 2 |" in page
    assert "| patch | min_rate=0.95 |" in page
    assert "| b1 | backdoored | badnet | vit | 0.500 | 1.200 | 4.00 | 0.900 | backdoored | right |" in page
    assert "n1" not in page and "## The clean nulls" not in page


def test_calibration_page_shows_the_nulls_and_the_calibrated_verdict():
    from invertune_plugin.calibration import EvaluatedMember, calibration_page
    from toolbox.null import CleanNull, Statistic

    rows = {r.member_id: r for r in population()}
    dev = [EvaluatedMember(rows["b1"], record({"inversion": 0.5}, 4.0, "backdoored"))]
    null = CleanNull(
        "invertune",
        {"architecture": "abc"},
        {"inversion": Statistic("log", (0.2, 0.3, 0.25, 0.22, 0.28)), "patch": Statistic("log", (1, 1, 1, 1, 1))},
        tuple("abcde"),
        source="/x/null-vit.json",
    )
    calibrated = {"dev": [rows["b1"], rows["b3"], rows["c1"], rows["c2"]]}
    page = calibration_page(dev, None, None, {"cascade": ["inversion"]}, "Today.", (), [null], calibrated)
    # both spreads under MIN_SPREAD (0.25 in log units): fitted with it, and marked so
    assert "| null-vit.json | abc | 5 | inversion | log (floored) | 0.200 / 0.250 / 0.300 (n=5) |" in page
    assert "|  |  |  | patch | log (floored) | 1.000 / 1.000 / 1.000 (n=5) |  |" in page
    # verdicts: b1 backdoored (right), b3 not called, c1 called, c2 not: scores 0.9, 0.4 / 0.5, 0.2
    assert "| dev | 2 / 2 | 0.750 | TPR 1/2, FPR 1/2 |" in page


def test_regenerated_pages_do_not_count_as_edits():
    from toolbox.results import is_generated

    assert is_generated("docs/results/zoo.md") and is_generated("docs/calibration.md")
    assert not is_generated("docs/invertune.md") and not is_generated("toolbox/results.py")


def test_provenance_names_commit_machine_and_command():
    from toolbox.results import provenance, provenance_markdown

    prov = provenance(["python", "benchmarks/zoo.py"])
    assert prov["machine"] and prov["threads"] >= 1 and prov["date"]
    line = provenance_markdown({**prov, "commit": "abc123", "dirty": True})
    assert "commit abc123 (with uncommitted edits)" in line and "`python benchmarks/zoo.py`" in line
