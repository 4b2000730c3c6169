"""Loopback HTTP servers exposing roost's serving metrics, for analysis tests.

Each `ServingPod` is a real aiohttp server on 127.0.0.1 serving real Prometheus exposition
text from its own prometheus_client registry, with the metric names and labels of the
contract (docs/architecture.md, "Serving metrics").
"""

from __future__ import annotations

import socket
from itertools import count

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from roost_operator.pods import PodTarget
from roost_serving.metrics import REQUEST_BUCKETS

# The serving process's request-latency buckets.
LATENCY_BUCKETS = list(REQUEST_BUCKETS)
_uids = count()


class ServingPod:
    """A loopback HTTP server exposing the contract's serving metrics from its own registry."""

    def __init__(self, revision: str, model: str = "iris") -> None:
        self.revision = revision
        self.model = model
        self.uid = f"uid-{next(_uids)}"
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.restart()

    def restart(self) -> None:
        """A new process: every counter starts from zero again."""
        self.registry = CollectorRegistry()
        labels = ["model", "revision"]
        self.requests = Counter(
            "roost_requests_total", "requests", [*labels, "code"], registry=self.registry
        )
        self.latency = Histogram(
            "roost_request_duration_seconds",
            "latency",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "roost_predictions_total", "predictions", [*labels, "bin"], registry=self.registry
        )
        self.psi = Gauge("roost_feature_psi", "psi", [*labels, "feature"], registry=self.registry)
        self.rows = Gauge("roost_drift_window_rows", "rows", labels, registry=self.registry)
        self.rows.labels(self.model, self.revision).set(0)
        self.bins = Counter(
            "roost_feature_bin_total", "bins", [*labels, "feature", "bin"], registry=self.registry
        )
        self.reference = Gauge(
            "roost_feature_reference_share",
            "ref",
            [*labels, "feature", "bin"],
            registry=self.registry,
        )
        # Series exist from the start at zero, as once the server has answered its first request.
        for code in ("200", "400", "500"):
            self.requests.labels(self.model, self.revision, code)
        self.latency.labels(self.model, self.revision)
        for b in ("0", "1"):
            self.predictions.labels(self.model, self.revision, b)

    def serve(
        self, n: int, *, code: str = "200", latency: float = 0.004, prediction: str = "0"
    ) -> None:
        """Record `n` infer requests as the serving process would."""
        for _ in range(n):
            self.requests.labels(self.model, self.revision, code).inc()
            self.latency.labels(self.model, self.revision).observe(latency)
            if code == "200":
                self.predictions.labels(self.model, self.revision, prediction).inc()

    def inputs(self, feature: str, counts: list[int], reference: list[float]) -> None:
        """Rows per bin of one feature, and the profile's shares of those bins."""
        for b, (n, share) in enumerate(zip(counts, reference, strict=True)):
            self.bins.labels(self.model, self.revision, feature, str(b)).inc(n)
            self.reference.labels(self.model, self.revision, feature, str(b)).set(share)

    def drift(self, psi: dict[str, float], rows: int) -> None:
        for feature, value in psi.items():
            self.psi.labels(self.model, self.revision, feature).set(value)
        self.rows.labels(self.model, self.revision).set(rows)

    async def start(self) -> None:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def target(self) -> PodTarget:
        return PodTarget(
            name=f"iris-{self.revision}-{self.uid}", uid=self.uid, ip="127.0.0.1", port=self.port
        )
