"""PrometheusSource against Debian's real Prometheus scraping loopback serving-metrics servers.

Prometheus runs with a static scrape config that adds the `namespace` and `pod` target labels
roost's scrape config adds in a cluster; the analysis then runs the same gates as the pods
source, on PromQL `increase()` / `histogram_quantile()` answers.
"""

from __future__ import annotations

import asyncio
import re
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
from roost_operator.gates import AnalysisResult
from roost_operator.spec import AnalysisSpec, parse_spec

pytestmark = pytest.mark.e2e


def _spec(margin: float = 0.02, min_requests: int = 50) -> AnalysisSpec:
    analysis = {
        "alpha": 0.01,
        "minRequests": min_requests,
        "gates": {
            "errorRate": {"margin": margin},
            "latency": {"maxRatio": 1.3, "maxP99Seconds": 0.5},
            "divergence": {"margin": 0.2},
        },
    }
    raw = {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": analysis}}
    return parse_spec(raw).rollout.analysis


SPEC = _spec()


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


async def _analyse(source: PrometheusSource, spec: AnalysisSpec) -> AnalysisResult:
    return await source.analyse(
        namespace="ml",
        name="iris",
        canary_revision="canary1234",
        stable_revision="stable5678",
        canary_pods=[],
        stable_pods=[],
        window_seconds=60,
        spec=spec,
        evidence=None,
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
        canary.serve(70, prediction="0")
        canary.serve(70, prediction="1")
        canary.serve(60, code="500")
        canary.serve(10, code="400")  # client errors: counted, never judged
        stable.serve(150, prediction="0")
        stable.serve(150, prediction="1")
        await _until(source, 'sum(roost_requests_total{revision="canary1234"})', 210)
        await _until(source, 'sum(roost_requests_total{revision="stable5678"})', 300)

        result = await _analyse(source, SPEC)
        # One interval: the sequential tests give no verdict before six (their spread floor).
        assert result.verdict == "inconclusive", result.message
        gates = {g.name: g for g in result.gates}
        # Both code series share scrape timestamps, so extrapolation cancels in the shares.
        assert gates["errorRate"].estimate == pytest.approx(60 / 210, rel=1e-3)
        # The words count what increase() says: 10 4xx of 210, scaled by its extrapolation
        # past the samples (by up to half a scrape interval at each end: 1.0 to 1.5 seen here
        # when the series span only a few scrapes), rounded.
        counted = re.search(r"(\d+) 4xx of (\d+)", gates["errorRate"].words)
        assert counted is not None, gates["errorRate"].words
        client_errors, total = int(counted[1]), int(counted[2])
        assert 210 <= total <= 2 * 210
        assert client_errors / total == pytest.approx(10 / 210, abs=1 / total)
        # All requests took 4 ms: the legacy ceiling reads the interval's p99 from the buckets.
        p99 = gates["latencyP99"].estimate
        assert p99 is not None
        assert 0.003 < p99 < 0.005
        assert gates["divergence"].effect == pytest.approx(0.0, abs=1e-3)
        assert result.canary_requests >= 210  # increase() extrapolates a little past the data
        assert result.evidence is not None
        assert "until" in result.evidence  # the next interval starts where this one ended

        relaxed = await _analyse(source, _spec(margin=0.5))
        assert relaxed.verdict != "fail", relaxed.message
        starved = await _analyse(source, _spec(margin=0.5, min_requests=10_000))
        assert starved.verdict == "inconclusive"
        assert "10000 needed" in starved.message
    finally:
        await source.close()


async def test_unreachable_prometheus_is_inconclusive() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    try:
        result = await _analyse(source, SPEC)
    finally:
        await source.close()
    assert result.verdict == "inconclusive"
    assert result.message.startswith(f"prometheus at {source.url}: ")
    assert result.gates == ()
