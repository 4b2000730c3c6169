"""PodsSource against real HTTP servers on loopback serving real Prometheus exposition text."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from metrics_pods import ServingPod
from roost_operator.analysis import PodsSource
from roost_operator.gates import AnalysisResult, GateResult, GateThresholds

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
THRESHOLDS = GateThresholds(
    min_requests=50,
    max_error_rate=0.05,
    max_p99_seconds=0.5,
    max_p99_ratio=3.0,
    max_psi=0.25,
    max_js_distance=0.3,
)


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


async def _analyse(
    source: PodsSource,
    canary: list[ServingPod],
    stable: list[ServingPod],
    thresholds: GateThresholds = THRESHOLDS,
) -> AnalysisResult:
    return await source.analyse(
        namespace="default",
        name="iris",
        canary_revision="canary",
        stable_revision="stable",
        canary_pods=[p.target for p in canary],
        stable_pods=[p.target for p in stable],
        window_seconds=10,
        thresholds=thresholds,
        now=NOW,
    )


async def _baseline(source: PodsSource, canary: ServingPod, stable: ServingPod) -> None:
    # Some traffic before the baseline must not count in the window.
    canary.serve(500, code="500")
    stable.serve(100)
    result = await _analyse(source, [canary], [stable])
    assert result.verdict == "inconclusive"
    assert "collecting baseline" in result.message


def _gate(result: AnalysisResult, name: str) -> GateResult:
    gate = result.gate(name)
    assert gate is not None, name
    return gate


def _balanced(pod: ServingPod, n: int, **kwargs: Any) -> None:
    pod.serve(n // 2, prediction="0", **kwargs)
    pod.serve(n - n // 2, prediction="1", **kwargs)


def _healthy(canary: ServingPod, stable: ServingPod) -> None:
    canary.serve(50, prediction="0")
    canary.serve(50, prediction="1")
    canary.drift({"f0": 0.05, "f1": 0.1}, rows=400)
    stable.serve(150, prediction="0")
    stable.serve(150, prediction="1")


async def test_pass_on_deltas_after_baseline(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    _healthy(canary, stable)
    result = await source.analyse(
        namespace="default",
        name="iris",
        canary_revision="canary",
        stable_revision="stable",
        canary_pods=[canary.target],
        stable_pods=[stable.target],
        window_seconds=10,
        thresholds=THRESHOLDS,
        now=NOW,
    )
    assert result.verdict == "pass", result.message
    assert result.canary_requests == 100  # the 500 errors before the baseline are not counted
    values = {g.name: g.value for g in result.gates}
    assert values["errorRate"] == 0
    # All 100 in the (0.003, 0.005] bucket: p99 = 0.003 + 0.002 * 99 / 100
    assert values["latencyP99"] == pytest.approx(0.00498)
    assert values["latencyP99Ratio"] == pytest.approx(1.0)
    assert values["drift"] == pytest.approx(0.1)
    assert values["divergence"] == pytest.approx(0.0, abs=1e-9)


def _errors(canary: ServingPod) -> None:
    _balanced(canary, 80)
    canary.serve(20, code="500")


def _slow(canary: ServingPod) -> None:
    _balanced(canary, 100, latency=0.8)


def _drifted(canary: ServingPod) -> None:
    _balanced(canary, 100)
    canary.drift({"f0": 0.05, "f1": 0.6}, rows=400)


def _constant(canary: ServingPod) -> None:
    canary.serve(100, prediction="1")


@pytest.mark.parametrize(
    ("gate", "traffic"),
    [
        ("errorRate", _errors),
        ("latencyP99", _slow),
        ("drift", _drifted),
        ("divergence", _constant),
    ],
)
async def test_each_gate_fails(
    pod: PodFactory,
    source: PodsSource,
    gate: str,
    traffic: Callable[[ServingPod], None],
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    _balanced(stable, 300)
    canary.drift({"f0": 0.05}, rows=400)  # healthy unless the case says otherwise
    traffic(canary)
    # The ratio gate has its own test; here each case breaks exactly one gate.
    result = await _analyse(
        source, [canary], [stable], dataclasses.replace(THRESHOLDS, max_p99_ratio=None)
    )
    assert result.verdict == "fail"
    assert [g.name for g in result.gates if g.verdict == "fail"] == [gate]
    assert result.message.startswith(f"{gate} ")


async def test_latency_ratio_fails_against_stable(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    canary.serve(50, latency=0.2, prediction="0")
    canary.serve(50, latency=0.2, prediction="1")
    stable.serve(100, latency=0.004, prediction="0")
    stable.serve(100, latency=0.004, prediction="1")
    result = await _analyse(source, [canary], [stable], GateThresholds(max_p99_ratio=3.0))
    ratio = _gate(result, "latencyP99Ratio")
    # canary p99 = 0.1 + 0.15 * 0.99 = 0.2485; stable p99 = 0.00498
    assert ratio.value == pytest.approx(0.2485 / 0.00498)
    assert ratio.verdict == "fail"
    assert result.verdict == "fail"


async def test_too_few_requests_is_inconclusive(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    canary.serve(10, code="500")
    stable.serve(100)
    result = await _analyse(source, [canary], [stable])
    assert result.verdict == "inconclusive"
    assert result.canary_requests == 10
    assert result.message.startswith("10 canary requests in the window, 50 needed")


async def test_counter_reset_counts_from_zero(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    canary.restart()  # the serving process restarted: its counters are below the baseline's
    _healthy(canary, stable)
    canary.serve(10, code="500")
    result = await _analyse(source, [canary], [stable])
    assert result.canary_requests == 110
    assert _gate(result, "errorRate").value == pytest.approx(10 / 110)
    assert result.verdict == "fail"
    assert "restarted" in result.message


async def test_pods_are_summed_and_new_pods_need_a_baseline(
    pod: PodFactory, source: PodsSource
) -> None:
    a, stable = await pod("canary"), await pod("stable")
    await _baseline(source, a, stable)
    b = await pod("canary")  # scaled up: its first scrape is only a baseline
    a.serve(30)
    b.serve(1000, code="500")
    stable.serve(100)
    result = await _analyse(source, [a, b], [stable], GateThresholds(min_requests=50))
    assert result.canary_requests == 30
    a.serve(30)
    b.serve(30)
    result = await _analyse(source, [a, b], [stable], GateThresholds(min_requests=50))
    assert result.canary_requests == 60
    assert result.verdict == "pass"


async def test_unreachable_pod_is_reported_and_keeps_its_baseline(
    pod: PodFactory, source: PodsSource
) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    await canary.stop()
    result = await _analyse(source, [canary], [stable])
    assert result.verdict == "inconclusive"
    assert f"pod {canary.target.name} not scraped" in result.message
    # Reachable again (same pod uid): the delta spans both intervals, from the old baseline.
    canary.serve(60)
    await canary.start()
    result = await _analyse(source, [canary], [stable], GateThresholds(min_requests=50))
    assert result.canary_requests == 60
    assert result.verdict == "pass"


async def test_forget_drops_baselines(pod: PodFactory, source: PodsSource) -> None:
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    source.forget("default", "iris")
    canary.serve(100)
    result = await _analyse(source, [canary], [stable])
    assert "collecting baseline" in result.message


async def test_an_unreachable_stable_pod_makes_even_a_failing_canary_inconclusive(
    pod: PodFactory, source: PodsSource
) -> None:
    """Unreachable pods never decide by themselves, nor leave a verdict to the pods that answer:
    the interval is judged later, in one window, once every Ready pod answers again."""
    canary, stable = await pod("canary"), await pod("stable")
    await _baseline(source, canary, stable)
    canary.serve(60, code="500")
    stable.serve(60)
    await stable.stop()
    result = await _analyse(source, [canary], [stable])
    assert result.verdict == "inconclusive"
    assert f"pod {stable.target.name} not scraped" in result.message
    assert "no verdict until every Ready pod answers" in result.message
    await stable.start()
    result = await _analyse(source, [canary], [stable])
    assert result.canary_requests == 60  # the canary's interval was kept, not consumed
    assert result.verdict == "fail"
