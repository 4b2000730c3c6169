"""Rollout status round trips, restart from any persisted state, replica arithmetic, the policy.

Property tests (hypothesis) generate arbitrary persisted states and observations: a restarted
operator (status written, stored as JSON, read back) must decide exactly what the running one
would, and random walks through the state machine must keep its invariants.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from gate_results import point_gate
from hypothesis import given, settings
from hypothesis import strategies as st
from policies import rollout_policy
from roost_operator.gates import AnalysisResult, Verdict
from roost_operator.rollout import (
    HISTORY_LIMIT,
    CanaryState,
    HistoryEntry,
    Observations,
    RevisionRef,
    RolloutState,
    decide,
    describe_gate,
    needs_analysis,
    replica_split,
)
from roost_operator.spec import RolloutPolicy, SpecError, Step, parse_spec
from roost_operator.times import format_time, parse_duration

CRD_PATH = Path(__file__).resolve().parents[3] / "crds" / "modeldeployment.yaml"
REVISIONS = [RevisionRef(c * 10, f"file:///models/{c}/model.onnx") for c in "123"]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def restarted(state: RolloutState) -> RolloutState:
    return RolloutState.from_status(json.loads(json.dumps(state.to_status())))


# --- strategies -----------------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
revision_refs = st.sampled_from(REVISIONS)
verdicts = st.sampled_from(["pass", "fail", "inconclusive"])
gate_results = st.builds(
    point_gate,
    name=st.sampled_from(["minRequests", "errorRate", "latencyP99", "drift", "divergence"]),
    value=st.none() | st.floats(0, 1000, allow_nan=False),
    threshold=st.floats(0, 1000, allow_nan=False),
    verdict=verdicts,
)
analyses = st.builds(
    AnalysisResult,
    time=times,
    verdict=verdicts,
    gates=st.lists(gate_results, max_size=4).map(tuple),
    canary_requests=st.integers(0, 10_000),
    message=st.text(max_size=30),
)
canaries = st.builds(
    CanaryState,
    revision=st.sampled_from([r.revision for r in REVISIONS]),
    model_uri=st.text(max_size=20),
    step=st.integers(0, 5),
    weight=st.integers(0, 100),
    step_started_at=times,
    started_at=times,
    consecutive_failures=st.integers(0, 5),
    analysis_count=st.integers(0, 50),
    last_analysis=st.none() | analyses.map(lambda a: a.to_status()),
)
history_entries = st.builds(
    HistoryEntry,
    revision=st.sampled_from([r.revision for r in REVISIONS]),
    model_uri=st.text(max_size=20),
    outcome=st.sampled_from(["Promoted", "RolledBack", "Aborted", "Superseded"]),
    reason=st.text(max_size=40),
    started_at=times,
    finished_at=times,
)
tokens = st.dictionaries(st.sampled_from(["promote", "abort", "retry"]), st.sampled_from("abc"))
states = st.builds(
    RolloutState,
    stable=st.none() | revision_refs,
    canary=st.none() | canaries,
    failed_revision=st.none() | st.sampled_from([r.revision for r in REVISIONS]),
    history=st.lists(history_entries, max_size=HISTORY_LIMIT).map(tuple),
    handled_requests=tokens,
)


@st.composite
def policies(draw: st.DrawFn) -> RolloutPolicy:
    weights = sorted(draw(st.sets(st.integers(1, 100), max_size=4)))
    steps = [(w, draw(st.sampled_from([0.0, 10.0, 30.0, 90.0]))) for w in weights]
    return rollout_policy(
        steps,
        interval_seconds=draw(st.sampled_from([1.0, 10.0, 30.0])),
        failure_limit=draw(st.integers(1, 3)),
        gated=draw(st.booleans()),
    )


def observations(now: st.SearchStrategy[datetime] = times) -> st.SearchStrategy[Observations]:
    return st.builds(
        Observations,
        desired=revision_refs,
        total_replicas=st.integers(0, 12),
        paused=st.booleans(),
        stable_ready_replicas=st.integers(0, 12),
        canary_ready_replicas=st.integers(0, 12),
        canary_failure=st.none() | st.just("CrashLoopBackOff: roost: error: bad model"),
        requests=tokens,
        analysis=st.none() | analyses,
        now=now,
    )


# --- restart from any persisted state ---------------------------------------------------------


@given(states)
def test_status_round_trips_exactly(state: RolloutState) -> None:
    assert restarted(state) == state


@settings(max_examples=200)
@given(policies(), states, observations())
def test_restarted_operator_decides_the_same(
    policy: RolloutPolicy, state: RolloutState, obs: Observations
) -> None:
    decision = decide(policy, state, obs)
    assert decide(policy, restarted(state), obs) == decision
    assert restarted(decision.state) == decision.state


@st.composite
def walks(draw: st.DrawFn) -> tuple[RolloutPolicy, list[Observations]]:
    """A policy and ticks that mostly let a rollout of revision 2 run, with rare disturbances."""
    policy = draw(policies())
    gaps = draw(st.lists(st.sampled_from([0, 1, 5, 10, 30, 100]), min_size=1, max_size=40))
    ticks = []
    for i in range(len(gaps)):
        now = T0 + timedelta(seconds=sum(gaps[: i + 1]))
        verdict: Verdict = draw(st.sampled_from(["pass", "pass", "fail", "inconclusive"]))
        analysis = AnalysisResult(now, verdict, (point_gate("drift", 0.5, 0.25, verdict),), 99, "")
        ticks.append(
            Observations(
                desired=REVISIONS[0]
                if i == 0
                else draw(st.sampled_from([REVISIONS[1]] * 8 + REVISIONS)),
                total_replicas=draw(st.integers(1, 6)),
                paused=draw(st.sampled_from([False] * 9 + [True])),
                stable_ready_replicas=draw(st.sampled_from([0, 1, 6, 6, 6])),
                canary_ready_replicas=draw(st.sampled_from([0, 1, 2, 6, 6, 6])),
                canary_failure=draw(st.sampled_from([None] * 19 + ["CrashLoopBackOff: x"])),
                requests=draw(
                    st.sampled_from([{}] * 12 + [{"promote": "p"}, {"abort": "a"}, {"retry": "r"}])
                ),
                analysis=draw(st.sampled_from([analysis, analysis, None])),
                now=now,
            )
        )
    return policy, ticks


@settings(max_examples=100)
@given(walks())
def test_random_walks_keep_the_invariants(walk: tuple[RolloutPolicy, list[Observations]]) -> None:
    policy, ticks = walk
    state = RolloutState(None, None, None, (), {})
    for obs in ticks:
        # Like the planner: an analysis only when the state machine asked for one.
        if obs.analysis is not None:
            asked = needs_analysis(policy, state, Observations(**{**vars(obs), "analysis": None}))
            if not asked:
                obs = Observations(**{**vars(obs), "analysis": None})
        d = decide(policy, state, obs)
        s = d.state
        assert s.stable is not None
        assert len(s.history) <= HISTORY_LIMIT
        assert all(
            h.outcome in {"Promoted", "RolledBack", "Aborted", "Superseded"} for h in s.history
        )
        for kind, token in obs.requests.items():
            assert s.handled_requests[kind] == token
        if s.canary is None:
            assert (d.canary_replicas, d.weight) == (0, 0)
            assert d.stable_replicas == max(obs.total_replicas, 0)
        else:
            assert s.canary.revision != s.stable.revision
            assert s.canary.revision != s.failed_revision
            assert 0 <= d.weight <= 100
            assert d.canary_replicas <= max(obs.total_replicas, 1)
            assert d.progressing is not None
        if d.stalled is not None:
            assert d.stalled[0] == "CanaryRolledBack"
            assert s.failed_revision == obs.desired.revision
        assert d.requeue_after is None or d.requeue_after >= 1.0
        assert all(e.type in {"Normal", "Warning"} for e in d.events)
        assert restarted(s) == s
        state = s


# --- the status as the API server keeps it ----------------------------------------------------


def test_to_status_writes_the_contract_keys_and_nulls_for_deletion() -> None:
    state = RolloutState(REVISIONS[0], None, None, (), {"abort": "t"})
    assert state.to_status() == {
        "stable": {"revision": "1111111111", "modelUri": "file:///models/1/model.onnx"},
        "canary": None,
        "failedRevision": None,
        "history": [],
        "handledRequests": {"abort": "t"},
    }


def test_times_are_rfc3339_utc() -> None:
    assert format_time(T0) == "2026-03-01T12:00:00Z"
    assert format_time(T0.replace(microsecond=250000)) == "2026-03-01T12:00:00.250000Z"
    cet = datetime(2026, 3, 1, 13, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(cet) == "2026-03-01T12:00:00Z"


def test_from_status_tolerates_missing_and_malformed_keys() -> None:
    assert RolloutState.from_status(None) == RolloutState(None, None, None, (), {})
    assert RolloutState.from_status({}) == RolloutState(None, None, None, (), {})
    messy = {
        "stable": "not a mapping",
        "canary": {"revision": "2222222222"},  # no stepStartedAt: cannot resume it
        "failedRevision": "",
        "history": [{"revision": "x"}, 7] + [_history("r", n) for n in range(12)],
        "handledRequests": {"promote": 3, "abort": "t"},
    }
    s = RolloutState.from_status(messy)
    assert (s.stable, s.canary, s.failed_revision) == (None, None, None)
    assert [h.outcome for h in s.history] == ["Promoted"] * HISTORY_LIMIT
    assert s.history[-1].reason == "r11"
    assert s.handled_requests == {"abort": "t"}


def _history(reason: str, n: int) -> dict[str, Any]:
    return {
        "revision": "1111111111",
        "modelUri": "m",
        "outcome": "Promoted",
        "reason": f"{reason}{n}",
        "startedAt": "2026-03-01T12:00:00Z",
        "finishedAt": "2026-03-01T12:01:00+01:00",
    }


def test_from_status_reads_offsets_and_naive_times_as_utc() -> None:
    s = RolloutState.from_status({"history": [_history("r", 0)]})
    assert s.history[0].finished_at == datetime(2026, 3, 1, 11, 1, tzinfo=UTC)
    canary = {"revision": "2222222222", "stepStartedAt": "2026-03-01T12:00:00", "step": 1}
    c = RolloutState.from_status({"canary": canary}).canary
    assert c is not None
    assert c.step_started_at == T0
    assert c.started_at == T0  # startedAt missing: the step's start stands in


def _prune(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server keeps of `value` under a structural schema (unknown fields dropped)."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: _prune(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list) and "items" in schema:
        return [_prune(v, schema["items"]) for v in value]
    return value


def _status_schema() -> dict[str, Any]:
    with CRD_PATH.open() as f:
        crd = yaml.safe_load(f)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status: dict[str, Any] = schema["properties"]["status"]
    return status


def _mid_rollout() -> RolloutState:
    canary = CanaryState(
        revision="2222222222",
        model_uri="file:///models/2/model.onnx",
        step=1,
        weight=50,
        step_started_at=T0 + timedelta(minutes=1),
        started_at=T0,
        consecutive_failures=1,
        analysis_count=7,
        last_analysis=AnalysisResult(
            T0, "fail", (point_gate("drift", 0.4, 0.25, "fail"),), 80, "drift 0.4 > 0.25"
        ).to_status(),
    )
    return RolloutState(REVISIONS[0], canary, None, (), {})


def test_pruned_by_the_crd_the_rollout_still_resumes_at_the_same_step() -> None:
    state = _mid_rollout()
    kept = RolloutState.from_status(
        _prune(json.loads(json.dumps(state.to_status())), _status_schema())
    )
    assert kept.canary is not None
    assert state.canary is not None
    assert (kept.canary.step, kept.canary.step_started_at, kept.canary.last_analysis) == (
        state.canary.step,
        state.canary.step_started_at,
        state.canary.last_analysis,
    )
    assert kept.canary.consecutive_failures == 1


def test_every_status_field_survives_the_crd() -> None:
    status = json.loads(json.dumps(_mid_rollout().to_status()))
    assert _prune(status, _status_schema()) == status


# --- replica arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weight", "split"),
    [
        (4, 20, (3, 1)),
        (10, 20, (8, 2)),
        (10, 50, (5, 5)),
        (3, 50, (1, 2)),
        (2, 99, (1, 1)),
        (2, 1, (1, 1)),
        (100, 1, (99, 1)),
        (5, 21, (3, 2)),
        (1, 20, (1, 1)),
        (1, 100, (0, 1)),
        (7, 0, (7, 0)),
        (7, 100, (0, 7)),
        (0, 50, (0, 0)),
    ],
)
def test_replica_split_table(total: int, weight: int, split: tuple[int, int]) -> None:
    assert replica_split(total, weight) == split


@given(st.integers(2, 500), st.integers(1, 99))
def test_replica_split_properties(total: int, weight: int) -> None:
    stable, canary = replica_split(total, weight)
    assert stable + canary == total
    assert stable >= 1
    assert canary >= 1
    assert canary == min(max(math.ceil(total * weight / 100), 1), total - 1)


@given(st.integers(1, 500), st.integers(0, 99))
def test_more_weight_never_means_fewer_canary_pods(total: int, weight: int) -> None:
    assert replica_split(total, weight)[1] <= replica_split(total, weight + 1)[1]


# --- durations and the policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("1h", 3600),
        ("2h45m", 9900),
        ("1.5s", 1.5),
        ("0", 0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1d", "-1s", "1m 30s", "1y"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration such as 30s"):
        parse_duration(text)


def _rollout(raw: dict[str, Any]) -> RolloutPolicy:
    return parse_spec({"model": {"uri": "file:///m/model.onnx"}, "rollout": raw}).rollout


def test_policy_from_the_contract_example() -> None:
    p = _rollout(
        {
            "steps": [{"weight": 20, "pause": "30s"}, {"weight": 50, "pause": "1m"}],
            "analysis": {
                "interval": "10s",
                "failureLimit": 3,
                "gates": {"drift": {"maxPSI": 0.25}},
            },
        }
    )
    assert p.steps == (Step(20, 30.0), Step(50, 60.0))
    assert (p.interval_seconds, p.failure_limit, p.analysis_enabled) == (10.0, 3, True)


def test_policy_defaults_without_steps_or_gates() -> None:
    p = _rollout({"steps": [{"weight": 10}], "analysis": {"minRequests": 5}})
    assert p.steps == (Step(10, 0.0),)
    assert (p.interval_seconds, p.failure_limit, p.analysis_enabled) == (10.0, 2, False)
    assert _rollout({}).steps == ()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"steps": [{"weight": 0}]}, r"steps\[0\]\.weight must be at least 1"),
        ({"steps": [{"weight": 10, "pause": "soon"}]}, r"steps\[0\]\.pause must be a duration"),
        ({"analysis": {"interval": "0s"}}, "interval must be longer than zero"),
        ({"analysis": {"failureLimit": 0}}, "failureLimit must be at least 1"),
    ],
)
def test_policy_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _rollout(spec)


# --- what people read -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "text"),
    [
        (
            {"name": "errorRate", "value": 0.002, "threshold": 0.05, "verdict": "pass"},
            "error rate 0.2% ≤ 5%",
        ),
        (
            {"name": "latencyP99", "value": 0.7, "threshold": 0.5, "verdict": "fail"},
            "p99 700 ms > 500 ms",
        ),
        (
            {"name": "latencyP99Ratio", "value": 1.2, "threshold": 3.0, "verdict": "pass"},
            "p99 ratio 1.2 ≤ 3",
        ),
        ({"name": "drift", "value": 0.91, "threshold": 0.25, "verdict": "fail"}, "PSI 0.91 > 0.25"),
        (
            {"name": "divergence", "value": 0.1, "threshold": 0.3, "verdict": "pass"},
            "JS distance 0.1 ≤ 0.3",
        ),
        (
            {"name": "minRequests", "value": 12.0, "threshold": 50.0, "verdict": "inconclusive"},
            "12 requests < 50",
        ),
        ({"name": "drift", "threshold": 0.25, "verdict": "inconclusive"}, "PSI: no data"),
    ],
)
def test_describe_gate(gate: dict[str, Any], text: str) -> None:
    assert describe_gate(gate) == text
