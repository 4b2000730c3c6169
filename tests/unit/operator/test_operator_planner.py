"""The planner: spec + status + observed children and pods -> desired objects and new status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from roost_operator import planner, pods
from roost_operator.applier import status_patch
from roost_operator.planner import ChildKey, ModelDeploymentObject, Plan

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
IMAGE = "ghcr.io/roost-dev/roost-serving:0.1.0"
V1 = {"uri": "file:///models/wine-v1/model.onnx"}
V2 = {"uri": "file:///models/wine-v2/model.onnx"}


def md(
    spec: dict[str, Any], status: dict[str, Any] | None = None, **kw: Any
) -> ModelDeploymentObject:
    return ModelDeploymentObject(
        name="wine",
        namespace="ml",
        uid="uid-1",
        generation=kw.pop("generation", 1),
        spec=spec,
        status=status or {},
        annotations=kw.pop("annotations", {}),
    )


def pod(rev: str, i: int, *, ready: bool = True, crash: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "podIP": f"127.0.10.{i}",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if crash:
        status["containerStatuses"] = [
            {
                "name": "server",
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": f"INFO starting\nroost: error: {crash}\n",
                    }
                },
            }
        ]
    return {
        "metadata": {
            "name": f"wine-{rev}-{i}",
            "uid": f"pod-{rev}-{i}",
            "labels": {"roost.dev/modeldeployment": "wine", "roost.dev/revision": rev},
        },
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": status,
    }


def kinds(plan: Plan) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in plan.apply]


def deployments(plan: Plan) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in plan.apply if m["kind"] == "Deployment"}


def condition(plan: Plan, kind: str) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == kind)


def observed_of(plan: Plan) -> dict[ChildKey, dict[str, Any]]:
    return {ChildKey(m["apiVersion"], m["kind"], m["metadata"]["name"]): m for m in plan.apply}


def settle(spec: dict[str, Any], replicas: int) -> tuple[Plan, str]:
    """A first revision planned, then planned again with all its pods ready."""
    first = planner.plan(md(spec), {}, [], None, NOW, IMAGE)
    rev = first.status["stable"]["revision"]
    pods = [pod(rev, i) for i in range(replicas)]
    ready = planner.plan(md(spec, first.status), observed_of(first), pods, None, NOW, IMAGE)
    return ready, rev


class TestFirstRevision:
    def test_deployment_service_and_pdb(self) -> None:
        plan = planner.plan(md({"model": V1, "replicas": 2}), {}, [], None, NOW, IMAGE)
        rev = plan.status["stable"]["revision"]
        assert kinds(plan) == [
            ("Deployment", f"wine-{rev}"),
            ("Service", "wine"),
            ("PodDisruptionBudget", "wine"),
        ]
        assert deployments(plan)[f"wine-{rev}"]["spec"]["replicas"] == 2
        assert plan.status["selector"] == "roost.dev/modeldeployment=wine"
        assert plan.status["observedGeneration"] == 1
        assert condition(plan, "Ready")["status"] == "False"
        assert condition(plan, "Reconciling")["status"] == "True"
        assert plan.requeue_after is not None

    def test_ready_when_pods_are(self) -> None:
        plan, rev = settle({"model": V1, "replicas": 2}, 2)
        assert condition(plan, "Ready")["status"] == "True"
        assert condition(plan, "Reconciling")["status"] == "False"
        assert condition(plan, "Stalled")["status"] == "False"
        assert plan.status["readyReplicas"] == 2
        assert plan.status["stable"] == {
            "revision": rev,
            "modelUri": V1["uri"],
            "readyReplicas": 2,
        }
        assert any(e.reason == "Ready" for e in plan.events)

    def test_credentials_in_the_model_uri_stay_out_of_status_and_events(self) -> None:
        uri = "https://bob:s3cr3tpass@models.example/wine.onnx?X-Amz-Signature=abcdef123"
        plan, _ = settle({"model": {"uri": uri}, "replicas": 1}, 1)
        shown = "https://***@models.example/wine.onnx?X-Amz-Signature=***"
        assert plan.status["stable"]["modelUri"] == shown
        text = repr(plan.status) + repr(plan.events)
        assert "s3cr3tpass" not in text
        assert "abcdef123" not in text
        # The pod itself still gets the real URI (from the spec) to fetch the model.
        env = next(iter(deployments(plan).values()))["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "ROOST_MODEL", "value": uri} in env["env"]

    def test_steady_state_changes_nothing(self) -> None:
        spec = {"model": V1, "replicas": 2}
        plan, rev = settle(spec, 2)
        later = NOW + timedelta(minutes=5)
        again = planner.plan(
            md(spec, plan.status), observed_of(plan), [pod(rev, 0), pod(rev, 1)], None, later, IMAGE
        )
        assert status_patch(plan.status, again.status) == {}
        assert again.events == ()
        assert again.delete == ()

    def test_status_patch_reads_nested_nulls_as_the_server_stores_them(self) -> None:
        stored = {"canary": {"revision": "r2", "step": 1}}
        # The planner writes null members (they delete stale ones); the server drops them.
        new = {"canary": {"revision": "r2", "step": 1, "promotion": None, "lastAnalysis": None}}
        assert status_patch(stored, new) == {}
        stale = {"canary": {"revision": "r2", "step": 1, "promotion": "promoted by user"}}
        assert status_patch(stale, new) == new
        assert status_patch(stored, {}) == {"canary": None}


class TestTrafficRoute:
    ROUTE = {"httpRoute": {"name": "wine-route", "parentRefs": [{"name": "gw"}]}}

    def test_route_and_revision_services_are_pruned_when_the_spec_drops_them(self) -> None:
        spec = {"model": V1, "replicas": 2, "traffic": self.ROUTE}
        plan, rev = settle(spec, 2)
        assert ("HTTPRoute", "wine-route") in kinds(plan)
        assert ("Service", f"wine-{rev}") in kinds(plan)
        assert plan.status["httpRoute"] == "wine-route"
        plain = {"model": V1, "replicas": 2}
        pods = [pod(rev, 0), pod(rev, 1)]
        later = planner.plan(md(plain, plan.status), observed_of(plan), pods, None, NOW, IMAGE)
        assert later.status["stable"]["revision"] == rev  # traffic is not part of a revision
        assert {(k.kind, k.name) for k in later.delete} == {
            ("HTTPRoute", "wine-route"),
            ("Service", f"wine-{rev}"),
        }
        assert later.status["httpRoute"] is None
        assert status_patch(plan.status, later.status)["httpRoute"] is None

    def test_grpc_route_is_applied_beside_the_http_route_and_pruned_alone(self) -> None:
        grpc = {"grpcRoute": {"name": "wine-grpc", "parentRefs": [{"name": "gw-grpc"}]}}
        spec = {"model": V1, "replicas": 2, "traffic": {**self.ROUTE, **grpc}}
        plan, rev = settle(spec, 2)
        assert {("HTTPRoute", "wine-route"), ("GRPCRoute", "wine-grpc")} <= set(kinds(plan))
        assert plan.status["grpcRoute"] == "wine-grpc"
        http_only = {"model": V1, "replicas": 2, "traffic": self.ROUTE}
        pods = [pod(rev, 0), pod(rev, 1)]
        later = planner.plan(md(http_only, plan.status), observed_of(plan), pods, None, NOW, IMAGE)
        assert {(k.kind, k.name) for k in later.delete} == {("GRPCRoute", "wine-grpc")}
        assert later.status["grpcRoute"] is None


class TestScaling:
    def test_scale_keeps_the_revision(self) -> None:
        plan, rev = settle({"model": V1, "replicas": 2}, 2)
        scaled = planner.plan(
            md({"model": V1, "replicas": 3}, plan.status, generation=2),
            observed_of(plan),
            [pod(rev, 0), pod(rev, 1)],
            None,
            NOW,
            IMAGE,
        )
        assert list(deployments(scaled)) == [f"wine-{rev}"]
        assert deployments(scaled)[f"wine-{rev}"]["spec"]["replicas"] == 3
        assert condition(scaled, "Ready")["status"] == "False"
        assert scaled.status["observedGeneration"] == 2

    def test_pdb_pruned_when_down_to_one(self) -> None:
        plan, rev = settle({"model": V1, "replicas": 2}, 2)
        one = planner.plan(
            md({"model": V1, "replicas": 1}, plan.status),
            observed_of(plan),
            [pod(rev, 0)],
            None,
            NOW,
            IMAGE,
        )
        assert ChildKey("policy/v1", "PodDisruptionBudget", "wine") in one.delete

    def test_autoscaling_adds_an_hpa(self) -> None:
        spec = {"model": V1, "replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
        plan = planner.plan(md(spec), {}, [], None, NOW, IMAGE)
        assert ("HorizontalPodAutoscaler", "wine") in kinds(plan)


class TestFailures:
    def test_crash_looping_pods_stall_with_the_reason(self) -> None:
        spec = {"model": {"uri": "file:///nope/model.onnx"}}
        first = planner.plan(md(spec), {}, [], None, NOW, IMAGE)
        rev = first.status["stable"]["revision"]
        crashing = [pod(rev, 0, ready=False, crash="cannot read file:///nope/model.onnx")]
        plan = planner.plan(md(spec, first.status), observed_of(first), crashing, None, NOW, IMAGE)
        stalled = condition(plan, "Stalled")
        assert stalled["status"] == "True"
        assert stalled["reason"] == "PodsFailing"
        assert (
            "CrashLoopBackOff: roost: error: cannot read file:///nope/model.onnx"
            in stalled["message"]
        )
        assert condition(plan, "Ready")["status"] == "False"
        assert any(e.type == "Warning" and "roost: error" in e.message for e in plan.events)

    def test_invalid_spec_keeps_children_and_stalls(self) -> None:
        plan, _ = settle({"model": V1}, 1)
        bad = planner.plan(
            md({"model": {"uri": "ftp://x/m.onnx"}}, plan.status),
            observed_of(plan),
            [],
            None,
            NOW,
            IMAGE,
        )
        assert bad.spec_error is not None
        assert bad.apply == ()
        assert bad.delete == ()
        assert condition(bad, "Stalled")["reason"] == "InvalidSpec"
        assert "spec.model.uri" in condition(bad, "Stalled")["message"]


class TestCanary:
    spec: dict[str, Any] = {
        "model": V1,
        "replicas": 4,
        "rollout": {"steps": [{"weight": 25, "pause": "10s"}, {"weight": 50, "pause": "10s"}]},
    }

    def test_new_model_starts_a_canary_next_to_stable(self) -> None:
        plan, stable_rev = settle(self.spec, 4)
        new_spec = {**self.spec, "model": V2}
        stable_pods = [pod(stable_rev, i) for i in range(4)]
        canary = planner.plan(
            md(new_spec, plan.status, generation=2),
            observed_of(plan),
            stable_pods,
            None,
            NOW,
            IMAGE,
        )
        canary_rev = canary.status["canary"]["revision"]
        assert canary_rev != stable_rev
        assert canary.status["canary"]["weight"] == 25
        # The stable revision was built from the old spec: only its replicas change.
        assert list(deployments(canary)) == [f"wine-{canary_rev}"]
        assert deployments(canary)[f"wine-{canary_rev}"]["spec"]["replicas"] == 1
        # The stable revision keeps every pod until the canary's pod is ready.
        assert canary.scale == ((f"wine-{stable_rev}", 4),)
        assert canary.delete == ()
        assert condition(canary, "Reconciling")["status"] == "True"
        observed = {**observed_of(plan), **observed_of(canary)}
        with_canary = [*stable_pods, pod(canary_rev, 9)]
        stepped = planner.plan(
            md(new_spec, canary.status, generation=2), observed, with_canary, None, NOW, IMAGE
        )
        assert stepped.scale == ((f"wine-{stable_rev}", 3),)
        assert stepped.status["canary"]["readyReplicas"] == 1

    def test_analysis_requested_once_canary_ready(self) -> None:
        spec = {
            **self.spec,
            "rollout": {**self.spec["rollout"], "analysis": {"gates": {"errorRate": {"max": 0.1}}}},
        }
        plan, stable_rev = settle(spec, 4)
        new = md({**spec, "model": V2}, plan.status)
        canary = planner.plan(
            new, observed_of(plan), [pod(stable_rev, i) for i in range(4)], None, NOW, IMAGE
        )
        canary_rev = canary.status["canary"]["revision"]
        pods = [pod(stable_rev, i) for i in range(3)] + [pod(canary_rev, 9)]
        request = planner.analysis_request(
            md({**spec, "model": V2}, canary.status), pods, NOW, IMAGE
        )
        assert request is not None
        assert request.canary_revision == canary_rev
        assert [p.ip for p in request.canary_pods] == ["127.0.10.9"]
        assert len(request.stable_pods) == 3
        assert request.analysis.gates.error_rate is not None
        assert request.analysis.gates.error_rate.margin == 0.1  # legacy `max` is the margin
        assert request.evidence is None  # a new canary starts its tests afresh

    def test_rollback_keeps_ready_while_the_stable_revision_grows_back(self) -> None:
        plan, stable_rev = settle(self.spec, 4)
        new_spec = {**self.spec, "model": V2}
        canary = planner.plan(
            md(new_spec, plan.status, generation=2),
            observed_of(plan),
            [pod(stable_rev, i) for i in range(4)],
            None,
            NOW,
            IMAGE,
        )
        canary_rev = canary.status["canary"]["revision"]
        observed = {**observed_of(plan), **observed_of(canary)}

        def with_abort(status: dict[str, Any], pods: list[dict[str, Any]]) -> Plan:
            abort = {"roost.dev/abort": "t"}
            return planner.plan(
                md(new_spec, status, generation=2, annotations=abort),
                observed,
                pods,
                None,
                NOW,
                IMAGE,
            )

        aborted = with_abort(
            canary.status, [*(pod(stable_rev, i) for i in range(3)), pod(canary_rev, 9)]
        )
        assert aborted.status.get("canary") is None
        assert aborted.scale == ((f"wine-{stable_rev}", 4),)
        assert condition(aborted, "Stalled")["reason"] == "CanaryRolledBack"
        # 3 of the 4 stable pods are ready while the fourth starts: it serves, and says so.
        ready = condition(aborted, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "StableServing")
        assert ready["message"] == "stable revision serves 3/4 ready pods"
        # With no stable pod ready it does not serve.
        later = with_abort(aborted.status, [pod(stable_rev, i, ready=False) for i in range(4)])
        assert condition(later, "Ready")["status"] == "False"


def _restarted(restarts: int, running: bool) -> dict[str, Any]:
    p = pod("abc", 1)
    state: dict[str, Any] = {"running": {}} if running else {"terminated": {"exitCode": 137}}
    p["status"]["containerStatuses"] = [
        {
            "name": "server",
            "restartCount": restarts,
            "state": state,
            "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}},
        }
    ]
    return p


def test_a_container_killed_once_and_running_again_is_not_a_failure() -> None:
    assert pods.pod_failure(_restarted(1, running=True)) is None
    # Down again after its restart, or killed twice: the revision is failing.
    assert pods.pod_failure(_restarted(1, running=False)) == "Error"
    assert pods.pod_failure(_restarted(2, running=True)) == "Error"
