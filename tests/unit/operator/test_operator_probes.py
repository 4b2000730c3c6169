"""The operator's readiness probe is its own endpoint, apart from kopf's liveness `/healthz`."""

from __future__ import annotations

import urllib.error
import urllib.request

from roost_devcluster.net import free_port
from roost_devcluster.waiting import wait_for
from roost_operator.metrics import OperatorMetrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readyz_is_503_until_started_then_200_and_metrics_still_served() -> None:
    metrics = OperatorMetrics()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: _get(f"{base}/readyz")[0] == 503, 10)
    metrics.ready.set()
    assert _get(f"{base}/readyz") == (200, "ready\n")
    status, body = _get(f"{base}/metrics")
    assert status == 200
    assert "roost_operator_reconciliations_total" in body
