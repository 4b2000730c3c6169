"""PrometheusSource against Debian's real Prometheus scraping loopback serving-metrics servers.

Prometheus runs with a static scrape config that adds the `namespace` and `pod` target labels
roost's scrape config adds in a cluster; the analysis then runs the same gates as the pods
source, on PromQL `increase()` / `histogram_quantile()` answers.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from metrics_pods import ServingPod
from roost_devcluster.net import free_port
from roost_operator.analysis import PrometheusSource
from roost_operator.gates import AnalysisResult, GateThresholds

pytestmark = pytest.mark.e2e

THRESHOLDS = GateThresholds(
    min_requests=50,
    max_error_rate=0.05,
    max_p99_seconds=0.5,
    max_p99_ratio=3.0,
    max_psi=0.25,
    max_js_distance=0.3,
)


@pytest.fixture
async def pods() -> AsyncIterator[tuple[ServingPod, ServingPod]]:
    canary, stable = ServingPod("canary1234"), ServingPod("stable5678")
    await canary.start()
    await stable.start()
    yield canary, stable
    await canary.stop()
    await stable.stop()


@pytest.fixture
def prometheus_url(pods: tuple[ServingPod, ServingPod], tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is needed: bash hack/system-deps.sh"
    canary, stable = pods
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "roost-serving",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{pod.port}"],
                        "labels": {"namespace": "ml", "pod": pod.target.name},
                    }
                    for pod in (canary, stable)
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def _until(source: PrometheusSource, promql: str, expected: float) -> None:
    """Poll (bounded) until Prometheus has ingested what the servers expose."""
    for _ in range(240):
        try:
            answer = await source.query(promql, datetime.now(UTC))
        except Exception:  # not up yet: connection refused or TSDB starting
            answer = []
        if answer and answer[0][1] == expected:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"prometheus never answered {expected} to {promql}")


async def _analyse(source: PrometheusSource, thresholds: GateThresholds) -> AnalysisResult:
    return await source.analyse(
        namespace="ml",
        name="iris",
        canary_revision="canary1234",
        stable_revision="stable5678",
        canary_pods=[],
        stable_pods=[],
        window_seconds=60,
        thresholds=thresholds,
        now=datetime.now(UTC),
    )


async def test_prometheus_source_judges_the_canary(
    pods: tuple[ServingPod, ServingPod], prometheus_url: str
) -> None:
    canary, stable = pods
    source = PrometheusSource(prometheus_url, min_window_seconds=0)
    try:
        # Two scrapes of the all-zero series first, so increase() sees the traffic start.
        await _until(source, 'count(count_over_time(roost_requests_total{code="200"}[1m]) >= 2)', 2)
        canary.serve(90, prediction="0")
        canary.serve(90, prediction="1")
        canary.serve(20, code="500")
        canary.drift({"f0": 0.05, "f1": 0.1}, rows=200)
        stable.serve(150, prediction="0")
        stable.serve(150, prediction="1")
        stable.drift({"f0": 0.01}, rows=300)
        await _until(source, 'sum(roost_requests_total{revision="canary1234"})', 200)
        await _until(source, 'sum(roost_requests_total{revision="stable5678"})', 300)

        result = await _analyse(source, THRESHOLDS)
        assert result.verdict == "fail", result.message
        gates = {g.name: g for g in result.gates}
        assert [n for n, g in gates.items() if g.verdict == "fail"] == ["errorRate"]
        # Both code series share scrape timestamps, so extrapolation cancels in the ratio.
        assert gates["errorRate"].value == pytest.approx(0.1, rel=1e-3)
        # All requests took 4 ms, in the (3 ms, 5 ms] bucket: 0.003 + 0.002 * 0.99.
        assert gates["latencyP99"].value == pytest.approx(0.00498, rel=1e-6)
        assert gates["latencyP99Ratio"].value == pytest.approx(1.0, rel=1e-6)
        assert gates["drift"].value == pytest.approx(0.1)
        assert gates["divergence"].value == pytest.approx(0.0, abs=1e-3)
        assert result.canary_requests >= 200  # increase() extrapolates a little past the data
        assert result.message.startswith("errorRate ")

        relaxed = await _analyse(source, GateThresholds(min_requests=50, max_error_rate=0.2))
        assert relaxed.verdict == "pass", relaxed.message
        starved = await _analyse(source, GateThresholds(min_requests=10_000, max_error_rate=0.2))
        assert starved.verdict == "inconclusive"
        assert "10000 needed" in starved.message
    finally:
        await source.close()


async def test_unreachable_prometheus_is_inconclusive() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    try:
        result = await _analyse(source, THRESHOLDS)
    finally:
        await source.close()
    assert result.verdict == "inconclusive"
    assert result.message.startswith(f"prometheus at {source.url}: ")
    assert result.gates == ()
