"""Gate maths with hand-worked numbers: parsing, deltas, quantiles, distances, verdicts."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from roost_operator.gates import (
    GateResult,
    GateThresholds,
    RevisionWindow,
    Scrape,
    counter_deltas,
    evaluate,
    histogram_quantile,
    js_distance,
    parse_exposition,
    series_key,
    weighted_feature_psi,
    window_from_samples,
)
from scipy.spatial.distance import jensenshannon

NOW = datetime(2026, 3, 1, 12, 0, 5, 123456, tzinfo=UTC)
INF = "+Inf"


class TestHistogramQuantile:
    buckets = {"0.1": 10.0, "0.5": 60.0, "1.0": 100.0, INF: 100.0}

    def test_p99_interpolates_inside_the_bucket(self) -> None:
        # rank 99 lies in (0.5, 1]: 0.5 + 0.5 * (99 - 60) / 40
        assert histogram_quantile(0.99, self.buckets) == pytest.approx(0.9875)

    def test_median(self) -> None:
        # rank 50 lies in (0.1, 0.5]: 0.1 + 0.4 * (50 - 10) / 50
        assert histogram_quantile(0.5, self.buckets) == pytest.approx(0.42)

    def test_lowest_bucket_starts_at_zero(self) -> None:
        assert histogram_quantile(0.05, self.buckets) == pytest.approx(0.05)

    def test_rank_in_inf_bucket_answers_highest_finite_bound(self) -> None:
        assert histogram_quantile(0.99, {0.1: 10.0, math.inf: 100.0}) == 0.1

    def test_no_observations_or_no_inf_bucket_is_nan(self) -> None:
        assert math.isnan(histogram_quantile(0.99, {"0.1": 0.0, INF: 0.0}))
        assert math.isnan(histogram_quantile(0.99, {"0.1": 5.0, "1": 5.0}))

    def test_non_monotonic_counts_are_made_monotonic(self) -> None:
        # 10, 8, 20 becomes 10, 10, 20: rank 10 is reached in the first bucket.
        assert histogram_quantile(0.5, {"0.1": 10.0, "0.5": 8.0, INF: 20.0}) == pytest.approx(0.1)

    def test_out_of_range_q(self) -> None:
        assert histogram_quantile(1.5, self.buckets) == math.inf
        assert histogram_quantile(-1, self.buckets) == -math.inf


class TestJSDistance:
    def test_identical_and_disjoint(self) -> None:
        assert js_distance({"a": 3, "b": 1}, {"a": 30, "b": 10}) == pytest.approx(0.0, abs=1e-9)
        assert js_distance({"a": 1}, {"b": 7}) == pytest.approx(1.0)

    def test_hand_worked(self) -> None:
        # p = (.5, .5), q = (1, 0), m = (.75, .25):
        # KL(p||m) = .5 log2(.5/.75) + .5 log2(.5/.25) = 0.207519
        # KL(q||m) = log2(1/.75) = 0.415037; JS = 0.311278; distance = sqrt = 0.557923
        assert js_distance({"a": 1, "b": 1}, {"a": 4}) == pytest.approx(0.557923, abs=1e-6)
        assert js_distance({"a": 1, "b": 1}, {"a": 4}) == pytest.approx(
            jensenshannon([0.5, 0.5], [1.0, 0.0], base=2)
        )

    def test_empty_side_is_nan(self) -> None:
        assert math.isnan(js_distance({}, {"a": 1}))
        assert math.isnan(js_distance({"a": 0}, {"a": 1}))


def _scrape(counters: dict[str, float], gauges: dict[str, float] | None = None) -> Scrape:
    return Scrape(
        counters={series_key(k, {}): v for k, v in counters.items()},
        gauges={series_key(k, {}): v for k, v in (gauges or {}).items()},
    )


class TestCounterDeltas:
    def test_increase_and_new_series(self) -> None:
        deltas, reset = counter_deltas(
            _scrape({"a_total": 10, "b_total": 5}),
            _scrape({"a_total": 15, "b_total": 5, "c_total": 2}),
        )
        assert not reset
        assert deltas == {
            series_key("a_total", {}): 5,
            series_key("b_total", {}): 0,
            series_key("c_total", {}): 2,
        }

    def test_decrease_resets_the_whole_scrape(self) -> None:
        # b went up, but the process restarted (a went down): b's 7 counts from zero too.
        deltas, reset = counter_deltas(
            _scrape({"a_total": 10, "b_total": 5}), _scrape({"a_total": 3, "b_total": 7})
        )
        assert reset
        assert deltas[series_key("a_total", {})] == 3
        assert deltas[series_key("b_total", {})] == 7

    def test_vanished_series_is_a_reset(self) -> None:
        _, reset = counter_deltas(_scrape({"a_total": 10, "b_total": 1}), _scrape({"a_total": 12}))
        assert reset

    def test_changed_created_timestamp_is_a_reset(self) -> None:
        deltas, reset = counter_deltas(
            _scrape({"a_total": 10}, {"a_created": 1000.0}),
            _scrape({"a_total": 25}, {"a_created": 2000.0}),
        )
        assert reset
        assert deltas[series_key("a_total", {})] == 25


def _registry(
    codes: dict[str, int],
    latencies: list[float],
    predictions: dict[str, int],
    psi: dict[str, float],
    rows: int,
) -> str:
    reg = CollectorRegistry()
    labels = {"model": "iris", "revision": "abc"}
    requests = Counter("roost_requests_total", "r", ["model", "revision", "code"], registry=reg)
    for code, n in codes.items():
        requests.labels(code=code, **labels).inc(n)
    hist = Histogram(
        "roost_request_duration_seconds",
        "d",
        ["model", "revision"],
        buckets=[0.1, 0.5, 1.0],
        registry=reg,
    )
    for latency in latencies:
        hist.labels(**labels).observe(latency)
    preds = Counter("roost_predictions_total", "p", ["model", "revision", "bin"], registry=reg)
    for b, n in predictions.items():
        preds.labels(bin=b, **labels).inc(n)
    gauge = Gauge("roost_feature_psi", "psi", ["model", "revision", "feature"], registry=reg)
    for feature, value in psi.items():
        gauge.labels(feature=feature, **labels).set(value)
    Gauge("roost_drift_window_rows", "rows", ["model", "revision"], registry=reg).labels(
        **labels
    ).set(rows)
    return generate_latest(reg).decode()


def test_parse_exposition_and_window_from_real_exposition() -> None:
    text = _registry(
        {"200": 90, "500": 10},
        [0.05] * 10 + [0.3] * 50 + [0.7] * 40,
        {"setosa": 60, "virginica": 40},
        {"f0": 0.2, "f1": 0.05},
        500,
    )
    scrape = parse_exposition(text)
    assert scrape.counters[
        series_key("roost_requests_total", {"model": "iris", "revision": "abc", "code": "500"})
    ] == (10)
    # `_created` samples are not cumulative.
    assert not any(k[0].endswith("_created") for k in scrape.counters)
    window = window_from_samples([scrape.counters], [scrape.gauges])
    assert window.requests == {"200": 90, "500": 10}
    assert window.error_requests == 10
    # Buckets 10 / 60 / 100 / 100 as in TestHistogramQuantile.
    assert window.p99_seconds == pytest.approx(0.9875)
    assert window.predictions == {"setosa": 60, "virginica": 40}
    assert window.feature_psi == pytest.approx({"f0": 0.2, "f1": 0.05})
    assert window.drift_rows == 500


def test_weighted_feature_psi() -> None:
    # f0 = (0.1 * 1000 + 0.5 * 3000) / 4000 = 0.4; f1 = (0.4 * 1000 + 0.1 * 3000) / 4000 = 0.175
    # The pod with an empty window is left out.
    psi = weighted_feature_psi(
        [({"f0": 0.1, "f1": 0.4}, 1000), ({"f0": 0.5, "f1": 0.1}, 3000), ({"f0": 9.0}, 0)]
    )
    assert psi == pytest.approx({"f0": 0.4, "f1": 0.175})
    assert weighted_feature_psi([({"f0": 1.0}, 0)]) == {}


CONTRACT_ANALYSIS = {
    "source": "pods",
    "interval": "10s",
    "minRequests": 50,
    "failureLimit": 2,
    "gates": {
        "errorRate": {"max": 0.05},
        "latency": {"maxP99Seconds": 0.5, "maxP99Ratio": 3.0},
        "drift": {"maxPSI": 0.25},
        "divergence": {"maxJSDistance": 0.3},
    },
}


def test_thresholds_from_spec() -> None:
    t = GateThresholds.from_spec(CONTRACT_ANALYSIS)
    assert t == GateThresholds(
        min_requests=50,
        max_error_rate=0.05,
        max_p99_seconds=0.5,
        max_p99_ratio=3.0,
        max_psi=0.25,
        max_js_distance=0.3,
    )
    assert GateThresholds.from_spec(None) == GateThresholds()
    assert GateThresholds.from_spec({"gates": {"latency": {"maxP99Ratio": 2}}}).max_p99_ratio == 2
    with pytest.raises(ValueError, match=r"errorRate\.max"):
        GateThresholds.from_spec({"gates": {"errorRate": {"max": "5%"}}})


STABLE = RevisionWindow(
    requests={"200": 400},
    # buckets 50 / 100 / 100 / 100: p99 = 0.1 + 0.4 * 49 / 50 = 0.492
    p99_seconds=histogram_quantile(0.99, {"0.1": 50, "0.5": 100, "1": 100, INF: 100}),
    predictions={"a": 50, "b": 50},
)


def _canary(**overrides: object) -> RevisionWindow:
    base: dict[str, object] = {
        "requests": {"200": 95, "500": 5},
        "p99_seconds": 0.45,
        "predictions": {"a": 55, "b": 45},
        "feature_psi": {"f0": 0.1, "f1": 0.2},
        "drift_rows": 400,
    }
    base.update(overrides)
    return RevisionWindow(**base)  # type: ignore[arg-type]


def _thresholds(**overrides: Any) -> GateThresholds:
    base = GateThresholds.from_spec(CONTRACT_ANALYSIS)
    return dataclasses.replace(base, **overrides)


def test_pass_with_every_gate() -> None:
    result = evaluate(_canary(), STABLE, _thresholds(), NOW)
    assert result.verdict == "pass"
    assert result.canary_requests == 100
    values = {g.name: g.value for g in result.gates}
    assert values["errorRate"] == pytest.approx(0.05)  # equal to the threshold still passes
    assert values["latencyP99"] == pytest.approx(0.45)
    assert values["latencyP99Ratio"] == pytest.approx(0.45 / 0.492)
    assert values["drift"] == pytest.approx(0.2)
    assert values["divergence"] == pytest.approx(
        jensenshannon([0.55, 0.45], [0.5, 0.5], base=2), abs=1e-9
    )
    assert [g.verdict for g in result.gates] == ["pass"] * 6


@pytest.mark.parametrize(
    ("canary", "gate", "value"),
    [
        (_canary(requests={"200": 90, "503": 10}), "errorRate", 0.1),
        (_canary(p99_seconds=0.9875), "latencyP99", 0.9875),
        (_canary(p99_seconds=1.5), "latencyP99Ratio", 1.5 / 0.492),
        (_canary(feature_psi={"f0": 0.1, "f1": 0.8}), "drift", 0.8),
        (_canary(predictions={"a": 100}), "divergence", 0.557923),
    ],
)
def test_each_gate_fails(canary: RevisionWindow, gate: str, value: float) -> None:
    # latencyP99 is off for the ratio case so only the gate under test fails.
    off = {"max_p99_seconds": None} if gate == "latencyP99Ratio" else {}
    result = evaluate(canary, STABLE, _thresholds(**off), NOW)
    assert result.verdict == "fail"
    failed = [g for g in result.gates if g.verdict == "fail"]
    assert [g.name for g in failed] == [gate]
    assert failed[0].value == pytest.approx(value, abs=1e-6)
    assert result.message.startswith(f"{gate} ")


def test_few_requests_are_inconclusive_even_when_a_gate_fails() -> None:
    result = evaluate(_canary(requests={"500": 40}), STABLE, _thresholds(), NOW)
    assert result.verdict == "inconclusive"
    assert result.gate("minRequests") is not None
    assert result.gate("errorRate").verdict == "fail"  # type: ignore[union-attr]
    assert result.message.startswith("40 canary requests in the window, 50 needed")


def test_missing_data_is_inconclusive_not_pass() -> None:
    result = evaluate(_canary(feature_psi={}), STABLE, _thresholds(), NOW)
    assert result.verdict == "inconclusive"
    assert result.gate("drift") == GateResult("drift", None, 0.25, "inconclusive")
    assert "profileUri" in result.message


def test_ratio_without_stable_traffic_is_inconclusive() -> None:
    result = evaluate(_canary(), None, _thresholds(max_js_distance=None), NOW)
    assert result.verdict == "inconclusive"
    assert result.gate("latencyP99Ratio").verdict == "inconclusive"  # type: ignore[union-attr]


def test_no_gates_passes_on_enough_requests() -> None:
    result = evaluate(_canary(), STABLE, GateThresholds(min_requests=100), NOW)
    assert result.verdict == "pass"
    assert [g.name for g in result.gates] == ["minRequests"]


def test_to_status_shape() -> None:
    later = NOW.astimezone(timezone(timedelta(hours=2)))
    result = evaluate(_canary(requests={"200": 90, "503": 10}), STABLE, _thresholds(), later)
    status = result.to_status()
    assert status["time"] == "2026-03-01T12:00:05Z"
    assert status["verdict"] == "fail"
    assert status["canaryRequests"] == 100
    assert status["gates"][0] == {
        "name": "minRequests",
        "value": 100.0,
        "threshold": 50.0,
        "verdict": "pass",
    }
    assert status["gates"][1] == {
        "name": "errorRate",
        "value": 0.1,
        "threshold": 0.05,
        "verdict": "fail",
    }
    assert all(isinstance(g["threshold"], float) for g in status["gates"])
    unmeasured = evaluate(_canary(feature_psi={}), STABLE, _thresholds(), NOW).to_status()
    assert "value" not in next(g for g in unmeasured["gates"] if g["name"] == "drift")


def test_drift_abstains_until_the_windows_hold_min_rows() -> None:
    # 30 rows of 10 bins: PSI ~ 0.3 from sampling noise alone, not evidence of drift.
    few = evaluate(_canary(feature_psi={"f0": 0.6}, drift_rows=30), STABLE, _thresholds(), NOW)
    gate = few.gate("drift")
    assert gate is not None
    assert gate.verdict == "inconclusive"
    assert few.verdict == "inconclusive"
    assert "drift (30 rows in the canary's drift windows, 200 needed" in few.message
    enough = evaluate(_canary(feature_psi={"f0": 0.6}, drift_rows=200), STABLE, _thresholds(), NOW)
    assert enough.verdict == "fail"
    relaxed = _thresholds(min_drift_rows=20)
    assert (
        evaluate(_canary(feature_psi={"f0": 0.6}, drift_rows=30), STABLE, relaxed, NOW).verdict
        == "fail"
    )


def test_drift_min_rows_comes_from_the_spec() -> None:
    spec = {"gates": {"drift": {"maxPSI": 0.2, "minRows": 500}}}
    assert GateThresholds.from_spec(spec).min_drift_rows == 500
    assert GateThresholds.from_spec({"gates": {"drift": {"maxPSI": 0.2}}}).min_drift_rows == 200
