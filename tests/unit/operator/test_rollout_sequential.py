"""The state machine with sequential gates: decisive failures, evidence, the progress deadline.

Like test_rollout_transitions, every tick also restarts the "operator" through JSON.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from policies import rollout_policy
from roost_operator.gates import AnalysisResult
from roost_operator.rollout import (
    Decision,
    Observations,
    RevisionRef,
    RolloutState,
    decide,
    needs_analysis,
)
from roost_operator.spec import RolloutPolicy
from roost_operator.verdicts import GateVerdict

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
V1 = RevisionRef("1111111111", "file:///models/v1/model.onnx")
V2 = RevisionRef("2222222222", "file:///models/v2/model.onnx")
POLICY = rollout_policy([(20, 30.0), (50, 30.0)], progress_deadline="60s")
STEADY = RolloutState(stable=V1, canary=None, failed_revision=None, history=(), handled_requests={})
EVIDENCE = {"intervals": 1, "requests": {"canary": {"2xx": 90.0}, "stable": {"2xx": 300.0}}}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def analysis(when: float, verdict: str, evidence: dict[str, Any] | None = None) -> AnalysisResult:
    words = {
        "pass": "5xx +0.10 pp [-0.20, +0.40 pp], margin +0.50 pp: within margin, 99 % confidence",
        "fail": "5xx +4.00 pp [+2.10, +5.90 pp], margin +0.50 pp: worse than margin, 99 % "
        "confidence",
        "inconclusive": "5xx +0.30 pp [-0.90, +1.50 pp], margin +0.50 pp: not sure yet",
    }[verdict]
    gate = GateVerdict("errorRate", "enforce", verdict, 0.001, -0.002, 0.004, 0.005, None, words)
    return AnalysisResult(
        time=at(when),
        verdict=verdict,  # type: ignore[arg-type]
        gates=(gate,),
        canary_requests=90,
        message=words,
        evidence=evidence if evidence is not None else EVIDENCE,
        decisive=verdict == "fail",
    )


class Rollout:
    def __init__(self, policy: RolloutPolicy = POLICY) -> None:
        self.policy, self.state = policy, STEADY

    def tick(self, when: float, ready: int = 1, result: AnalysisResult | None = None) -> Decision:
        obs = Observations(V2, 4, False, 4, ready, None, {}, result, at(when))
        if result is not None:
            assert needs_analysis(self.policy, self.state, replace(obs, analysis=None))
        back = RolloutState.from_status(json.loads(json.dumps(self.state.to_status())))
        assert back == self.state
        decision = decide(self.policy, self.state, obs)
        assert decide(self.policy, back, obs) == decision
        self.state = decision.state
        return decision


def started() -> Rollout:
    r = Rollout()
    r.tick(0, ready=0)
    r.tick(0)
    return r


def test_a_sequential_failure_rolls_back_at_once() -> None:
    r = started()
    d = r.tick(0, result=analysis(0, "fail"))
    assert d.state.canary is None
    (entry,) = d.state.history
    assert entry.outcome == "RolledBack"
    assert "worse than margin, 99 % confidence" in entry.reason


def test_evidence_is_persisted_and_survives_a_restart() -> None:
    r = started()
    r.tick(0, result=analysis(0, "inconclusive"))
    assert r.state.canary is not None
    assert r.state.canary.evidence == EVIDENCE
    status = json.loads(json.dumps(r.state.to_status()))
    assert status["canary"]["evidence"] == EVIDENCE
    # An analysis without new evidence (a pods source collecting its baseline) keeps it.
    r.tick(10, result=replace(analysis(10, "inconclusive"), evidence=None))
    assert r.state.canary.evidence == EVIDENCE


@pytest.mark.parametrize("policy", ["rollback", "promote", "pause"])
def test_an_inconclusive_step_ends_by_its_deadline(policy: str) -> None:
    r = Rollout(
        rollout_policy([(20, 30.0), (50, 30.0)], progress_deadline="60s", on_inconclusive=policy)
    )
    r.tick(0, ready=0)
    r.tick(0)
    for t in range(0, 60, 10):
        d = r.tick(t, result=analysis(t, "inconclusive"))
        assert r.state.canary is not None, t
    d = r.tick(60, result=analysis(60, "inconclusive"))
    assert "ProgressDeadlineExceeded" in [e.reason for e in d.events] or policy == "pause"
    if policy == "rollback":
        assert d.state.canary is None
        (entry,) = d.state.history
        assert entry.outcome == "RolledBack"
        assert entry.reason.startswith("deadline verdict (onInconclusive: rollback): progress")
        assert "not sure yet" in entry.reason
    elif policy == "promote":
        c = d.state.canary
        assert c is not None
        assert c.promotion is not None
        assert c.promotion.startswith("deadline verdict (onInconclusive: promote), not a pass")
        d = r.tick(61, ready=4)
        (entry,) = d.state.history
        assert entry.outcome == "Promoted"
        assert "not a pass" in entry.reason
    else:
        assert d.state.canary is not None
        assert d.stalled is not None
        assert d.stalled[0] == "ProgressDeadlineExceeded"
        # The gates keep judging: a later pass still advances the step.
        d = r.tick(70, result=analysis(70, "pass"))
        assert d.state.canary is not None
        assert d.state.canary.step == 1


def test_the_deadline_never_cuts_a_pause_short() -> None:
    r = Rollout(rollout_policy([(20, 30.0), (50, 30.0)], progress_deadline="5s"))
    r.tick(0, ready=0)
    r.tick(0)
    for t in range(0, 30, 10):
        r.tick(t, result=analysis(t, "inconclusive"))
        assert r.state.canary is not None
    d = r.tick(30, result=analysis(30, "inconclusive"))
    assert d.state.canary is None  # the 30 s pause is over: now the deadline applies


def test_without_deadline_an_inconclusive_step_waits() -> None:
    r = Rollout(rollout_policy([(20, 30.0), (50, 30.0)], progress_deadline="0s"))
    r.tick(0, ready=0)
    r.tick(0)
    for t in range(0, 600, 10):
        r.tick(t, result=analysis(t, "inconclusive"))
    assert r.state.canary is not None


def test_a_routing_mismatch_pauses_the_step_past_its_deadline() -> None:
    r = started()
    why = "routing check: canary and stable receive different inputs (...): rollout paused"
    paused = replace(analysis(0, "inconclusive"), paused=why, message=why)
    d = r.tick(0, result=paused)
    assert [e.reason for e in d.events] == ["RoutingMismatch"]
    assert r.state.canary is not None
    assert r.state.canary.last_analysis is not None
    assert r.state.canary.last_analysis["paused"] == why
    for t in range(10, 200, 10):  # far past the 60 s deadline (onInconclusive: rollback)
        d = r.tick(t, result=replace(paused, time=at(t)))
        assert d.state.canary is not None, t
        assert d.state.canary.step == 0, t
        assert d.stalled is not None
        assert d.stalled[0] == "RoutingMismatch"
        assert "RoutingMismatch" not in [e.reason for e in d.events]  # said once
    # Routing fixed (the check no longer finds a mismatch): the gates decide again.
    d = r.tick(200, result=analysis(200, "pass"))
    assert d.state.canary is not None
    assert d.state.canary.step == 1
