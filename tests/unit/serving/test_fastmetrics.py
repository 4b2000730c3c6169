"""roost_serving.fastmetrics: the same exposition as prometheus_client's own families."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from roost_serving.fastmetrics import FastCounter, FastHistogram
from roost_serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, REQUEST_BUCKETS, ServingMetrics


def _exposition(registry: CollectorRegistry) -> str:
    # _created holds each child's creation time, which differs between the two registries.
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


@pytest.mark.parametrize("buckets", [REQUEST_BUCKETS, LATENCY_BUCKETS, BATCH_BUCKETS])
def test_histogram_exposition_equals_prometheus_client(buckets: tuple[float, ...]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ("model", "revision", "protocol")
    fast = FastHistogram("roost_x_seconds", "Help text.", labels, buckets, ours)
    real = Histogram("roost_x_seconds", "Help text.", labels, buckets=buckets, registry=theirs)
    values = [0.0, 0.0004, 0.0005, 0.00051, 0.003, 1.0, 7.5, 64.0, 1e6, buckets[3]]
    for i, value in enumerate(values):
        protocol = "rest" if i % 3 else "grpc"
        fast.labels("m", "r1", protocol).observe(value)
        real.labels("m", "r1", protocol).observe(value)
    fast.labels("m", "r2", "rest")  # a child never observed is exposed with zeros
    real.labels("m", "r2", "rest")
    assert _exposition(ours) == _exposition(theirs)
    assert ours.get_sample_value(
        "roost_x_seconds_count", {"model": "m", "revision": "r1", "protocol": "rest"}
    ) == theirs.get_sample_value(
        "roost_x_seconds_count", {"model": "m", "revision": "r1", "protocol": "rest"}
    )


def test_counter_exposition_equals_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastCounter("roost_things", "Things.", ("model", "code"), ours)
    real = Counter("roost_things", "Things.", ("model", "code"), registry=theirs)
    for code, amount in (("200", 1.0), ("500", 2.5), ("200", 1.0)):
        fast.labels("m", code).inc(amount)
        real.labels("m", code).inc(amount)
    fast.labels("m", "404")
    real.labels("m", "404")
    assert _exposition(ours) == _exposition(theirs)
    with pytest.raises(ValueError, match="non-negative"):
        fast.labels("m", "200").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        fast.labels("only-one")


def test_observations_from_two_threads_are_all_counted() -> None:
    registry = CollectorRegistry()
    child = FastHistogram("roost_t", "T.", ("model",), (1.0, 2.0), registry).labels("m")

    def observe() -> None:
        for _ in range(20000):
            child.observe(1.5)

    threads = [threading.Thread(target=observe) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get_sample_value("roost_t_count", {"model": "m"}) == 40000
    assert registry.get_sample_value("roost_t_bucket", {"model": "m", "le": "1.0"}) == 0
    assert registry.get_sample_value("roost_t_bucket", {"model": "m", "le": "2.0"}) == 40000


def test_inflight_gauge_reads_the_tracked_count() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry, "m", "r1")
    inside = [3]
    metrics.track_inflight(lambda: inside[0])
    labels = {"model": "m", "revision": "r1"}
    assert registry.get_sample_value("roost_inflight_requests", labels) == 3
    inside[0] = 0
    assert registry.get_sample_value("roost_inflight_requests", labels) == 0
