"""Serving metrics (docs/architecture.md, "Serving metrics"), on an injectable registry.

Every series carries ``model`` and ``revision``; request counts and latency also carry
``protocol`` (``rest`` or ``grpc``), so one pod's two listeners can be told apart while every
query that sums over a revision keeps counting both, and ``source``: ``client`` for user
traffic, ``validation`` for the operator's validation and warm-up requests (header
``Roost-Source: validation``), which canary analysis leaves out. Labelled children are
resolved once here, because ``Metric.labels(...)`` on every request costs more than the
observation itself. The series updated on every request are :mod:`roost_serving.fastmetrics`
families (the same exposition as prometheus_client's, for a fraction of the cost), and the
in-flight gauge reads the data plane's own count when scraped instead of being moved twice
per request.
Drift metrics (``roost_feature_*``, ``roost_predictions_total``) belong to monitor.py.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from roost_serving.fastmetrics import FastCounter, FastHistogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds; the queue-wait histogram's buckets (coarse: nothing judges it)."""

LATENCY_RATIO = 1.3**0.5
"""Neighbouring request-latency bucket bounds differ by this factor (about 1.14).

The operator's latency gate compares the canary's share of requests above ``r x L`` with the
stable's share above ``L`` for bucket bounds ``L``; it rounds a ratio margin ``r`` up to a power
of this factor, so ``maxRatio: 1.3`` (two buckets) is tested exactly and the smallest ratio the
gate can resolve is about 1.14 (docs/analysis.md)."""

REQUEST_BUCKETS = tuple(round(0.0005 * LATENCY_RATIO**k, 7) for k in range(76))
"""0.5 ms to about 10 s in steps of `LATENCY_RATIO`: the request-latency histogram."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Rows per onnxruntime run."""


class ServingMetrics:
    """The serving process's own series, labelled with its model and revision."""

    def __init__(self, registry: CollectorRegistry, model: str, revision: str) -> None:
        """Register every series on ``registry`` (a fresh one per test)."""
        labels = ("model", "revision")
        self._values = (model, revision)
        self._requests = FastCounter(
            "roost_requests",
            "Inference requests by protocol and HTTP status code (gRPC: the status that the "
            "error maps to, so error-rate queries read both protocols alike).",
            (*labels, "protocol", "source", "code"),
            registry,
        )
        self._duration = FastHistogram(
            "roost_request_duration_seconds",
            "Inference request latency, end to end inside the server.",
            (*labels, "protocol", "source"),
            REQUEST_BUCKETS,
            registry,
        )
        self._durations = {
            protocol: self._duration.labels(model, revision, protocol, "client")
            for protocol in ("rest", "grpc")
        }
        self.request_duration = self._durations["rest"]
        self.grpc_duration = self._durations["grpc"]
        self.queue_duration = FastHistogram(
            "roost_queue_duration_seconds",
            "Time a request waited in the batcher queue before its onnxruntime run started.",
            labels,
            LATENCY_BUCKETS,
            registry,
        ).labels(model, revision)
        self.batch_size = FastHistogram(
            "roost_batch_size",
            "Rows per onnxruntime run.",
            labels,
            BATCH_BUCKETS,
            registry,
        ).labels(model, revision)
        self.inflight = Gauge(
            "roost_inflight_requests",
            "Inference requests being handled now.",
            labels,
            registry=registry,
        ).labels(model, revision)
        self.load_duration = Gauge(
            "roost_model_load_duration_seconds",
            "Seconds it took to fetch, verify and load the model.",
            labels,
            registry=registry,
        ).labels(model, revision)
        self._info = Gauge(
            "roost_model_info",
            "The model being served (always 1).",
            (*labels, "uri", "sha256", "platform"),
            registry=registry,
        )
        # Pre-create the codes the server can answer, so error rates read 0 rather than
        # "no data" before the first error and the hot path is a dict lookup.
        self._codes = {
            (code, protocol, "client"): self._requests.labels(
                model, revision, protocol, "client", str(code)
            )
            for code in (200, 400, 404, 413, 500, 503, 504)
            for protocol in ("rest", "grpc")
        }
        # Overload, apart from failures: canary analysis can tell "too much traffic" from
        # "broken model" (shed requests are also counted under their code above).
        self._shed_family = Counter(
            "roost_requests_shed",
            "Inference requests refused at once because of overload, by reason.",
            (*labels, "reason"),
            registry=registry,
        )
        self._shed = {
            reason: self._shed_family.labels(model, revision, reason)
            for reason in ("queue_full", "deadline")
        }

    def track_inflight(self, count: Callable[[], float]) -> None:
        """Expose ``count()`` (the data plane's requests in flight) as the in-flight gauge."""
        self.inflight.set_function(count)

    def count_request(self, code: int, protocol: str = "rest", source: str = "client") -> None:
        """Count one finished inference request by protocol, source and (HTTP) status."""
        child = self._codes.get((code, protocol, source))
        if child is None:
            child = self._codes[code, protocol, source] = self._requests.labels(
                *self._values, protocol, source, str(code)
            )
        child.inc()

    def observe_duration(
        self, seconds: float, protocol: str = "rest", source: str = "client"
    ) -> None:
        """Record one request's latency by protocol and source."""
        child = self._durations.get(protocol if source == "client" else f"{protocol}/{source}")
        if child is None:
            child = self._durations[f"{protocol}/{source}"] = self._duration.labels(
                *self._values, protocol, source
            )
        child.observe(seconds)

    def count_shed(self, reason: str) -> None:
        """Count one request shed for ``reason`` (``queue_full``, ``deadline``, ...)."""
        child = self._shed.get(reason)
        if child is None:
            child = self._shed[reason] = self._shed_family.labels(*self._values, reason)
        child.inc()

    def model_loaded(self, uri: str, sha256: str, platform: str, seconds: float) -> None:
        """Record what was loaded and how long it took."""
        self._info.labels(*self._values, uri, sha256, platform).set(1)
        self.load_duration.set(seconds)
