"""PodsSource against real HTTP servers on loopback serving real Prometheus exposition text.

Each analysis adds one interval (the deltas since the previous scrape) to the evidence the
previous one returned, exactly as the operator does through ``status.canary.evidence``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from metrics_pods import ServingPod
from roost_operator.analysis import PodsSource
from roost_operator.gates import AnalysisResult
from roost_operator.sequential import MIN_INTERVALS
from roost_operator.spec import AnalysisSpec, parse_spec
from roost_operator.verdicts import GateVerdict

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GATES = {
    "errorRate": {"margin": 0.02},
    "latency": {"maxRatio": 1.3, "maxP99Seconds": 0.5},
    "drift": {"margin": 0.1},
    "divergence": {"margin": 0.1},
}


def _spec(gates: dict[str, Any] | None = None, **analysis: Any) -> AnalysisSpec:
    raw = {"alpha": 0.01, "minRequests": 50, "gates": GATES if gates is None else gates}
    return parse_spec(
        {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": raw | analysis}}
    ).rollout.analysis


SPEC = _spec()
PodFactory = Callable[[str], Awaitable[ServingPod]]


@pytest.fixture
async def pod() -> AsyncIterator[PodFactory]:
    started: list[ServingPod] = []

    async def start(revision: str) -> ServingPod:
        p = ServingPod(revision)
        await p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        await p.stop()


@pytest.fixture
async def source() -> AsyncIterator[PodsSource]:
    s = PodsSource(timeout_seconds=2.0)
    yield s
    await s.close()


class Analyst:
    """Runs analyses the way the operator does, carrying the evidence through JSON."""

    def __init__(self, source: PodsSource, spec: AnalysisSpec = SPEC) -> None:
        self.source, self.spec = source, spec
        self.evidence: dict[str, Any] | None = None

    async def __call__(self, canary: list[ServingPod], stable: list[ServingPod]) -> AnalysisResult:
        result = await self.source.analyse(
            namespace="default",
            name="iris",
            canary_revision="canary",
            stable_revision="stable",
            canary_pods=[p.target for p in canary],
            stable_pods=[p.target for p in stable],
            window_seconds=10,
            spec=self.spec,
            evidence=self.evidence,
            now=NOW,
        )
        if result.evidence is not None:
            self.evidence = json.loads(json.dumps(result.evidence))
        return result


async def _baseline(analyst: Analyst, canary: ServingPod, stable: ServingPod) -> None:
    # Some traffic before the baseline must not count.
    canary.serve(500, code="500")
    stable.serve(100)
    result = await analyst([canary], [stable])
    assert result.verdict == "inconclusive"
    assert "collecting baseline" in result.message


def _gate(result: AnalysisResult, name: str) -> GateVerdict:
    gate = result.gate(name)
    assert gate is not None, name
    return gate


def _balanced(pod: ServingPod, n: int, **kwargs: Any) -> None:
    pod.serve(n // 2, prediction="0", **kwargs)
    pod.serve(n - n // 2, prediction="1", **kwargs)


REF = [0.25, 0.25, 0.25, 0.25]


def _healthy(canary: ServingPod, stable: ServingPod, n: int = 3000) -> None:
    _balanced(canary, n)
    canary.inputs("f0", [n // 4] * 4, REF)
    _balanced(stable, 3 * n)


async def test_identical_traffic_passes_once_the_evidence_suffices(
    pod: PodFactory, source: PodsSource
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source)
    await _baseline(analyst, canary, stable)
    _healthy(canary, stable)
    first = await analyst([canary], [stable])
    # The 500 errors before the baseline are not counted.
    assert first.canary_requests == 3000
    # The latency test needs the stable's p99 from an earlier interval: not sure yet.
    assert _gate(first, "latency").verdict == "inconclusive"
    assert first.verdict == "inconclusive"
    # Latency evidence starts with the second interval; every test needs MIN_INTERVALS.
    for _ in range(MIN_INTERVALS):
        _healthy(canary, stable)
        result = await analyst([canary], [stable])
    assert result.verdict == "pass", result.message
    total = 3000 * (MIN_INTERVALS + 1)
    assert result.canary_requests == total  # over the whole rollout so far
    assert analyst.evidence is not None
    assert analyst.evidence["requests"]["canary"]["2xx"] == total
    errors = _gate(result, "errorRate")
    assert errors.estimate == 0
    assert errors.upper is not None
    assert errors.upper < 0.02
    assert "within margin" in errors.words
    assert _gate(result, "divergence").effect == pytest.approx(0.0, abs=1e-9)


def _errors(canary: ServingPod) -> None:
    _balanced(canary, 2400)
    canary.serve(600, code="500")


def _slow(canary: ServingPod) -> None:
    _balanced(canary, 3000, latency=0.2)


def _drifted(canary: ServingPod) -> None:
    _balanced(canary, 3000)
    canary.inputs("f0", [2400, 200, 200, 200], REF)


def _constant(canary: ServingPod) -> None:
    canary.serve(3000, prediction="1")


@pytest.mark.parametrize(
    ("gate", "traffic"),
    [("errorRate", _errors), ("latency", _slow), ("drift", _drifted), ("divergence", _constant)],
)
async def test_each_gate_fails_with_confidence(
    pod: PodFactory, source: PodsSource, gate: str, traffic: Callable[[ServingPod], None]
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(
        source,
        _spec({k: v for k, v in GATES.items() if k != "latency"} | {"latency": {"maxRatio": 1.3}}),
    )
    await _baseline(analyst, canary, stable)
    # The latency test starts with the second interval (it needs the stable's p99 first).
    for _ in range(MIN_INTERVALS + 1):
        _balanced(stable, 9000)
        traffic(canary)
        result = await analyst([canary], [stable])
    assert result.verdict == "fail", [g.words for g in result.gates]
    assert result.decisive
    assert [g.name for g in result.gates if g.verdict == "fail"] == [gate]


async def test_p99_ceiling_is_a_point_check(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source, _spec({"latency": {"maxP99Seconds": 0.5}}))
    await _baseline(analyst, canary, stable)
    _balanced(canary, 100, latency=0.8)
    _balanced(stable, 300)
    result = await analyst([canary], [stable])
    assert result.verdict == "fail"
    assert not result.decisive  # failureLimit applies to the legacy point check
    assert _gate(result, "latencyP99").verdict == "fail"


async def test_client_errors_and_overload_do_not_fail_the_error_gate(
    pod: PodFactory, source: PodsSource
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source, _spec({"errorRate": {"margin": 0.005}}))
    await _baseline(analyst, canary, stable)
    for _ in range(MIN_INTERVALS):
        canary.serve(3000)
        canary.serve(1500, code="400")  # a client sending malformed requests
        canary.serve(300, code="503")  # shed under load
        canary.serve(100, code="504")
        stable.serve(9000)
        result = await analyst([canary], [stable])
    assert result.verdict == "pass", result.message
    words = _gate(result, "errorRate").words
    assert f"{400 * MIN_INTERVALS} overload 503/504" in words
    assert f"{1500 * MIN_INTERVALS} 4xx" in words


async def test_unknown_labels_are_summed(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source, _spec({"errorRate": {"margin": 0.005}}))
    await _baseline(analyst, canary, stable)
    extra = canary.registry
    from prometheus_client import Counter

    grpc = Counter("roost_grpc_requests_total", "x", registry=extra)  # noise: another family
    grpc.inc(5)
    canary.serve(100)
    stable.serve(300)
    result = await analyst([canary], [stable])
    assert result.canary_requests == 100


async def test_counter_reset_counts_from_zero(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source)
    await _baseline(analyst, canary, stable)
    canary.restart()  # the serving process restarted: its counters are below the baseline's
    _balanced(canary, 1000)
    canary.serve(200, code="500")
    _balanced(stable, 3000)
    result = await analyst([canary], [stable])
    assert result.canary_requests == 1200
    assert _gate(result, "errorRate").estimate == pytest.approx(200 / 1200)
    assert "restarted" in result.message


async def test_pods_are_summed_and_new_pods_need_a_baseline(
    pod: PodFactory, source: PodsSource
) -> None:
    a, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source)
    await _baseline(analyst, a, stable)
    b = await pod("canary")  # scaled up: its first scrape is only a baseline
    a.serve(30)
    b.serve(1000, code="500")
    stable.serve(100)
    result = await analyst([a, b], [stable])
    assert result.canary_requests == 30
    a.serve(30)
    b.serve(30)
    stable.serve(100)
    result = await analyst([a, b], [stable])
    assert result.canary_requests == 90  # 30 + 60 over the rollout
    assert result.verdict != "fail"


async def test_unreachable_pod_is_reported_and_keeps_its_baseline(
    pod: PodFactory, source: PodsSource
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source)
    await _baseline(analyst, canary, stable)
    await canary.stop()
    result = await analyst([canary], [stable])
    assert result.verdict == "inconclusive"
    assert f"pod {canary.target.name} not scraped" in result.message
    # Reachable again (same pod uid): the delta spans both intervals, from the old baseline.
    canary.serve(60)
    stable.serve(100)
    await canary.start()
    result = await analyst([canary], [stable])
    assert result.canary_requests == 60


async def test_forget_drops_baselines(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source)
    await _baseline(analyst, canary, stable)
    source.forget("default", "iris")
    canary.serve(100)
    result = await analyst([canary], [stable])
    assert "collecting baseline" in result.message


async def test_an_unreachable_stable_pod_makes_even_a_failing_canary_inconclusive(
    pod: PodFactory, source: PodsSource
) -> None:
    """Unreachable pods never decide by themselves, nor leave a verdict to the pods that answer:
    the interval is judged later, in one window, once every Ready pod answers again."""
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source)
    await _baseline(analyst, canary, stable)
    canary.serve(60, code="500")
    stable.serve(60)
    await stable.stop()
    result = await analyst([canary], [stable])
    assert result.verdict == "inconclusive"
    assert f"pod {stable.target.name} not scraped" in result.message
    assert "no verdict until every Ready pod answers" in result.message
    await stable.start()
    result = await analyst([canary], [stable])
    assert result.canary_requests == 60  # the canary's interval was kept, not consumed
    for _ in range(MIN_INTERVALS):  # the sequential tests judge from their interval floor on
        canary.serve(60, code="500")
        stable.serve(60)
        result = await analyst([canary], [stable])
    assert result.verdict == "fail"


async def test_client_error_margin_catches_a_canary_refusing_requests(
    pod: PodFactory, source: PodsSource
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    analyst = Analyst(source, _spec({"errorRate": {"margin": 0.005, "clientErrorMargin": 0.05}}))
    await _baseline(analyst, canary, stable)
    for _ in range(MIN_INTERVALS):
        canary.serve(300, code="400")  # the stable answers the same rows with 200
        stable.serve(900)
        result = await analyst([canary], [stable])
    assert result.verdict == "fail"
    assert [g.name for g in result.gates if g.verdict == "fail"] == ["clientErrors"]
    assert "4xx +100.00 pp" in result.message
