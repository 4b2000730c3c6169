"""The shadow step, operator side: spec, state machine, runtime section and its gate."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from roost_operator.gates import AnalysisResult, parse_exposition
from roost_operator.pods import PodTarget, RevisionPods
from roost_operator.rollout import Observations, RevisionRef, RolloutState, decide, needs_analysis
from roost_operator.sequential import MIN_INTERVALS
from roost_operator.shadow import ShadowCounts, judge_shadow, shadow_counts, shadow_section
from roost_operator.spec import SpecError, parse_spec

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
V1 = RevisionRef("1111111111", "file:///v1.onnx")
V2 = RevisionRef("2222222222", "file:///v2.onnx")
STEADY = RolloutState(stable=V1, canary=None, failed_revision=None, history=(), handled_requests={})


def spec(steps: list[dict[str, Any]], gates: dict[str, Any] | None = None) -> Any:
    analysis: dict[str, Any] = {"interval": "10s"}
    if gates is not None:
        analysis["gates"] = gates
    raw = {"model": {"uri": "file:///m.onnx"}, "replicas": 4}
    return parse_spec({**raw, "rollout": {"steps": steps, "analysis": analysis}})


SHADOW_THEN_20 = [{"shadow": 100, "pause": "30s"}, {"weight": 20, "pause": "30s"}]


class TestSpec:
    def test_a_shadow_step_has_no_weight_and_implies_the_shadow_gate(self) -> None:
        s = spec(SHADOW_THEN_20)
        assert [(st.weight, st.shadow) for st in s.rollout.steps] == [(0, 100), (20, 0)]
        assert s.rollout.analysis.gates.shadow is not None
        assert s.rollout.analysis.gates.shadow.max_rate == 0.05
        assert s.rollout.gated(0)  # judged by the shadow gate
        assert not s.rollout.gated(1)  # no traffic gates configured

    def test_the_gate_takes_its_settings_and_shares_alpha(self) -> None:
        gates = {
            "shadowDisagreement": {"maxRate": 0.02, "tolerance": 0.5},
            "drift": {"margin": 0.1},
        }
        s = spec(SHADOW_THEN_20, gates)
        assert s.rollout.analysis.gates.shadow.max_rate == 0.02
        assert s.rollout.analysis.gates.shadow.tolerance == 0.5
        assert s.rollout.analysis.gates.enforced() == 2

    @pytest.mark.parametrize(
        ("steps", "fragment"),
        [
            ([{"weight": 20}, {"shadow": 100}], "shadow steps come before"),
            ([{"shadow": 100, "weight": 10}], "both weight and shadow"),
            ([{"shadow": 0}], "at least 1"),
            ([{"shadow": 101}], "between 1 and 100"),
            ([{"pause": "1m"}], "needs a weight"),
        ],
    )
    def test_bad_shadow_steps_say_what_to_fix(self, steps: list[Any], fragment: str) -> None:
        with pytest.raises(SpecError, match=fragment):
            spec(steps)


def obs(when: float, canary_ready: int, analysis: AnalysisResult | None = None) -> Observations:
    return Observations(
        desired=V2,
        total_replicas=4,
        paused=False,
        stable_ready_replicas=4,
        canary_ready_replicas=canary_ready,
        canary_failure=None,
        requests={},
        analysis=analysis,
        now=T0 + timedelta(seconds=when),
    )


def verdict(when: float, kind: str) -> AnalysisResult:
    return AnalysisResult(
        time=T0 + timedelta(seconds=when),
        verdict=kind,  # type: ignore[arg-type]
        gates=(),
        canary_requests=0,
        message=f"shadow {kind}",
        decisive=kind == "fail",
    )


class TestStateMachine:
    def test_the_canary_gets_copies_and_no_weight_while_the_stable_keeps_every_pod(self) -> None:
        policy = spec(SHADOW_THEN_20).rollout
        d = decide(policy, STEADY, obs(0, 0))
        assert "shadow: copies of 100% of requests, no client traffic" in d.events[0].message
        # 100 % of the stable's requests copied: the canary runs at the stable's size.
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 4, 0)
        d = decide(policy, d.state, obs(1, 4))
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 4, 0)
        assert needs_analysis(policy, d.state, obs(2, 4))

    def test_a_failing_shadow_analysis_rolls_back_before_any_weight(self) -> None:
        policy = spec(SHADOW_THEN_20).rollout
        state = decide(policy, STEADY, obs(0, 0)).state
        state = decide(policy, state, obs(1, 4)).state
        d = decide(policy, state, obs(11, 4, verdict(11, "fail")))
        assert d.state.canary is None
        assert d.state.failed_revision == V2.revision
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 0, 0)
        assert [e.reason for e in d.events] == ["CanaryRolledBack"]

    def test_a_passing_shadow_step_moves_on_to_client_traffic(self) -> None:
        policy = spec(SHADOW_THEN_20).rollout
        state = decide(policy, STEADY, obs(0, 0)).state
        state = decide(policy, state, obs(1, 4)).state
        d = decide(policy, state, obs(20, 4, verdict(20, "pass")))
        assert d.state.canary is not None
        assert d.state.canary.step == 0  # the pause holds
        d = decide(policy, d.state, obs(32, 4))
        assert d.state.canary is not None
        assert (d.state.canary.step, d.weight) == (1, 20)
        assert (d.stable_replicas, d.canary_replicas) == (3, 1)


class TestRuntimeSection:
    def test_the_section_names_the_ready_canary_pods_only_during_the_shadow_step(self) -> None:
        s = spec(SHADOW_THEN_20, {"shadowDisagreement": {"maxRate": 0.1, "tolerance": 0.2}})
        state = decide(s.rollout, STEADY, obs(0, 0)).state
        pods = {V2.revision: RevisionPods(1, 1, (PodTarget("c-0", "u", "127.0.0.9", 8080),))}
        section = shadow_section(s, state, pods)
        assert section == {
            "stable": V1.revision,
            "canary": V2.revision,
            "targets": ["http://127.0.0.9:8080"],
            "share": 1.0,
            "tolerance": 0.2,
            "timeoutSeconds": 2.0,
        }
        assert shadow_section(s, state, {}) is None  # no ready canary pod yet
        assert state.canary is not None
        later = replace(state, canary=replace(state.canary, step=1))
        assert shadow_section(s, later, pods) is None


EXPOSITION = """
# TYPE roost_shadow_requests_total counter
roost_shadow_requests_total{model="m",revision="s",canary="c",outcome="compared"} 40
roost_shadow_requests_total{model="m",revision="s",canary="c",outcome="error"} 2
roost_shadow_requests_total{model="m",revision="s",canary="old",outcome="compared"} 99
# TYPE roost_shadow_rows_total counter
roost_shadow_rows_total{model="m",revision="s",canary="c"} 84
# TYPE roost_shadow_disagreements_total counter
roost_shadow_disagreements_total{model="m",revision="s",canary="c",kind="prediction"} 10
roost_shadow_disagreements_total{model="m",revision="s",canary="c",kind="error"} 4
# TYPE roost_shadow_dropped_total counter
roost_shadow_dropped_total{model="m",revision="s",reason="queue_full"} 3
"""


class TestGate:
    def test_counts_are_read_for_this_canary_only(self) -> None:
        counts = shadow_counts([parse_exposition(EXPOSITION).counters], "c")
        assert counts == ShadowCounts(compared=40, errors=2, rows=84, disagreements=14, dropped=3)

    def _run(self, rate: float, intervals: int, rows: int = 50, seed: int = 0) -> AnalysisResult:
        analysis = spec(SHADOW_THEN_20).rollout.analysis
        rng = np.random.default_rng(seed)
        evidence = None
        result = None
        for i in range(intervals):
            wrong = float(rng.binomial(rows, rate))
            counts = ShadowCounts(compared=rows, rows=rows, disagreements=wrong)
            result = judge_shadow(analysis, evidence, counts, T0 + timedelta(seconds=10 * i))
            evidence = result.evidence
        assert result is not None
        return result

    def test_an_identical_model_passes_after_enough_intervals(self) -> None:
        assert self._run(0.0, MIN_INTERVALS - 1).verdict == "inconclusive"
        result = self._run(0.0, MIN_INTERVALS)
        assert result.verdict == "pass"
        assert result.canary_requests == 0
        assert "shadow step passed on 300 compared copies" in result.message

    def test_a_one_class_model_fails_decisively(self) -> None:
        result = self._run(0.6, MIN_INTERVALS)
        assert result.verdict == "fail"
        assert result.decisive
        gate = result.gates[0]
        assert gate.name == "shadowDisagreement"
        assert gate.lower is not None
        assert gate.lower > 0.05
        assert "canary disagrees on" in gate.words

    def test_the_evidence_survives_a_restart(self) -> None:
        import json

        first = self._run(0.0, 3)
        again = json.loads(json.dumps(first.evidence))
        analysis = spec(SHADOW_THEN_20).rollout.analysis
        counts = ShadowCounts(compared=50, rows=50)
        a = judge_shadow(analysis, first.evidence, counts, T0)
        b = judge_shadow(analysis, again, counts, T0)
        assert a.evidence == b.evidence
