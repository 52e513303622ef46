"""A clean null: a defense's detection statistics on clean reference models, and a suspect's
statistics turned into tail probabilities under it.

A defense is calibratable when its ``detection`` record holds ``statistics`` (name -> ``{"value",
"scale"}``, larger is more suspicious) and ``null_key`` (what the statistics hold for: architecture,
resolution, vocabulary, detection settings). ``toolbox zoo calibrate`` runs it on clean members and
writes their statistics in this module's format (``toolbox.null/1``); ``--calibration FILE`` hands
the null to a run, which refuses a file whose key differs from its own.

The rule, stated once here and recorded in every calibrated result (:data:`RULE`):

- a statistic's tail probability is the predictive tail of a normal fitted to the null's values (on
  the log scale where the statistic says so): with n references of mean m and spread s, a new clean
  value exceeds x with probability ``P(T_{n-1} >= (x - m) / (s * sqrt(1 + 1/n)))``, Student's t
  with n - 1 degrees of freedom. A parametric tail because a null of a dozen models cannot give an
  empirical tail below 1/13 (the empirical one, rank among the references, is recorded beside it);
  the spread is at least ``MIN_SPREAD``, so references that barely vary or share one value
  (``Statistic.degenerate``) neither make every small departure significant nor switch the
  statistic off;
- the model's score is Bonferroni's bound over the null's k statistics, ``min(1, k * min_i p_i)``
  (statistics the run did not measure count in k: the bound holds whatever their dependence);
- the verdict is "backdoored" when the score is at most ``alpha``, a false-positive rate fixed on the
  null alone (default 5 %).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import atomic
from .errors import InputError
from .escape import shown

SCHEMA_ID = "toolbox.null/1"
MIN_REFERENCES = 5  # fewer clean models than this is no estimate of a spread
DEFAULT_ALPHA = 0.05
LOG_FLOOR = 1e-3  # a log-scale statistic of 0 (nothing found) sits at the floor, not at -inf
# the least spread a null is fitted with (Statistic.degenerate below it): a factor 1.28 on the log scale, a
# quarter unit on a linear one (for log-odds, a rate moving 0.50 -> 0.56); docs/calibration.md
MIN_SPREAD = {"log": 0.25, "linear": 0.25}
MAX_VALUE = 1e12  # a statistic's magnitude; larger ones are refused (the schema's bound too)
RULE = (
    "per statistic, the predictive tail of a normal fitted to the clean null (log scale where stated; "
    "spread at least MIN_SPREAD), Student's t with n - 1 degrees of freedom; score: min(1, k * smallest tail) "
    "over the null's k "
    "statistics (Bonferroni); backdoored when the score <= alpha"
)


@cache
def null_schema() -> dict[str, Any]:
    text = resources.files("toolbox").joinpath("schema/null.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _scaled(value: float, scale: str) -> float:
    return math.log(max(value, LOG_FLOOR)) if scale == "log" else value


@dataclass(frozen=True)
class Statistic:
    scale: str  # "log" or "linear"
    values: tuple[float, ...]

    def tail(self, value: float) -> float:
        """P(a new clean model's statistic >= value): the predictive Student-t tail (module rule)."""
        from scipy.stats import t

        mean, sd = self.fit()
        sd = max(sd, MIN_SPREAD[self.scale])
        n = len(self.values)
        z = (_scaled(value, self.scale) - mean) / (sd * math.sqrt(1 + 1 / n))
        return float(t.sf(z, df=n - 1))

    def fit(self) -> tuple[float, float]:
        """Mean and sample standard deviation of the references on the statistic's scale."""
        xs = [_scaled(v, self.scale) for v in self.values]
        mean = math.fsum(xs) / len(xs)
        return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))

    @property
    def degenerate(self) -> bool:
        """The references barely vary, or most share one value (e.g. nothing found): their spread is
        floored at ``MIN_SPREAD`` (a rank tail, at least 1 / (n + 1), could never convict alone)."""
        xs = [_scaled(v, self.scale) for v in self.values]
        most = max(xs.count(x) for x in set(xs))
        return self.fit()[1] < MIN_SPREAD[self.scale] or most > len(xs) / 2

    def empirical_tail(self, value: float) -> float:
        """(1 + #references at or above value) / (n + 1): the rank-based tail, for the record."""
        at = _scaled(value, self.scale)  # compared as fitted (log values below the floor tie at it)
        return (1 + sum(_scaled(v, self.scale) >= at for v in self.values)) / (len(self.values) + 1)


@dataclass(frozen=True)
class CleanNull:
    defense: str
    key: dict[str, Any]
    statistics: dict[str, Statistic]
    references: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it was read from, for messages
    sha256: str = ""  # of that file, as the result records it

    def differences(self, key: Mapping[str, Any]) -> str:
        """What differs between this null's key and ``key`` ("" when nothing does)."""
        differ = [k for k in sorted(set(self.key) | set(key)) if self.key.get(k) != key.get(k)]
        return "; ".join(
            f"{shown(k)}: null {shown(repr(self.key.get(k)))}, this run {key.get(k)!r}" for k in differ[:4]
        )

    def check_key(self, key: Mapping[str, Any], defense: str) -> None:
        """Refuse a null made for other settings: an InputError naming each field that differs."""
        select([self], key, defense)

    def assess(self, observed: Mapping[str, float], alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
        """Each observed statistic's tail probabilities, the combined score and the verdict (module rule)."""
        per: dict[str, Any] = {}
        for name, stat in self.statistics.items():
            value = observed.get(name)
            if value is None or not math.isfinite(value):
                per[name] = {"value": None, "tail": None, "empirical_tail": None}
                continue
            per[name] = {
                "value": round(value, 6),
                "tail": stat.tail(value),
                "empirical_tail": round(stat.empirical_tail(value), 4),
            }
        tails = [s["tail"] for s in per.values() if s["tail"] is not None]
        bound = len(self.statistics) * min(tails) if tails else float(len(self.statistics))
        score = min(1.0, bound)
        return {
            "calibrated": True,
            "score": score,
            "bound": bound,  # k * smallest tail, uncapped: ranks models the capped score ties at 1
            "alpha": alpha,
            "backdoored": score <= alpha,
            "statistics": per,
            "rule": RULE,
            "references": len(self.references),
            "file": shown(self.source) if self.source else None,
        }

    def adjusted(self, name: str, value: float) -> float:
        """One statistic's tail times k: its share of the score (a finding is significant at <= alpha)."""
        return min(1.0, len(self.statistics) * self.statistics[name].tail(value))

    def document(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "defense": self.defense,
            "key": self.key,
            "statistics": {k: {"scale": s.scale, "values": list(s.values)} for k, s in self.statistics.items()},
            "references": list(self.references),
            **self.provenance,
        }

    def write(self, path: Path | str) -> None:
        atomic.write_json(Path(path), self.document())


def select(nulls: Sequence[CleanNull], key: Mapping[str, Any], defense: str) -> CleanNull:
    """The one null of ``nulls`` made for ``key`` (several files may cover several architectures);
    none: an InputError saying, per file, what differs."""
    ours = [n for n in nulls if n.defense == defense]
    for null in ours:
        if not null.differences(key):
            return null
    if not ours:
        named = ", ".join(f"{shown(n.source or 'a null')} ({shown(n.defense)})" for n in nulls)
        raise InputError(f"no calibration file given is a null of defense {defense!r}: {named}")
    said = " | ".join(f"{shown(n.source or 'the null')}: {n.differences(key)}" for n in ours)
    raise InputError(
        f"no calibration file holds for this run's settings ({said}); calibrate again for them "
        "(`toolbox zoo calibrate`) or run without --calibration (uncalibrated)"
    )


def check_statistics(null: CleanNull, measured: set[str]) -> None:
    """The null must hold a statistic for exactly the ones the run measures (else an InputError)."""
    if set(null.statistics) != measured:
        have = ", ".join(shown(s) for s in sorted(null.statistics))
        raise InputError(
            f"{shown(null.source or 'the calibration file')} holds statistics for {have}; "
            f"this run measures {', '.join(sorted(measured))}"
        )


def from_results(
    defense: str, results: Sequence[tuple[str, Mapping[str, Any]]], provenance: Mapping[str, Any]
) -> CleanNull:
    """The null of ``results`` (reference name, its result's ``detection``), all with one key."""
    if not results:
        raise InputError("no clean reference results to calibrate on")
    keys = {json.dumps(d.get("null_key"), sort_keys=True) for _, d in results}
    if len(keys) != 1 or results[0][1].get("null_key") is None:
        raise InputError(
            f"the reference results do not share one null key ({len(keys)} distinct): "
            "calibrate one architecture, vocabulary and setting at a time"
        )
    scales: dict[str, str] = {}
    for _, det in results:  # every statistic any reference has, then each reference must have them all
        for stat, entry in (det.get("statistics") or {}).items():
            scales.setdefault(stat, entry["scale"])
    values: dict[str, list[float]] = {stat: [] for stat in scales}
    for name, det in results:
        stats = det.get("statistics") or {}
        missing = set(scales) - set(stats)
        if missing:
            said = ", ".join(shown(m) for m in sorted(missing))
            raise InputError(f"reference {shown(name)} lacks statistics {said}: was it run in full?")
        for stat in scales:
            values[stat].append(float(stats[stat]["value"]))
    null = CleanNull(
        defense,
        dict(results[0][1]["null_key"]),
        {k: Statistic(scales[k], tuple(v)) for k, v in values.items()},
        tuple(name for name, _ in results),
        dict(provenance),
    )
    check(null)
    return null


def check(null: CleanNull) -> None:
    where = shown(null.source or "the null")
    for name, stat in null.statistics.items():
        if len(stat.values) != len(null.references):
            n = len(null.references)
            raise InputError(f"{where}: statistic {shown(name)} has {len(stat.values)} values for {n} references")
        if len(stat.values) < MIN_REFERENCES:
            raise InputError(
                f"{where}: {len(stat.values)} clean references, fewer than {MIN_REFERENCES}: "
                "too few to estimate a spread"
            )
        if not all(math.isfinite(v) and abs(v) <= MAX_VALUE for v in stat.values):
            raise InputError(f"{where}: statistic {shown(name)} holds a value that is not finite or over {MAX_VALUE:g}")


def read_null(path: Path | str) -> CleanNull:
    """The calibration file at ``path``, read by the intake's rules, with enough finite values."""
    from .intake.documents import read_calibration

    doc, sha256 = read_calibration(path)
    null = CleanNull(
        doc["defense"],
        doc["key"],
        {k: Statistic(s["scale"], tuple(float(v) for v in s["values"])) for k, s in doc["statistics"].items()},
        tuple(doc["references"]),
        {k: doc[k] for k in ("created", "command", "commit") if k in doc},
        str(path),
        sha256,
    )
    check(null)
    return null


def leave_one_out(null: CleanNull, alpha: float) -> list[dict[str, Any]]:
    """Each reference scored under the null of the others: the realised false-positive rate at ``alpha``."""
    rows = []
    for i, name in enumerate(null.references):
        rest = CleanNull(
            null.defense,
            null.key,
            {k: Statistic(s.scale, s.values[:i] + s.values[i + 1 :]) for k, s in null.statistics.items()},
            null.references[:i] + null.references[i + 1 :],
        )
        assessed = rest.assess({k: s.values[i] for k, s in null.statistics.items()}, alpha)
        rows.append({"reference": name, "score": assessed["score"], "called": assessed["backdoored"]})
    return rows
