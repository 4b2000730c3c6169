"""Canary analysis plumbing: Prometheus text parsing, counter deltas, quantiles, the verdict.

Pure: no I/O and no Kubernetes. The two metric sources in `roost_operator.analysis` reduce what
they read (pod scrapes or PromQL answers) to one `RevisionWindow` per revision and interval,
and `evaluate` hands both to the sequential gates of `roost_operator.verdicts` (which keep the
evidence that ``status.canary.evidence`` persists) and adds the legacy point check
``latency.maxP99Seconds``. What the gates test, and how each v1alpha1 threshold maps onto
them, is in docs/analysis.md; `benchmarks/bench_gates.py` judges the same simulated streams
with the old per-window threshold gates beside the new ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from roost_serving import drift

from roost_operator.compare import COMPARE
from roost_operator.quality_gates import Quality
from roost_operator.spec import AnalysisSpec
from roost_operator.times import rfc3339_seconds
from roost_operator.verdicts import Counts, GateVerdict, judge_interval

Verdict = Literal["pass", "fail", "inconclusive"]
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]

REQUESTS = "roost_requests_total"
DURATION_BUCKET = "roost_request_duration_seconds_bucket"
PREDICTIONS = "roost_predictions_total"
FEATURE_PSI = "roost_feature_psi"
DRIFT_ROWS = "roost_drift_window_rows"
FEATURE_BINS = "roost_feature_bin_total"
FEATURE_REFERENCE = "roost_feature_reference_share"
PREDICTION_EDGES = "roost_prediction_bin_upper"
FEATURE_BINNING = "roost_feature_bins_info"
# The accuracy gate's cohort (roost_serving.quality): rows counted once they are the label
# horizon old, so both arms' labels had the same time to arrive.
HORIZON_PREDICTIONS = "roost_quality_horizon_predictions_total"
HORIZON_LABELLED = "roost_quality_horizon_labelled_total"
HORIZON_CORRECT = "roost_quality_horizon_correct_total"
HORIZON_ERROR_BUCKET = "roost_quality_horizon_abs_error_bucket"

# Sample suffixes that accumulate (and so reset when the process restarts), per family type.
_CUMULATIVE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
}


def series_key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    """Identity of one time series: metric name plus its sorted labels."""
    return name, tuple(sorted(labels.items()))


def label(key: SeriesKey, name: str) -> str | None:
    """Value of label `name` of a series, or None."""
    for k, v in key[1]:
        if k == name:
            return v
    return None


@dataclass(frozen=True)
class Scrape:
    """One parsed /metrics page: cumulative samples (counters, histogram parts) and gauges."""

    counters: Mapping[SeriesKey, float]
    gauges: Mapping[SeriesKey, float]


def parse_exposition(text: str) -> Scrape:
    """Parse Prometheus text exposition into cumulative and gauge samples.

    `*_created` samples (client_python writes them as gauges) are kept as gauges: they tell
    `counter_deltas` when a process restarted.
    """
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        suffixes = _CUMULATIVE_SUFFIXES.get(family.type, ())
        for sample in family.samples:
            key = series_key(sample.name, sample.labels)
            if suffixes and sample.name.endswith(suffixes):
                counters[key] = float(sample.value)
            elif not suffixes:
                gauges[key] = float(sample.value)
    return Scrape(counters=counters, gauges=gauges)


def counter_deltas(previous: Scrape, current: Scrape) -> tuple[dict[SeriesKey, float], bool]:
    """Increase of every cumulative series from `previous` to `current`, and whether it reset.

    A process restart resets all its counters at once, so one decreasing counter, a vanished
    series or a changed `*_created` timestamp marks the whole scrape as reset; the increase is
    then the current value (counted from zero), as PromQL's `increase()` treats a reset.
    A series that first appears in `current` started from zero.
    """
    reset = any(
        key not in current.counters or current.counters[key] < value
        for key, value in previous.counters.items()
    ) or any(
        key[0].endswith("_created") and key in current.gauges and current.gauges[key] != value
        for key, value in previous.gauges.items()
    )
    if reset:
        return dict(current.counters), True
    return {
        key: value - previous.counters.get(key, 0.0) for key, value in current.counters.items()
    }, False


def sum_by(
    samples: Mapping[SeriesKey, float], name: str, by: str, where: Mapping[str, str] | None = None
) -> dict[str, float]:
    """`sum by (<by>) (name{where})` over a flat sample map."""
    out: dict[str, float] = {}
    for key, value in samples.items():
        if key[0] != name:
            continue
        labels = dict(key[1])
        if where and any(labels.get(k) != v for k, v in where.items()):
            continue
        group = labels.get(by, "")
        out[group] = out.get(group, 0.0) + value
    return out


def add_maps(maps: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Element-wise sum of several label-value maps."""
    out: dict[str, float] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def histogram_quantile(q: float, buckets: Mapping[str, float] | Mapping[float, float]) -> float:
    """PromQL `histogram_quantile` over cumulative bucket counts keyed by `le`.

    Linear interpolation inside the bucket holding the rank, the lowest bucket starting at 0,
    the +Inf bucket answering with the highest finite bound. NaN when there are no
    observations or no +Inf bucket, like PromQL.
    """
    if math.isnan(q) or q < 0:
        return -math.inf if q < 0 else math.nan
    if q > 1:
        return math.inf
    parsed = sorted((float(le), float(count)) for le, count in buckets.items())
    if len(parsed) < 2 or not math.isinf(parsed[-1][0]):
        return math.nan
    # Scrapes taken at slightly different moments can make a bucket smaller than the one below;
    # PromQL makes the counts monotonic before interpolating, so do the same.
    bounds = [b for b, _ in parsed]
    counts = list(np.maximum.accumulate([c for _, c in parsed]))
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if b == 0 else bounds[b - 1]
    before = 0.0 if b == 0 else counts[b - 1]
    in_bucket = counts[b] - before
    return float(start + (bounds[b] - start) * ((rank - before) / in_bucket))


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon distance, base 2 (0 identical, 1 disjoint), of two count maps.

    The contract's "prediction divergence": the maths is `roost_serving.drift.js_distance`,
    here over the union of bins (missing keys count as zero); NaN when either side is empty.
    """
    keys = sorted(set(p) | set(q))
    a = [max(p.get(k, 0.0), 0.0) for k in keys]
    b = [max(q.get(k, 0.0), 0.0) for k in keys]
    if sum(a) <= 0 or sum(b) <= 0:
        return math.nan
    return drift.js_distance(a, b)


def weighted_feature_psi(pods: Sequence[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Per-feature PSI averaged over pods, each weighted by the rows in its drift window.

    `pods` holds (feature -> PSI, window rows) per pod. A pod with an empty window has no
    opinion yet and is left out.
    """
    total = sum(rows for _, rows in pods if rows > 0)
    if total <= 0:
        return {}
    out: dict[str, float] = {}
    for psi, rows in pods:
        if rows <= 0:
            continue
        for feature, value in psi.items():
            if math.isfinite(value):
                out[feature] = out.get(feature, 0.0) + value * rows / total
    return out


def nested_sum(
    samples: Mapping[SeriesKey, float], name: str, outer: str, inner: str
) -> dict[str, dict[str, float]]:
    """`sum by (<outer>, <inner>) (name)` as {outer: {inner: value}}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in samples.items():
        if key[0] != name:
            continue
        labels = dict(key[1])
        row = out.setdefault(labels.get(outer, ""), {})
        row[labels.get(inner, "")] = row.get(labels.get(inner, ""), 0.0) + value
    return out


@dataclass(frozen=True)
class RevisionWindow:
    """What one revision did during one analysis interval, summed over its pods."""

    requests: Mapping[str, float] = field(default_factory=dict)
    """Infer requests by HTTP status code (summed over any other label, e.g. ``protocol``)."""
    p99_seconds: float | None = None
    """p99 request latency over the interval, None without observations."""
    predictions: Mapping[str, float] = field(default_factory=dict)
    """Predictions by bin/class."""
    feature_psi: Mapping[str, float] = field(default_factory=dict)
    """Per-feature PSI, rows-weighted over pods (current drift windows)."""
    drift_rows: float = 0.0
    """Rows in the pods' drift windows together."""
    buckets: Mapping[float, float] = field(default_factory=dict)
    """Cumulative latency bucket increases by upper bound."""
    feature_bins: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Rows per feature bin in the interval (cumulative counters' increases)."""
    reference: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """The profile's share per feature bin, as the canary's pods export it."""
    prediction_edges: Mapping[str, float] = field(default_factory=dict)
    """Upper edge per output bin (regressors), as the revision's pods export it."""
    compare: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Predictions per version of the pushed (stable's) edges and bin (`roost_operator.compare`)."""
    binning: Mapping[str, str] = field(default_factory=dict)
    """A hash of each feature's profile bins, as the revision's pods export it."""
    quality: Quality = field(default_factory=Quality)
    """Labelled predictions of the interval's horizon cohort (accuracy and error gates)."""

    @property
    def total_requests(self) -> float:
        """All infer requests."""
        return sum(self.requests.values())

    def counts(self) -> Counts:
        """What the sequential gates read."""
        return Counts(
            requests=self.requests,
            buckets=self.buckets,
            predictions=self.predictions,
            feature_bins=self.feature_bins,
            reference=self.reference,
            prediction_edges=self.prediction_edges,
            compare=self.compare,
            binning=self.binning,
            quality=self.quality,
        )


ROOST_SOURCES = (("source", "validation"), ("source", "shadow"))


def client_only(samples: Mapping[SeriesKey, float]) -> dict[SeriesKey, float]:
    """``samples`` without roost's own requests (``source="validation"`` or ``"shadow"``).

    Validation and warm-up requests and shadow copies are never user traffic: analysis leaves
    them out.
    """
    return {k: v for k, v in samples.items() if not any(s in k[1] for s in ROOST_SOURCES)}


def window_from_samples(
    deltas: Sequence[Mapping[SeriesKey, float]], gauges: Sequence[Mapping[SeriesKey, float]]
) -> RevisionWindow:
    """Sum per-pod counter deltas and combine per-pod gauges into a `RevisionWindow`.

    Requests roost itself sent (``source="validation"``, ``"shadow"``) are left out.
    """
    deltas = [client_only(d) for d in deltas]
    buckets = add_maps(sum_by(d, DURATION_BUCKET, "le") for d in deltas)
    p99 = histogram_quantile(0.99, buckets)
    per_pod = [
        (sum_by(g, FEATURE_PSI, "feature"), sum(sum_by(g, DRIFT_ROWS, "model").values()))
        for g in gauges
    ]
    feature_bins: dict[str, dict[str, float]] = {}
    for d in deltas:
        for feature, row in nested_sum(d, FEATURE_BINS, "feature", "bin").items():
            feature_bins[feature] = add_maps([feature_bins.get(feature, {}), row])
    # Every pod of a revision serves the same profile: any pod's reference is the reference.
    reference = next(
        (r for g in gauges if (r := nested_sum(g, FEATURE_REFERENCE, "feature", "bin"))), {}
    )
    edges = next((e for g in gauges if (e := sum_by(g, PREDICTION_EDGES, "bin"))), {})
    binning = next(
        (b for g in gauges if (b := nested_sum(g, FEATURE_BINNING, "feature", "digest"))), {}
    )
    compare: dict[str, dict[str, float]] = {}
    for d in deltas:  # compare series carry a version label only once `compare.tag_deltas` ran
        for v, row in nested_sum(d, COMPARE, "version", "bin").items():
            compare[v] = add_maps([compare.get(v, {}), row])
    return RevisionWindow(
        requests=add_maps(sum_by(d, REQUESTS, "code") for d in deltas),
        p99_seconds=None if math.isnan(p99) else p99,
        predictions=add_maps(sum_by(d, PREDICTIONS, "bin") for d in deltas),
        feature_psi=weighted_feature_psi(per_pod),
        drift_rows=sum(rows for _, rows in per_pod),
        buckets={float(le): v for le, v in buckets.items()},
        feature_bins=feature_bins,
        reference=reference,
        prediction_edges=edges,
        compare={v: row for v, row in compare.items() if v},
        binning={f: min(digests) for f, digests in binning.items() if digests},
        quality=Quality(
            matured=sum(sum(sum_by(d, HORIZON_PREDICTIONS, "model").values()) for d in deltas),
            labelled=sum(sum(sum_by(d, HORIZON_LABELLED, "model").values()) for d in deltas),
            correct=sum(sum(sum_by(d, HORIZON_CORRECT, "model").values()) for d in deltas),
            error_buckets={
                float(le): v
                for le, v in add_maps(sum_by(d, HORIZON_ERROR_BUCKET, "le") for d in deltas).items()
            },
        ),
    )


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome of one analysis of the canary against the stable revision."""

    time: datetime
    verdict: Verdict
    gates: tuple[GateVerdict, ...]
    canary_requests: int
    message: str
    evidence: Mapping[str, Any] | None = None
    """The accumulated evidence to persist (None: unchanged, e.g. no baseline yet)."""
    decisive: bool = False
    """A sequential gate failed with confidence: roll back now, no `failureLimit` applies."""
    paused: str = ""
    """The routing check found canary and stable on different traffic: the rollout pauses
    (no verdict, no deadline policy) and this says why; empty otherwise."""

    def to_status(self) -> dict[str, Any]:
        """`status.canary.lastAnalysis` as in the contract."""
        out = {
            "time": rfc3339_seconds(self.time),
            "verdict": self.verdict,
            "message": self.message,
            "canaryRequests": self.canary_requests,
            "gates": [g.to_status() for g in self.gates],
        }
        if self.paused:
            out["paused"] = self.paused
        return out

    def gate(self, name: str) -> GateVerdict | None:
        """The named gate's result, if that gate ran."""
        return next((g for g in self.gates if g.name == name), None)


def inconclusive(now: datetime, message: str, canary_requests: int = 0) -> AnalysisResult:
    """An analysis that could not judge at all (no baseline yet, metrics unreachable)."""
    return AnalysisResult(
        time=now, verdict="inconclusive", gates=(), canary_requests=canary_requests, message=message
    )


def _p99_ceiling(canary: RevisionWindow, limit: float) -> GateVerdict:
    """Legacy point check: this interval's canary p99 against an absolute ceiling."""
    p99 = canary.p99_seconds
    if p99 is None:
        words = f"p99 ceiling {limit:g} s: no requests in the interval"
        return GateVerdict("latencyP99", "enforce", "inconclusive", margin=limit, words=words)
    verdict = "fail" if p99 > limit else "pass"
    where = "above" if p99 > limit else "below"
    words = f"p99 {p99:.4g} s this interval, ceiling {limit:g} s ({where})"
    return GateVerdict("latencyP99", "enforce", verdict, p99, None, None, limit, p99, words)


def evaluate(
    canary: RevisionWindow,
    stable: RevisionWindow | None,
    spec: AnalysisSpec,
    now: datetime,
    notes: Sequence[str] = (),
    evidence: Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Add one interval to the evidence and judge the canary.

    Without a stable window (the stable revision served nothing, or has no baseline yet) the
    interval adds nothing: the comparison needs both arms over the same time. A sequential
    gate worse than its margin fails decisively; the legacy `maxP99Seconds` ceiling fails
    like before (`failureLimit` consecutive failures roll back). `notes` are appended to the
    message (e.g. pods that could not be scraped or that restarted).
    """
    if stable is None:
        why = "the stable revision served no requests this interval"
        return inconclusive(now, "; ".join([why, *notes]), round(canary.total_requests))
    judged = judge_interval(spec, evidence, canary.counts(), stable.counts())
    gates = list(judged.gates)
    verdict: Verdict = "inconclusive"
    if judged.verdict in ("pass", "fail"):
        verdict = "pass" if judged.verdict == "pass" else "fail"
    message = judged.message
    decisive = verdict == "fail"
    lat = spec.gates.latency
    if lat is not None and lat.max_p99_seconds is not None:
        ceiling = _p99_ceiling(canary, lat.max_p99_seconds)
        gates.append(ceiling)
        if ceiling.verdict == "fail" and verdict != "fail":
            verdict, message = "fail", ceiling.words
        elif ceiling.verdict != "pass" and verdict == "pass":
            verdict = "inconclusive"
            message = ceiling.words
    if notes:
        message = "; ".join([message, *notes])
    return AnalysisResult(
        time=now,
        verdict=verdict,
        gates=tuple(gates),
        canary_requests=round(judged.canary_requests),
        message=message,
        evidence=judged.evidence,
        decisive=decisive,
        paused=judged.paused,
    )
