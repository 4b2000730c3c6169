"""Operator metrics (docs/architecture.md, "Operator process"), on a registry of their own.

Per-ModelDeployment series (weight, gate values and thresholds, analyses) are removed when the
ModelDeployment goes away, so a long-running operator's label sets stay bounded by what exists.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from roost_operator.gates import AnalysisResult

CONDITIONS = ("Ready", "Reconciling", "Stalled")
STATUSES = ("True", "False", "Unknown")


class OperatorMetrics:
    """Every operator metric; one instance per process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.ready = threading.Event()
        """Set once the operator has started up; `/readyz` answers 200 from then on."""
        r = self.registry
        self.reconciliations = Counter(
            "roost_operator_reconciliations",
            "Reconciliations of ModelDeployments by result (success, error, invalid).",
            ["result"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "roost_operator_reconcile_duration_seconds",
            "Time one reconciliation took, API calls and analysis included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.modeldeployments = Gauge(
            "roost_operator_modeldeployments",
            "ModelDeployments by condition type and status.",
            ["condition", "status"],
            registry=r,
        )
        self.canary_weight = Gauge(
            "roost_operator_canary_weight",
            "Current canary traffic weight in percent (0 without a canary).",
            ["namespace", "name"],
            registry=r,
        )
        self.gate_value = Gauge(
            "roost_operator_gate_value",
            "Value the last analysis measured for a gate.",
            ["namespace", "name", "gate"],
            registry=r,
        )
        self.gate_threshold = Gauge(
            "roost_operator_gate_threshold",
            "Threshold of a gate from spec.rollout.analysis.",
            ["namespace", "name", "gate"],
            registry=r,
        )
        self.analysis = Counter(
            "roost_operator_analysis",
            "Canary analyses by verdict.",
            ["namespace", "name", "verdict"],
            registry=r,
        )
        self.rollouts = Counter(
            "roost_operator_rollouts",
            "Finished rollouts by outcome (Promoted, RolledBack, Aborted, Superseded).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("Promoted", "RolledBack", "Aborted", "Superseded"):
            self.rollouts.labels(outcome)
        for result in ("success", "error", "invalid"):
            self.reconciliations.labels(result)
        self._lock = threading.Lock()
        self._conditions: dict[tuple[str, str], dict[str, str]] = {}
        self._gates: dict[tuple[str, str], set[str]] = {}
        self._recount()

    def _recount(self) -> None:
        tally: Tally[tuple[str, str]] = Tally()
        for conds in self._conditions.values():
            for kind, status in conds.items():
                tally[(kind, status)] += 1
        for kind in CONDITIONS:
            for status in STATUSES:
                self.modeldeployments.labels(kind, status).set(tally[(kind, status)])

    def observe_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Record one ModelDeployment's conditions and canary weight after a reconciliation."""
        conds = {
            str(c.get("type")): str(c.get("status"))
            for c in status.get("conditions") or []
            if c.get("type") in CONDITIONS
        }
        canary = status.get("canary") or {}
        with self._lock:
            self._conditions[(namespace, name)] = conds
            self._recount()
        self.canary_weight.labels(namespace, name).set(float(canary.get("weight") or 0))

    def observe_analysis(self, namespace: str, name: str, result: AnalysisResult) -> None:
        """Record an analysis: its verdict and every gate's value and threshold."""
        self.analysis.labels(namespace, name, result.verdict).inc()
        seen = self._gates.setdefault((namespace, name), set())
        for gate in result.gates:
            seen.add(gate.name)
            if gate.margin is not None:
                self.gate_threshold.labels(namespace, name, gate.name).set(gate.margin)
            value = gate.estimate if gate.estimate is not None else gate.effect
            if value is not None and math.isfinite(value):
                self.gate_value.labels(namespace, name, gate.name).set(value)

    def observe_outcomes(self, outcomes: Iterable[str]) -> None:
        """Count finished rollouts (new `status.history` entries)."""
        for outcome in outcomes:
            self.rollouts.labels(outcome).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop the series of a deleted ModelDeployment."""
        with self._lock:
            self._conditions.pop((namespace, name), None)
            self._recount()
        for metric in (self.canary_weight,):
            _remove(metric, (namespace, name))
        for gate in self._gates.pop((namespace, name), set()):
            _remove(self.gate_value, (namespace, name, gate))
            _remove(self.gate_threshold, (namespace, name, gate))
        for verdict in ("pass", "fail", "inconclusive"):
            _remove(self.analysis, (namespace, name, verdict))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve `/metrics` and the readiness probe `/readyz` on `addr:port` (a thread).

        `/readyz` answers 503 until `ready` is set (the operator's startup is done), then 200.
        Liveness is kopf's own `/healthz` on the health port: a pod that is alive but not yet
        ready is left alone instead of restarted, and takes no scrapes it cannot answer.
        """
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") != "/readyz":
                return metrics(environ, start_response)
            ok = self.ready.is_set()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"ready\n" if ok else b"starting\n"]

        server = make_server(addr, port, app, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""


def _remove(metric: Gauge | Counter, labels: Sequence[str]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def new_outcomes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Outcomes of history entries in `after` that `before` did not have."""

    def key(entry: Mapping[str, Any]) -> tuple[str, str, str]:
        return (str(entry.get("revision")), str(entry.get("outcome")), str(entry.get("finishedAt")))

    old = {key(e) for e in before.get("history") or []}
    return [str(e.get("outcome")) for e in after.get("history") or [] if key(e) not in old]
