"""No traffic before the operator allows it: the traffic gate, and validation before any weight.

The rollout machine holds a canary with ready containers at weight 0 until
`spec.rollout.validation` ran; the planner opens the ``roost.dev/traffic`` readiness gate of
stable pods at once and of canary pods only when the machine lets the canary take traffic.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from roost_operator import planner
from roost_operator.builders import Owner, build_deployment
from roost_operator.pods import summarise_pods
from roost_operator.rollout import needs_analysis, needs_validation, traffic_allowed
from roost_operator.spec import parse_spec
from roost_operator.validationspec import ValidationSpec
from unit.operator.test_operator_planner import IMAGE, NOW, V1, V2, md, observed_of
from unit.operator.test_operator_planner import pod as planner_pod
from unit.operator.test_rollout_transitions import POLICY, Rollout, reasons
from unit.operator.test_rollout_transitions import V2 as R2

VALIDATED = replace(POLICY, validation=ValidationSpec())
FAILED = {"result": "failed", "message": "input X has 12 features, stable has 13"}
PASSED = {"result": "passed", "message": "signature compatible; golden set: 40 rows"}


def _gated(rev: str, i: int, *, containers: bool = True, gate: str | None = None) -> dict[str, Any]:
    p = planner_pod(rev, i)
    conditions = [
        {"type": "ContainersReady", "status": "True" if containers else "False"},
        {"type": "Ready", "status": "True" if containers and gate == "True" else "False"},
    ]
    if gate is not None:
        conditions.append({"type": "roost.dev/traffic", "status": gate})
    p["status"]["conditions"] = conditions
    p["spec"]["readinessGates"] = [{"conditionType": "roost.dev/traffic"}]
    return p


class TestMachine:
    def test_canary_with_ready_containers_waits_at_weight_zero_for_validation(self) -> None:
        r = Rollout(VALIDATED)
        r.tick(0)
        d = r.tick(1, canary_ready=1)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 1, 0)
        assert d.progressing is not None
        assert "validating the canary before any traffic" in d.progressing[1]
        assert not traffic_allowed(VALIDATED, r.canary)
        assert needs_validation(VALIDATED, r.state, r.obs(2, canary_ready=1))
        assert not needs_validation(VALIDATED, r.state, r.obs(2, canary_ready=0))
        # No analysis of a canary that has no traffic.
        assert not needs_analysis(VALIDATED, r.state, r.obs(2, canary_ready=1))

    def test_failed_validation_rolls_back_with_the_reason(self) -> None:
        r = Rollout(VALIDATED)
        r.tick(0)
        d = r.tick(1, canary_ready=1, validation=FAILED)
        assert reasons(d) == ["ValidationFailed", "CanaryRolledBack"]
        assert d.state.canary is None
        assert d.state.failed_revision == R2.revision
        entry = d.state.history[-1]
        assert (entry.outcome, entry.reason) == (
            "RolledBack",
            "validation: input X has 12 features, stable has 13",
        )
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 0, 0)

    def test_passed_validation_opens_the_first_step_and_starts_its_pause(self) -> None:
        r = Rollout(VALIDATED)
        r.tick(0)
        r.tick(1, canary_ready=1)
        d = r.tick(5, canary_ready=1, validation=PASSED)
        assert reasons(d) == ["ValidationPassed"]
        assert d.weight == 20
        assert r.canary.validation == PASSED
        assert r.canary.step_started_at == r.obs(5).now
        assert traffic_allowed(VALIDATED, r.canary)
        assert not needs_validation(VALIDATED, r.state, r.obs(6, canary_ready=1))

    def test_without_validation_the_canary_takes_traffic_when_ready(self) -> None:
        r = Rollout(POLICY)
        r.tick(0)
        assert traffic_allowed(POLICY, r.canary)
        assert r.tick(1, canary_ready=1).weight == 20

    def test_a_full_scale_replacement_is_validated_while_the_stable_serves(self) -> None:
        """No steps: the new revision runs at full scale beside the stable, gate closed, until
        validated; a pass promotes it at once, a failure rolls it back before any traffic."""
        policy = replace(VALIDATED, steps=())
        r = Rollout(policy)
        r.tick(0)
        d = r.tick(1, canary_ready=4)
        assert (d.stable_replicas, d.canary_replicas, d.weight) == (4, 4, 0)
        assert not traffic_allowed(policy, r.canary)
        assert needs_validation(policy, r.state, r.obs(2, canary_ready=4))
        assert not needs_validation(policy, r.state, r.obs(2, canary_ready=3))
        passed = Rollout(policy, r.state).tick(3, canary_ready=4, validation=PASSED)
        assert reasons(passed) == ["ValidationPassed", "CanaryPromoted"]
        assert passed.state.stable is not None
        assert passed.state.stable.revision == R2.revision
        failed = Rollout(policy, r.state).tick(3, canary_ready=4, validation=FAILED)
        assert reasons(failed) == ["ValidationFailed", "CanaryRolledBack"]
        assert failed.state.failed_revision == R2.revision
        assert (failed.stable_replicas, failed.canary_replicas, failed.weight) == (4, 0, 0)

    def test_without_a_ready_stable_pod_validation_is_recorded_as_skipped(self) -> None:
        r = Rollout(VALIDATED)
        r.tick(0, stable_ready=0)
        assert r.canary.validation is not None
        assert r.canary.validation["result"] == "skipped"
        assert "no ready pod to compare with" in r.canary.validation["message"]
        assert traffic_allowed(VALIDATED, r.canary)
        assert not needs_validation(VALIDATED, r.state, r.obs(1, stable_ready=0, canary_ready=4))
        d = r.tick(1, stable_ready=0, canary_ready=4)
        assert "CanaryPromoted" in reasons(d)


class TestPods:
    def test_ready_counts_containers_and_gated_lists_closed_gates(self) -> None:
        summary = summarise_pods(
            [
                _gated("a", 1),
                _gated("a", 2, gate="True"),
                _gated("a", 3, containers=False),
                planner_pod("a", 4),  # a pod from before the gate: Ready decides
            ],
            8080,
        )["a"]
        assert summary.ready == 3
        assert summary.gated == ("wine-a-1",)


class TestPlanner:
    def test_pod_template_carries_the_traffic_gate(self) -> None:
        spec = parse_spec({"model": V1})
        deployment = build_deployment(Owner("wine", "ml", "u"), spec, "r1", 1, IMAGE)
        gates = deployment["spec"]["template"]["spec"]["readinessGates"]
        assert gates == [{"conditionType": "roost.dev/traffic"}]

    def test_stable_pods_open_at_once_canary_pods_after_validation(self) -> None:
        spec = {
            "model": V1,
            "replicas": 2,
            "rollout": {"steps": [{"weight": 50}], "validation": {}},
        }
        first = planner.plan(md(spec), {}, [], None, NOW, IMAGE)
        stable = first.status["stable"]["revision"]
        pods = [_gated(stable, 1), _gated(stable, 2, gate="True")]
        plan = planner.plan(md(spec, first.status), observed_of(first), pods, None, NOW, IMAGE)
        assert plan.traffic == (f"wine-{stable}-1",)
        # A new model: its canary's containers are ready, its gate stays closed.
        spec2 = {**spec, "model": V2}
        opened = [_gated(stable, 1, gate="True"), _gated(stable, 2, gate="True")]
        started = planner.plan(md(spec2, plan.status), observed_of(plan), opened, None, NOW, IMAGE)
        canary = started.status["canary"]["revision"]
        pods = [*opened, _gated(canary, 3)]
        waiting = planner.plan(md(spec2, started.status), {}, pods, None, NOW, IMAGE)
        assert waiting.traffic == ()
        request = planner.validation_request(md(spec2, waiting.status), pods, NOW, IMAGE)
        assert request is not None
        assert [p.name for p in request.canary_pods] == [f"wine-{canary}-3"]
        assert request.stable_revision == stable
        after = planner.plan(
            md(spec2, waiting.status), {}, pods, None, NOW, IMAGE, validation=PASSED
        )
        assert after.traffic == (f"wine-{canary}-3",)
        assert after.status["canary"]["validation"] == PASSED


def test_a_paused_canary_awaiting_validation_gets_no_route_weight() -> None:
    r = Rollout(VALIDATED)
    r.tick(0)
    d = r.tick(1, canary_ready=1, paused=True)
    assert (d.canary_replicas, d.weight) == (1, 0)
    assert not traffic_allowed(VALIDATED, r.canary)


def test_analysis_leaves_validation_requests_out() -> None:
    from roost_operator.gates import REQUESTS, series_key, window_from_samples

    base = {"model": "wine", "revision": "c", "protocol": "rest"}
    deltas = {
        series_key(REQUESTS, {**base, "source": "client", "code": "200"}): 30.0,
        series_key(REQUESTS, {**base, "source": "validation", "code": "200"}): 8.0,
        series_key(REQUESTS, {**base, "source": "validation", "code": "400"}): 2.0,
    }
    window = window_from_samples([deltas], [{}])
    assert window.requests == {"200": 30.0}


def test_the_traffic_gate_is_patched_on_the_pods_status_subresource() -> None:
    from roost_operator.applier import collection_path

    assert collection_path("v1", "Pod", "ml") == "/api/v1/namespaces/ml/pods"
