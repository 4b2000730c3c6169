"""Every transition of the canary rollout state machine, driven tick by tick like the planner.

Each tick also restarts the "operator": the state goes through `to_status`, JSON (what the API
server stores) and `from_status`, and the restarted `decide` must give the same decision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from gate_results import point_gate
from policies import rollout_policy
from roost_operator.gates import AnalysisResult
from roost_operator.rollout import (
    HISTORY_LIMIT,
    READINESS_POLL_SECONDS,
    Decision,
    Observations,
    RevisionRef,
    RolloutState,
    analysis_due,
    canary_ready,
    decide,
    needs_analysis,
)
from roost_operator.spec import RolloutPolicy

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
V1 = RevisionRef("1111111111", "file:///models/v1/model.onnx")
V2 = RevisionRef("2222222222", "file:///models/v2/model.onnx")
V3 = RevisionRef("3333333333", "file:///models/v3/model.onnx")
POLICY = rollout_policy([(20, 30.0), (50, 30.0)], interval_seconds=10.0, failure_limit=2)
EMPTY = RolloutState(
    stable=None, canary=None, failed_revision=None, history=(), handled_requests={}
)
STEADY = replace(EMPTY, stable=V1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def passed(when: float, requests: int = 120) -> AnalysisResult:
    return AnalysisResult(
        time=at(when),
        verdict="pass",
        gates=(
            point_gate("minRequests", float(requests), 50.0, "pass"),
            point_gate("errorRate", 0.002, 0.05, "pass"),
            point_gate("latencyP99", 0.012, 0.5, "pass"),
        ),
        canary_requests=requests,
        message=f"all gates passed on {requests} canary requests",
    )


def drifted(when: float) -> AnalysisResult:
    return AnalysisResult(
        time=at(when),
        verdict="fail",
        gates=(
            point_gate("minRequests", 200.0, 50.0, "pass"),
            point_gate("drift", 0.91, 0.25, "fail"),
        ),
        canary_requests=200,
        message="drift 0.91 > 0.25",
    )


def too_few(when: float) -> AnalysisResult:
    return AnalysisResult(
        time=at(when),
        verdict="inconclusive",
        gates=(point_gate("minRequests", 3.0, 50.0, "inconclusive"),),
        canary_requests=3,
        message="3 canary requests in the window, 50 needed",
    )


def restarted(state: RolloutState) -> RolloutState:
    """The state as a restarted operator reads it back from the API server."""
    return RolloutState.from_status(json.loads(json.dumps(state.to_status())))


class Rollout:
    """Drives `decide` like the planner: one observation per tick, state carried in between."""

    def __init__(self, policy: RolloutPolicy = POLICY, state: RolloutState = STEADY) -> None:
        self.policy, self.state = policy, state

    def obs(
        self,
        when: float,
        desired: RevisionRef = V2,
        *,
        total: int = 4,
        paused: bool = False,
        stable_ready: int | None = None,
        canary_ready: int = 0,
        failure: str | None = None,
        requests: Mapping[str, str] | None = None,
        analysis: AnalysisResult | None = None,
        validation: Mapping[str, object] | None = None,
    ) -> Observations:
        return Observations(
            desired=desired,
            total_replicas=total,
            paused=paused,
            stable_ready_replicas=total if stable_ready is None else stable_ready,
            canary_ready_replicas=canary_ready,
            canary_failure=failure,
            requests=requests or {},
            analysis=analysis,
            now=at(when),
            validation=validation,
        )

    def tick(self, when: float, desired: RevisionRef = V2, **kw: object) -> Decision:
        obs = self.obs(when, desired, **kw)  # type: ignore[arg-type]
        if obs.analysis is not None:
            # The planner only analyses when told to; tests must not feed impossible analyses.
            assert needs_analysis(self.policy, self.state, replace(obs, analysis=None))
        decision = decide(self.policy, self.state, obs)
        assert restarted(self.state) == self.state
        assert decide(self.policy, restarted(self.state), obs) == decision
        self.state = decision.state
        return decision

    @property
    def canary(self):  # type: ignore[no-untyped-def]
        assert self.state.canary is not None
        return self.state.canary


def reasons(decision: Decision) -> list[str]:
    return [e.reason for e in decision.events]


def running(step: int = 0, canary_ready: int = 1) -> Rollout:
    """A rollout of V2 whose canary pods became ready at t=0 (step `step`)."""
    r = Rollout()
    r.tick(0)
    r.tick(0, canary_ready=canary_ready)
    for n in range(step):
        r.tick(30 * n + 1, canary_ready=canary_ready, analysis=passed(30 * n + 1))
        r.tick(30 * n + 30, canary_ready=canary_ready * 2, analysis=passed(30 * n + 30))
    return r


class TestFirstRevisionAndSteadyState:
    def test_first_revision_becomes_stable_without_canary(self) -> None:
        d = Rollout(state=EMPTY).tick(0, V1)
        assert d.state.stable == V1
        assert d.state.canary is None
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 0, 0)
        assert reasons(d) == ["RevisionDeployed"]
        assert d.progressing is None
        assert d.stalled is None
        assert d.state.history == ()

    def test_first_revision_deploys_even_when_paused(self) -> None:
        d = Rollout(state=EMPTY).tick(0, V1, paused=True)
        assert d.state.stable == V1

    def test_desired_equal_to_stable_is_steady_and_quiet(self) -> None:
        d = Rollout().tick(0, V1, total=3)
        assert d.state == STEADY
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (3, 0, 0)
        assert d.events == ()
        assert d.progressing is None
        assert d.requeue_after is None


class TestCanaryStart:
    def test_new_revision_starts_a_canary_at_step_one(self) -> None:
        d = Rollout().tick(0)
        c = d.state.canary
        assert c is not None
        assert (c.revision, c.model_uri, c.step, c.weight) == (V2.revision, V2.model_uri, 0, 20)
        assert c.started_at == c.step_started_at == T0
        assert d.events[0].message == (
            "Started canary 2222222222 (file:///models/v2/model.onnx) at step 1/2 (weight 20%)"
        )

    def test_not_ready_canary_waits_with_stable_at_full_scale(self) -> None:
        d = Rollout().tick(0)
        # The stable revision keeps every pod and the route sends nothing until the canary serves.
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 1, 0)
        assert d.progressing == (
            "CanaryProgressing",
            "Canary 2222222222 at step 1/2 (weight 20%): waiting for canary pods (0/1 ready)",
        )
        assert d.requeue_after == READINESS_POLL_SECONDS

    def test_pause_clock_does_not_run_until_ready(self) -> None:
        r = Rollout()
        r.tick(0)
        r.tick(100)
        assert r.canary.step_started_at == at(100)
        assert not analysis_due(POLICY, r.state, at(100), canary_ready=False)
        d = r.tick(110, canary_ready=1)
        assert r.canary.step_started_at == at(100)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (3, 1, 20)
        # Ready now: the first analysis (the pods source's baseline) is due at once.
        assert needs_analysis(POLICY, r.state, r.obs(110, canary_ready=1))

    def test_truncates_times_to_whole_seconds(self) -> None:
        r = Rollout()
        r.tick(0.75)
        assert r.canary.step_started_at == T0

    def test_a_stable_without_ready_pods_is_replaced_directly(self) -> None:
        d = Rollout().tick(0, stable_ready=0)
        c = d.state.canary
        assert c is not None
        assert (c.step, c.weight) == (2, 100)
        assert (d.stable_replicas, d.canary_replicas) == (4, 4)
        assert "no ready pods" in d.events[0].message


class TestAnalysis:
    def test_inconclusive_counts_but_keeps_failures_and_waits(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=drifted(10))
        d = r.tick(20, canary_ready=1, analysis=too_few(20))
        assert r.canary.consecutive_failures == 1
        assert r.canary.analysis_count == 2
        assert r.canary.last_analysis == too_few(20).to_status()
        d = r.tick(40, canary_ready=1, analysis=too_few(40))
        assert r.canary.step == 0  # the pause is over, but the evidence is not there
        assert d.progressing is not None
        assert (
            "analysis inconclusive (3 canary requests in the window, 50 needed)" in d.progressing[1]
        )
        assert "pause over, waiting for a passing analysis" in d.progressing[1]

    def test_pass_before_pause_end_waits_for_the_pause(self) -> None:
        r = running()
        d = r.tick(10, canary_ready=1, analysis=passed(10))
        assert r.canary.step == 0
        assert r.canary.consecutive_failures == 0
        assert d.progressing == (
            "CanaryProgressing",
            "Canary 2222222222 at step 1/2 (weight 20%): analysis passed on 120 canary requests "
            "(error rate 0.2% ≤ 5%; p99 12 ms ≤ 500 ms); pause ends in 20s",
        )

    def test_pause_elapsed_and_pass_advance_to_next_step(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=passed(10))
        r.tick(20, canary_ready=1, analysis=passed(20))
        d = r.tick(30, canary_ready=1)
        assert (r.canary.step, r.canary.weight, r.canary.step_started_at) == (1, 50, at(30))
        assert reasons(d) == ["CanaryStepAdvanced"]
        assert d.events[0].message.startswith(
            "Canary 2222222222 at step 2/2 (weight 50%): analysis passed on 120 canary requests"
        )
        # 2 of 4 pods wanted, 1 ready: the stable keeps its step-1 share meanwhile.
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (3, 2, 20)
        r.tick(33, canary_ready=1)
        d = r.tick(35, canary_ready=2)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (2, 2, 50)
        # The pause runs from the last tick that saw the step's pods not all ready.
        assert r.canary.step_started_at == at(33)

    def test_route_sends_nothing_to_a_canary_without_ready_pods(self) -> None:
        r = running(step=1, canary_ready=1)
        d = r.tick(40, canary_ready=0)
        # Step 2 wants 2 pods; none serve, so the route must not send the canary any traffic.
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (3, 2, 0)
        assert r.canary.step_started_at == at(40)

    def test_pass_from_the_previous_step_does_not_count(self) -> None:
        r = running(step=1, canary_ready=1)
        assert r.canary.step == 1
        d = r.tick(200, canary_ready=2)
        assert r.canary.step == 1
        assert d.progressing is not None
        assert "waiting for the first analysis of this step" in d.progressing[1]

    def test_one_failure_warns_and_failure_limit_rolls_back(self) -> None:
        r = running()
        d = r.tick(10, canary_ready=1, analysis=drifted(10))
        assert r.canary.consecutive_failures == 1
        assert [(e.type, e.reason) for e in d.events] == [("Warning", "AnalysisFailed")]
        assert "PSI 0.91 > 0.25" in d.events[0].message
        d = r.tick(20, canary_ready=1, analysis=drifted(20))
        s = d.state
        assert s.canary is None
        assert s.stable == V1
        assert s.failed_revision == V2.revision
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 0, 0)
        (entry,) = s.history
        assert (entry.revision, entry.outcome) == (V2.revision, "RolledBack")
        assert entry.reason == "gate drift failed 2 times in a row (PSI 0.91 > 0.25)"
        assert (entry.started_at, entry.finished_at) == (T0, at(20))
        assert [(e.type, e.reason) for e in d.events] == [("Warning", "CanaryRolledBack")]
        assert d.events[0].message == (
            "Rolled back 2222222222: gate drift failed 2 times in a row (PSI 0.91 > 0.25); "
            "serving 1111111111"
        )
        assert d.stalled is not None
        assert d.stalled[0] == "CanaryRolledBack"
        assert d.stalled[1].startswith("Rolled back 2222222222: gate drift failed 2 times")
        assert d.progressing is None

    def test_failures_must_be_consecutive(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=drifted(10))
        r.tick(20, canary_ready=1, analysis=passed(20))
        r.tick(30, canary_ready=1, analysis=drifted(30))
        assert r.canary.consecutive_failures == 1
        assert r.state.failed_revision is None

    def test_failure_limit_one_rolls_back_at_the_first_failure(self) -> None:
        r = Rollout(rollout_policy(failure_limit=1))
        r.tick(0, canary_ready=1)
        d = r.tick(0, canary_ready=1, analysis=drifted(0))
        assert d.state.history[-1].reason == "gate drift failed (PSI 0.91 > 0.25)"

    def test_last_step_scales_the_canary_up_before_promoting_it(self) -> None:
        r = running(step=1)
        r.tick(40, canary_ready=2, analysis=passed(40))
        d = r.tick(61, canary_ready=2, analysis=passed(61))
        # Passed: the canary grows to the full 4 next to the stable's 2, route still at 50%.
        assert r.canary.revision == V2.revision
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (2, 4, 50)
        assert d.progressing is not None
        assert d.progressing[0] == "CanaryProgressing"
        assert (
            "passed all 2 steps; scaling the canary to full scale before promotion"
            in (d.progressing[1])
        )
        assert "(2/4 ready)" in d.progressing[1]
        assert d.requeue_after is not None
        assert reasons(d) == []
        d = r.tick(63, canary_ready=3)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (2, 4, 50)
        d = r.tick(65, canary_ready=4)
        s = d.state
        assert s.stable == V2
        assert s.canary is None
        assert s.history[-1].outcome == "Promoted"
        assert s.history[-1].reason == "passed all 2 steps"
        # The canary's Deployment is now the stable one, at full scale; the old one goes.
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 0, 0)
        assert reasons(d) == ["CanaryPromoted"]
        assert "it replaces 1111111111" in d.events[0].message
        assert d.progressing is None
        assert d.stalled is None

    def test_scaling_up_never_goes_back_to_the_step(self) -> None:
        r = running(step=1)
        r.tick(40, canary_ready=2, analysis=passed(40))
        r.tick(61, canary_ready=2, analysis=passed(61))
        assert r.canary.promotion == "passed all 2 steps"
        # Slow pods: an inconclusive and then one failing analysis (below the failure limit)
        # while the canary grows leave it growing, at the last step's weight.
        d = r.tick(71, canary_ready=3, analysis=too_few(71))
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (2, 4, 50)
        d = r.tick(81, canary_ready=3, analysis=drifted(81))
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (2, 4, 50)
        assert reasons(d) == ["AnalysisFailed"]
        d = r.tick(91, canary_ready=4, analysis=passed(91))
        assert d.state.stable == V2
        assert d.state.history[-1].reason == "passed all 2 steps"

    def test_a_pause_holds_the_grown_canary_without_promoting_it(self) -> None:
        r = running(step=1)
        r.tick(40, canary_ready=2, analysis=passed(40))
        r.tick(61, canary_ready=2, analysis=passed(61))
        d = r.tick(70, paused=True, canary_ready=4)
        assert d.state.canary is not None
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (2, 4, 50)
        assert d.progressing is not None
        assert d.progressing[0] == "Paused"
        d = r.tick(75, canary_ready=4)
        assert d.state.stable == V2

    def test_failures_while_scaling_up_still_roll_back(self) -> None:
        r = running(step=1)
        r.tick(40, canary_ready=2, analysis=passed(40))
        r.tick(61, canary_ready=2, analysis=passed(61))
        r.tick(71, canary_ready=3, analysis=drifted(71))
        d = r.tick(81, canary_ready=3, analysis=drifted(81))
        assert d.state.stable == V1
        assert d.state.history[-1].outcome == "RolledBack"
        assert (d.stable_replicas, d.canary_replicas) == (4, 0)

    def test_without_gates_the_pause_alone_ends_a_step(self) -> None:
        r = Rollout(rollout_policy(gated=False))
        r.tick(0, canary_ready=1)
        assert not needs_analysis(r.policy, r.state, r.obs(100, canary_ready=1))
        d = r.tick(29, canary_ready=1)
        assert r.canary.step == 0
        assert d.requeue_after == pytest.approx(1.0)
        r.tick(30, canary_ready=1)
        assert r.canary.step == 1
        d = r.tick(60, canary_ready=2)
        assert d.canary_replicas == 4
        d = r.tick(62, canary_ready=4)
        assert d.state.stable == V2


class TestSpecChanges:
    def test_new_revision_mid_rollout_supersedes_the_canary(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=drifted(10))
        d = r.tick(15, V3, canary_ready=1)
        assert reasons(d) == ["CanarySuperseded", "CanaryStarted"]
        assert d.state.history[-1].outcome == "Superseded"
        assert d.state.history[-1].reason == "superseded by revision 3333333333"
        c = d.state.canary
        assert c is not None
        assert (c.revision, c.step, c.consecutive_failures, c.last_analysis) == (
            V3.revision, 0, 0, None,
        )  # fmt: skip
        # The old canary's pods do not count for the new one.
        assert d.weight == 0
        assert d.stable_replicas == 4

    def test_spec_back_to_stable_aborts_the_canary(self) -> None:
        r = running()
        d = r.tick(10, V1, canary_ready=1)
        assert d.state.canary is None
        assert d.state.stable == V1
        assert d.state.failed_revision is None
        assert d.state.history[-1].reason == "spec returned to the stable revision 1111111111"
        assert (d.stable_replicas, d.canary_replicas) == (4, 0)
        assert d.stalled is None

    def test_failed_revision_is_not_retried(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=drifted(10))
        r.tick(20, canary_ready=1, analysis=drifted(20))
        for when in (30, 300, 3000):
            d = r.tick(when)
            assert d.state.canary is None
            assert d.events == ()
            assert d.stalled is not None
            assert d.stalled[0] == "CanaryRolledBack"
            assert "kubectl roost retry" in d.stalled[1]

    def test_changing_the_spec_after_a_rollback_clears_the_failure(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=drifted(10))
        r.tick(20, canary_ready=1, analysis=drifted(20))
        d = r.tick(30, V3)
        assert d.state.failed_revision is None
        assert d.stalled is None
        assert d.state.canary is not None
        assert d.state.canary.revision == V3.revision

    def test_canary_pod_failure_rolls_back_with_the_pod_reason(self) -> None:
        r = Rollout()
        r.tick(0)
        failure = "CrashLoopBackOff: roost: error: sha256 mismatch for file:///models/v2/model.onnx"
        assert not needs_analysis(POLICY, r.state, r.obs(5, failure=failure))
        d = r.tick(5, failure=failure)
        assert d.state.canary is None
        assert d.state.failed_revision == V2.revision
        assert d.state.history[-1].reason == f"canary pods failing: {failure}"
        assert d.stalled is not None
        assert failure in d.stalled[1]

    def test_scaling_during_a_step_follows_the_weight(self) -> None:
        r = running()
        d = r.tick(5, total=10, canary_ready=2)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (8, 2, 20)
        assert r.canary.step_started_at == T0  # already enough ready pods: the clock ran on
        d = r.tick(6, total=1, canary_ready=1)
        assert (d.stable_replicas, d.canary_replicas) == (1, 1)


class TestNoStepsReplace:
    policy = rollout_policy([])

    def test_new_revision_runs_alongside_then_replaces(self) -> None:
        r = Rollout(self.policy)
        d = r.tick(0)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 4, 0)
        assert d.progressing is not None
        assert d.progressing[0] == "Replacing"
        assert not needs_analysis(self.policy, r.state, r.obs(0, canary_ready=4))
        d = r.tick(5, canary_ready=3)
        assert d.state.canary is not None
        d = r.tick(10, canary_ready=4)
        assert d.state.stable == V2
        assert d.state.history[-1].reason == "ready at full scale (no rollout steps)"
        assert (d.stable_replicas, d.canary_replicas) == (4, 0)

    def test_crash_looping_replacement_is_rolled_back(self) -> None:
        r = Rollout(self.policy)
        r.tick(0)
        d = r.tick(5, failure="CrashLoopBackOff: roost: error: model not found")
        assert d.state.stable == V1
        assert d.state.failed_revision == V2.revision


class TestPaused:
    def test_paused_canary_stays_where_it_is(self) -> None:
        r = running()
        r.tick(10, canary_ready=1, analysis=passed(10))
        before = r.state
        obs = r.obs(100, V3, paused=True, canary_ready=1)
        assert not needs_analysis(POLICY, before, obs)
        d = r.tick(100, V3, paused=True, canary_ready=1)
        assert d.state == before
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (3, 1, 20)
        assert d.events == ()
        assert d.progressing == (
            "Paused",
            "Canary 2222222222 at step 1/2 (weight 20%): paused (spec.paused is true)",
        )
        assert d.requeue_after is None
        # Resumed: the pass from before and the pause that ran out meanwhile end the step.
        d = r.tick(101, canary_ready=1)
        assert r.canary.step == 1

    def test_paused_new_revision_does_not_start(self) -> None:
        d = Rollout().tick(0, paused=True)
        assert d.state == STEADY
        assert d.progressing is not None
        assert d.progressing[0] == "Paused"
        assert "Rollout of 2222222222 paused" in d.progressing[1]


class TestManualRequests:
    def test_promote_request_skips_steps_and_gates_then_promotes_at_full_scale(self) -> None:
        r = running()
        token = {"promote": "2026-03-01T12:00:05Z"}
        d = r.tick(5, canary_ready=1, requests=token)
        assert reasons(d) == ["PromotionRequested"]
        assert d.state.canary is not None
        assert d.state.canary.promotion == "promoted by user"
        assert d.state.handled_requests == token
        # Step 1 keeps its split and weight while the canary grows next to the stable revision.
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (3, 4, 20)
        assert d.progressing is not None
        assert "promoted by user; scaling the canary to full scale" in d.progressing[1]
        # Gates no longer judge it: the planner is asked for no analysis.
        assert not needs_analysis(POLICY, r.state, r.obs(15, canary_ready=3, requests=token))
        d = r.tick(15, canary_ready=3, requests=token)
        assert d.state.canary is not None
        assert d.events == ()
        assert d.canary_replicas == 4
        d = r.tick(20, canary_ready=4, requests=token)
        assert d.state.stable == V2
        assert d.state.canary is None
        assert (d.state.history[-1].outcome, d.state.history[-1].reason) == (
            "Promoted",
            "promoted by user",
        )
        assert (d.stable_replicas, d.canary_replicas) == (4, 0)

    def test_promote_request_of_an_unready_canary_sends_it_no_traffic(self) -> None:
        r = Rollout()
        r.tick(0)
        d = r.tick(2, canary_ready=0, requests={"promote": "t"})
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 4, 0)

    def test_requested_promotion_goes_on_while_paused(self) -> None:
        r = running()
        r.tick(5, canary_ready=1, requests={"promote": "t"})
        d = r.tick(10, paused=True, canary_ready=2, requests={"promote": "t"})
        assert d.canary_replicas == 4
        d = r.tick(12, paused=True, canary_ready=4, requests={"promote": "t"})
        assert d.state.stable == V2

    def test_requested_promotion_still_rolls_back_failing_pods(self) -> None:
        r = running()
        r.tick(5, canary_ready=1, requests={"promote": "t"})
        d = r.tick(10, canary_ready=1, failure="CrashLoopBackOff", requests={"promote": "t"})
        assert d.state.canary is None
        assert d.state.failed_revision == V2.revision

    def test_a_newer_revision_supersedes_a_requested_promotion(self) -> None:
        r = running()
        r.tick(5, canary_ready=1, requests={"promote": "t"})
        d = r.tick(10, V3, canary_ready=1, requests={"promote": "t"})
        assert reasons(d) == ["CanarySuperseded", "CanaryStarted"]
        assert d.state.canary is not None
        assert (d.state.canary.revision, d.state.canary.promotion) == (V3.revision, None)

    def test_abort_request_rolls_back(self) -> None:
        r = running()
        token = {"roost.dev/abort": "t1"}
        d = r.tick(5, canary_ready=1, requests=token)
        assert d.state.canary is None
        assert d.state.failed_revision == V2.revision
        assert (d.state.history[-1].outcome, d.state.history[-1].reason) == (
            "Aborted",
            "aborted by user",
        )
        assert [(e.type, e.reason) for e in d.events] == [("Warning", "CanaryAborted")]
        assert d.stalled is not None
        assert d.stalled[1].startswith("Rolled back 2222222222: aborted by user")
        assert d.state.handled_requests == {"abort": "t1"}
        # The annotation stays (GitOps): the same token does nothing more.
        d = r.tick(10, requests=token)
        assert d.events == ()
        assert d.state.canary is None

    def test_retry_request_starts_the_failed_revision_again(self) -> None:
        r = running()
        r.tick(5, canary_ready=1, requests={"abort": "t1"})
        d = r.tick(10, requests={"abort": "t1", "retry": "t2"})
        assert reasons(d) == ["RetryRequested", "CanaryStarted"]
        assert d.state.failed_revision is None
        assert d.state.canary is not None
        assert d.state.handled_requests == {"abort": "t1", "retry": "t2"}
        d = r.tick(11, requests={"abort": "t1", "retry": "t2"})
        assert d.events == ()
        assert d.state.canary is not None

    def test_stale_token_never_acts_on_a_later_canary(self) -> None:
        r = Rollout()
        d = r.tick(0, V1, requests={"promote": "old"})
        assert reasons(d) == ["RequestIgnored"]
        assert d.state.handled_requests == {"promote": "old"}
        d = r.tick(10, requests={"promote": "old"})
        assert d.state.canary is not None  # started, not promoted
        d = r.tick(20, requests={"promote": "new"})
        assert d.state.canary is not None
        assert d.state.canary.promotion == "promoted by user"
        d = r.tick(25, canary_ready=4, requests={"promote": "new"})
        assert d.state.stable == V2

    def test_requests_act_while_paused(self) -> None:
        r = running()
        d = r.tick(5, paused=True, canary_ready=1, requests={"abort": "t"})
        assert d.state.canary is None
        assert d.state.failed_revision == V2.revision

    def test_needs_analysis_skips_a_tick_that_promotes_or_aborts(self) -> None:
        r = running()
        assert needs_analysis(POLICY, r.state, r.obs(5, canary_ready=1))
        obs = r.obs(5, canary_ready=1, requests={"promote": "t"})
        assert not needs_analysis(POLICY, r.state, obs)


class TestRequeueAndHistory:
    def test_requeue_is_the_earlier_of_next_analysis_and_pause_end(self) -> None:
        r = running()
        r.tick(0, canary_ready=1, analysis=too_few(0))
        d = r.tick(3, canary_ready=1)
        assert d.requeue_after == pytest.approx(7.0)
        r.tick(10, canary_ready=1, analysis=passed(10))
        r.tick(20, canary_ready=1, analysis=passed(20))
        d = r.tick(27, canary_ready=1)
        assert d.requeue_after == pytest.approx(3.0)  # pause ends at 30, analysis due at 30

    def test_requeue_never_below_one_second(self) -> None:
        r = running()
        r.tick(0, canary_ready=1, analysis=too_few(0))
        d = r.tick(50, canary_ready=1)  # an analysis is overdue
        assert analysis_due(POLICY, r.state, at(50), canary_ready=True)
        assert d.requeue_after == 1.0

    def test_analysis_due_every_interval(self) -> None:
        r = running()
        r.tick(0, canary_ready=1, analysis=too_few(0))
        assert canary_ready(POLICY, r.state, r.obs(9, canary_ready=1))
        assert not analysis_due(POLICY, r.state, at(9), canary_ready=True)
        assert analysis_due(POLICY, r.state, at(10), canary_ready=True)
        # A clock that went backwards does not block analysis.
        assert analysis_due(POLICY, r.state, at(-60), canary_ready=True)

    def test_history_keeps_the_last_ten(self) -> None:
        r = Rollout()
        revisions = [RevisionRef(f"{n:010d}", f"file:///m/{n}.onnx") for n in range(2, 16)]
        for n, rev in enumerate(revisions):
            r.tick(n, rev)
        assert len(r.state.history) == HISTORY_LIMIT
        assert [h.revision for h in r.state.history] == [v.revision for v in revisions[3:13]]
        assert all(h.outcome == "Superseded" for h in r.state.history)
