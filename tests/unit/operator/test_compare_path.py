"""Same bins for both arms after a retrain, on the real path: serving's own monitor and compare
collector behind a loopback /metrics, scraped and judged by the operator's PodsSource.

Canary and stable are regressors with *different* profile output edges (a retrain). The
section the operator pushes is built from the stable pod's own ``roost_prediction_bin_upper``
(``roost_operator.compare.section_for_stable``) and applied to every pod as the runtime holder
would hand it over.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from roost_operator import compare
from roost_operator.analysis import PodsSource
from roost_operator.builders import Owner
from roost_operator.gates import AnalysisResult, parse_exposition, sum_by
from roost_operator.pods import PodTarget
from roost_operator.rollout import RevisionRef, RolloutState
from roost_operator.runtime_push import RuntimeContext, build_document, compare_section
from roost_operator.sequential import MIN_INTERVALS
from roost_operator.spec import parse_spec
from roost_operator.verdicts import GateVerdict
from roost_serving.monitor import DriftMonitor
from roost_serving.profile import NumericFeature, Profile, RegressionPrediction

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
F0 = NumericFeature("f0", "X", 0, (0.0,), (0.5, 0.5))
STABLE_EDGES = (4.0, 5.0, 6.0, 7.0)
RETRAINED_EDGES = (3.0, 4.5, 6.5)  # other edges, other number of bins
SPEC = parse_spec(
    {
        "model": {"uri": "file:///m.onnx"},
        "rollout": {"analysis": {"alpha": 0.01, "minRequests": 50, "gates": {
            "divergence": {"margin": 0.05}
        }}},
    }
).rollout.analysis  # fmt: skip
_uids = count()


class RegressorPod:
    """A loopback /metrics of a real DriftMonitor (and its compare bins) for one revision."""

    def __init__(self, revision: str, edges: tuple[float, ...]) -> None:
        self.revision, self.uid = revision, f"uid-{next(_uids)}"
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "roost_requests_total", "r", ["model", "revision", "code"], registry=self.registry
        )
        shares = (1.0 / (len(edges) + 1),) * (len(edges) + 1)
        profile = Profile(
            rows=100, features=(F0,), prediction=RegressionPrediction("y", edges, shares)
        )
        self.monitor = DriftMonitor(profile, self.registry, "wine", revision, 1000)
        self.port = 0
        self.runner: web.AppRunner | None = None

    def predict(self, values: np.ndarray[Any, Any]) -> None:
        self.requests.labels("wine", self.revision, "200").inc(values.size)
        self.monitor.observe(
            {"X": np.zeros((values.size, 1), dtype=np.float32)},
            {"y": values.astype(np.float32).reshape(-1, 1)},
        )

    def push(self, section: dict[str, Any]) -> None:
        assert self.monitor.compare is not None
        # Through JSON, as the PUT body arrives.
        self.monitor.compare.apply(json.loads(json.dumps(section)))

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

    @property
    def target(self) -> PodTarget:
        return PodTarget(name=f"wine-{self.uid}", uid=self.uid, ip="127.0.0.1", port=self.port)


@pytest.fixture
async def arms() -> AsyncIterator[tuple[RegressorPod, RegressorPod, PodsSource]]:
    canary, stable = RegressorPod("canary", RETRAINED_EDGES), RegressorPod("stable", STABLE_EDGES)
    await canary.start()
    await stable.start()
    source = PodsSource()
    yield canary, stable, source
    await source.close()
    for p in (canary, stable):
        assert p.runner is not None
        await p.runner.cleanup()


async def _analyse(
    source: PodsSource, canary: RegressorPod, stable: RegressorPod, evidence: Any, i: int
) -> AnalysisResult:
    return await source.analyse(
        namespace="default",
        name="wine",
        canary_revision="canary",
        stable_revision="stable",
        canary_pods=[canary.target],
        stable_pods=[stable.target],
        window_seconds=10,
        spec=SPEC,
        evidence=evidence,
        now=NOW + timedelta(seconds=10 * i),
    )


def _section_from_stable(stable: RegressorPod) -> dict[str, Any]:
    """What the operator pushes: built from the stable pod's own exported upper edges."""
    scrape = parse_exposition(generate_latest(stable.registry).decode())
    section = compare.section_for_stable(sum_by(scrape.gauges, "roost_prediction_bin_upper", "bin"))
    assert section is not None
    assert section["edges"] == list(STABLE_EDGES)
    return section


async def _run(
    arms: tuple[RegressorPod, RegressorPod, PodsSource], canary_mean: float, looks: int
) -> AnalysisResult:
    canary, stable, source = arms
    rng = np.random.default_rng(2026)
    section = _section_from_stable(stable)
    for p in (canary, stable):
        p.push(section)
    evidence: Any = None
    result = await _analyse(source, canary, stable, evidence, 0)  # baselines
    for i in range(1, looks + 1):
        canary.predict(rng.normal(canary_mean, 1.0, 2000))
        stable.predict(rng.normal(5.5, 1.0, 2000))
        result = await _analyse(source, canary, stable, evidence, i)
        evidence = json.loads(json.dumps(result.evidence))  # as status persists it
    return result


def _divergence(result: AnalysisResult) -> GateVerdict:
    return next(g for g in result.gates if g.name == "divergence")


async def test_a_retrained_regressor_with_the_same_predictions_passes_on_common_bins(
    arms: tuple[RegressorPod, RegressorPod, PodsSource],
) -> None:
    result = await _run(arms, 5.5, MIN_INTERVALS + 4)
    gate = _divergence(result)
    assert (gate.mode, gate.verdict, result.verdict) == ("enforce", "pass", "pass"), gate.words
    assert "on the stable's bins" in gate.words


async def test_a_retrained_regressor_that_moved_its_predictions_fails(
    arms: tuple[RegressorPod, RegressorPod, PodsSource],
) -> None:
    result = await _run(arms, 6.0, MIN_INTERVALS + 4)  # half a standard deviation higher
    gate = _divergence(result)
    assert (gate.mode, gate.verdict, result.verdict) == ("enforce", "fail", "fail"), gate.words
    assert "worse than margin" in gate.words


async def test_counts_from_before_a_push_or_across_a_new_version_are_left_out(
    arms: tuple[RegressorPod, RegressorPod, PodsSource],
) -> None:
    canary, stable, source = arms
    rng = np.random.default_rng(1)
    await _analyse(source, canary, stable, None, 0)
    # No push yet: no compare counts, the gate waits (enforced, never observe mode).
    canary.predict(rng.normal(5.5, 1.0, 400))
    stable.predict(rng.normal(5.5, 1.0, 400))
    result = await _analyse(source, canary, stable, None, 1)
    gate = _divergence(result)
    assert (gate.mode, gate.verdict) == ("enforce", "inconclusive")
    assert "waiting for both to count on the stable's edges" in gate.words
    # Pushed between two scrapes: that interval's counts are not used either ...
    section = _section_from_stable(stable)
    for p in (canary, stable):
        p.push(section)
    canary.predict(rng.normal(9.0, 1.0, 400))  # would fail the gate if it were counted
    stable.predict(rng.normal(5.5, 1.0, 400))
    result = await _analyse(source, canary, stable, result.evidence, 2)
    assert "waiting" in _divergence(result).words
    # ... the next interval's are.
    canary.predict(rng.normal(5.5, 1.0, 400))
    stable.predict(rng.normal(5.5, 1.0, 400))
    result = await _analyse(source, canary, stable, result.evidence, 3)
    assert "on the stable's bins" in _divergence(result).words
    rows = result.evidence["compare"]["state"] if result.evidence else None
    assert rows is not None


def test_the_push_carries_the_stables_edges_once_an_analysis_read_them() -> None:
    owner = Owner("wine", "ns-compare", "uid-md")
    spec = parse_spec({"model": {"uri": "file:///m.onnx"}})
    state = RolloutState(RevisionRef("r1", "m"), None, None, (), {})
    ctx = RuntimeContext(owner, spec, state, {})
    assert "compare" not in build_document(ctx)["sections"]  # nothing read yet
    compare.EDGES.record("ns-compare", "wine", "r2", {"0": 9.0, "1": math.inf})  # the canary's
    compare.EDGES.record("ns-compare", "wine", "r1", {"0": 4.0, "1": 5.0, "2": math.inf})
    doc = build_document(ctx)
    assert doc["sections"]["compare"] == {
        "version": compare.version([4.0, 5.0]),
        "edges": [4.0, 5.0],
    }
    # After a promotion r2 is the stable: its own edges, a new version, a new document.
    promoted = RuntimeContext(
        owner, spec, RolloutState(RevisionRef("r2", "m"), None, None, (), {}), {}
    )
    assert build_document(promoted)["sections"]["compare"]["edges"] == [9.0]
    assert build_document(promoted)["version"] != doc["version"]
    compare.EDGES.forget("ns-compare", "wine")
    assert "compare" not in build_document(ctx)["sections"]
    # A classifier exports no uppers: no section.
    compare.EDGES.record("ns-compare", "wine", "r1", {})
    assert compare_section(ctx) is None
