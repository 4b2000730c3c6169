"""Analysis plumbing with hand-worked numbers: parsing, deltas, quantiles, distances."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from roost_operator.gates import (
    Scrape,
    counter_deltas,
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
    assert window.counts().by_class()["5xx"] == 10
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
