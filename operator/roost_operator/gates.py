"""Canary analysis maths: Prometheus text parsing, counter deltas, quantiles and the gates.

Pure: no I/O and no Kubernetes. The two metric sources in `roost_operator.analysis` reduce what
they read (pod scrapes or PromQL answers) to one `RevisionWindow` per revision, and `evaluate`
turns the canary's and the stable revision's windows into an `AnalysisResult`.

Gates (names as they appear in `status.canary.lastAnalysis.gates` and operator metrics):

- ``minRequests``: canary requests in the window; fewer than ``minRequests`` makes the whole
  analysis inconclusive, because a handful of requests proves nothing either way.
- ``errorRate``: non-2xx share of the canary's infer requests.
- ``latencyP99``: canary p99 request latency in seconds (``maxP99Seconds``).
- ``latencyP99Ratio``: canary p99 over the stable p99 of the same window (``maxP99Ratio``).
- ``drift``: max over features of the canary's ``roost_feature_psi``, averaged over canary pods
  weighted by the rows in each pod's drift window (``maxPSI``); it abstains (inconclusive) until
  the canary's windows hold ``minRows`` rows, since PSI over few rows is mostly sampling noise.
- ``divergence``: Jensen-Shannon distance (base 2) between the canary's and the stable
  revision's ``roost_predictions_total`` deltas (``maxJSDistance``).
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

from roost_operator.times import rfc3339_seconds

Verdict = Literal["pass", "fail", "inconclusive"]
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]

REQUESTS = "roost_requests_total"
DURATION_BUCKET = "roost_request_duration_seconds_bucket"
PREDICTIONS = "roost_predictions_total"
FEATURE_PSI = "roost_feature_psi"
DRIFT_ROWS = "roost_drift_window_rows"
# PSI over n rows of k bins carries a sampling bias of about (k - 1) / n even without drift
# (0.45 at 20 rows of 10 bins, 0.045 at 200): below this many rows the drift gate abstains.
DEFAULT_MIN_DRIFT_ROWS = 200

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


@dataclass(frozen=True)
class RevisionWindow:
    """What one revision did during the analysis window, summed over its pods."""

    requests: Mapping[str, float] = field(default_factory=dict)
    """Infer requests by HTTP status code."""
    p99_seconds: float | None = None
    """p99 request latency over the window, None without observations."""
    predictions: Mapping[str, float] = field(default_factory=dict)
    """Predictions by bin/class."""
    feature_psi: Mapping[str, float] = field(default_factory=dict)
    """Per-feature PSI, rows-weighted over pods (current drift windows)."""
    drift_rows: float = 0.0
    """Rows in the pods' drift windows together."""

    @property
    def total_requests(self) -> float:
        """All infer requests."""
        return sum(self.requests.values())

    @property
    def error_requests(self) -> float:
        """Infer requests answered with a status outside 2xx."""
        return sum(v for code, v in self.requests.items() if not code.startswith("2"))


def window_from_samples(
    deltas: Sequence[Mapping[SeriesKey, float]], gauges: Sequence[Mapping[SeriesKey, float]]
) -> RevisionWindow:
    """Sum per-pod counter deltas and combine per-pod gauges into a `RevisionWindow`."""
    buckets = add_maps(sum_by(d, DURATION_BUCKET, "le") for d in deltas)
    p99 = histogram_quantile(0.99, buckets)
    per_pod = [
        (sum_by(g, FEATURE_PSI, "feature"), sum(sum_by(g, DRIFT_ROWS, "model").values()))
        for g in gauges
    ]
    return RevisionWindow(
        requests=add_maps(sum_by(d, REQUESTS, "code") for d in deltas),
        p99_seconds=None if math.isnan(p99) else p99,
        predictions=add_maps(sum_by(d, PREDICTIONS, "bin") for d in deltas),
        feature_psi=weighted_feature_psi(per_pod),
        drift_rows=sum(rows for _, rows in per_pod),
    )


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"spec.rollout.analysis.{what} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GateThresholds:
    """Thresholds of `spec.rollout.analysis`; a None threshold switches its gate off."""

    min_requests: int = 50
    max_error_rate: float | None = None
    max_p99_seconds: float | None = None
    max_p99_ratio: float | None = None
    max_psi: float | None = None
    min_drift_rows: int = DEFAULT_MIN_DRIFT_ROWS
    max_js_distance: float | None = None

    @classmethod
    def from_spec(cls, analysis: Mapping[str, Any] | None) -> GateThresholds:
        """Build from the `spec.rollout.analysis` dict (schema defaults may be missing)."""
        analysis = analysis or {}
        gates = analysis.get("gates") or {}
        min_requests = analysis.get("minRequests", 50)
        if isinstance(min_requests, bool) or not isinstance(min_requests, int):
            raise ValueError(
                f"spec.rollout.analysis.minRequests must be an integer, got {min_requests!r}"
            )
        return cls(
            min_requests=min_requests,
            max_error_rate=_number((gates.get("errorRate") or {}).get("max"), "errorRate.max"),
            max_p99_seconds=_number(
                (gates.get("latency") or {}).get("maxP99Seconds"), "latency.maxP99Seconds"
            ),
            max_p99_ratio=_number(
                (gates.get("latency") or {}).get("maxP99Ratio"), "latency.maxP99Ratio"
            ),
            max_psi=_number((gates.get("drift") or {}).get("maxPSI"), "drift.maxPSI"),
            min_drift_rows=int(
                _number((gates.get("drift") or {}).get("minRows"), "drift.minRows")
                or DEFAULT_MIN_DRIFT_ROWS
            ),
            max_js_distance=_number(
                (gates.get("divergence") or {}).get("maxJSDistance"), "divergence.maxJSDistance"
            ),
        )


@dataclass(frozen=True)
class GateResult:
    """One gate's measurement against its threshold."""

    name: str
    value: float | None
    threshold: float
    verdict: Verdict

    def to_status(self) -> dict[str, Any]:
        """The gate as in `status.canary.lastAnalysis.gates[]` (no value when unmeasured)."""
        out: dict[str, Any] = {"name": self.name}
        if self.value is not None:
            out["value"] = round(self.value, 6)
        out["threshold"] = self.threshold
        out["verdict"] = self.verdict
        return out


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome of one analysis of the canary against the stable revision."""

    time: datetime
    verdict: Verdict
    gates: tuple[GateResult, ...]
    canary_requests: int
    message: str

    def to_status(self) -> dict[str, Any]:
        """`status.canary.lastAnalysis` as in the contract."""
        return {
            "time": rfc3339_seconds(self.time),
            "verdict": self.verdict,
            "message": self.message,
            "canaryRequests": self.canary_requests,
            "gates": [g.to_status() for g in self.gates],
        }

    def gate(self, name: str) -> GateResult | None:
        """The named gate's result, if that gate ran."""
        return next((g for g in self.gates if g.name == name), None)


def inconclusive(now: datetime, message: str, canary_requests: int = 0) -> AnalysisResult:
    """An analysis that could not judge at all (no baseline yet, metrics unreachable)."""
    return AnalysisResult(
        time=now, verdict="inconclusive", gates=(), canary_requests=canary_requests, message=message
    )


def _upper_gate(name: str, value: float | None, threshold: float) -> GateResult:
    """A gate that fails when the value exceeds its threshold; no value is inconclusive."""
    if value is None or math.isnan(value):
        return GateResult(name, None, threshold, "inconclusive")
    return GateResult(name, value, threshold, "fail" if value > threshold else "pass")


# Why a gate may have nothing to measure, said where the user will look.
_HINTS = {
    "latencyP99Ratio": "latencyP99Ratio (stable revision served no requests in the window)",
    "drift": "drift (no roost_feature_psi from the canary: is spec.model.profileUri set?)",
    "divergence": "divergence (no roost_predictions_total from canary or stable in the window)",
}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def evaluate(
    canary: RevisionWindow,
    stable: RevisionWindow | None,
    thresholds: GateThresholds,
    now: datetime,
    notes: Sequence[str] = (),
) -> AnalysisResult:
    """Judge the canary's window (and the stable's, for the relative gates).

    Verdict: inconclusive below `min_requests` canary requests whatever the gates say; else
    fail if any gate fails; else inconclusive if a gate lacked data; else pass. `notes` are
    appended to the message (e.g. pods that could not be scraped).
    """
    total = canary.total_requests
    hints = dict(_HINTS)
    gates = [
        GateResult(
            "minRequests",
            total,
            float(thresholds.min_requests),
            "pass" if total >= thresholds.min_requests else "inconclusive",
        )
    ]
    if thresholds.max_error_rate is not None:
        rate = canary.error_requests / total if total > 0 else None
        gates.append(_upper_gate("errorRate", rate, thresholds.max_error_rate))
    if thresholds.max_p99_seconds is not None:
        gates.append(_upper_gate("latencyP99", canary.p99_seconds, thresholds.max_p99_seconds))
    if thresholds.max_p99_ratio is not None:
        ratio = None
        if canary.p99_seconds is not None and stable is not None and stable.p99_seconds:
            ratio = canary.p99_seconds / stable.p99_seconds
        gates.append(_upper_gate("latencyP99Ratio", ratio, thresholds.max_p99_ratio))
    if thresholds.max_psi is not None:
        psi = max(canary.feature_psi.values()) if canary.feature_psi else None
        if psi is not None and canary.drift_rows < thresholds.min_drift_rows:
            hints["drift"] = (
                f"drift ({int(canary.drift_rows)} rows in the canary's drift windows,"
                f" {thresholds.min_drift_rows} needed: drift.minRows)"
            )
            psi = None
        gates.append(_upper_gate("drift", psi, thresholds.max_psi))
    if thresholds.max_js_distance is not None:
        distance = js_distance(canary.predictions, stable.predictions) if stable else None
        gates.append(_upper_gate("divergence", distance, thresholds.max_js_distance))

    failed = [g for g in gates if g.verdict == "fail"]
    unmeasured = [g.name for g in gates if g.verdict == "inconclusive"]
    verdict: Verdict
    if total < thresholds.min_requests:
        verdict = "inconclusive"
        message = f"{int(total)} canary requests in the window, {thresholds.min_requests} needed"
    elif failed:
        verdict = "fail"
        message = "; ".join(
            f"{g.name} {_fmt(g.value or 0.0)} > {_fmt(g.threshold)}" for g in failed
        )
    elif unmeasured:
        verdict = "inconclusive"
        message = "no data for " + ", ".join(hints.get(n, n) for n in unmeasured)
    else:
        verdict = "pass"
        message = f"all gates passed on {int(total)} canary requests"
    if notes:
        message = "; ".join([message, *notes])
    return AnalysisResult(
        time=now,
        verdict=verdict,
        gates=tuple(gates),
        canary_requests=round(total),
        message=message,
    )
