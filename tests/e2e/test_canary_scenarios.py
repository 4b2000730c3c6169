"""Canary scenarios end to end: real control plane, serving pods, operator and bounded traffic.

Each test starts `roost-operator` watching a fresh namespace, serves wine-v1 as the stable
revision on 2 replicas, sends bounded infer traffic to the Ready pods' loopback IPs (split by
replicas, as the Service would) and applies a new revision. The scenarios:

- wine-bad-signature (refuses the 13-feature rows with 400) is rolled back on the error-rate gate;
- wine-shifted (trained and profiled on shifted data) is rolled back on the drift gate;
- the operator SIGKILLed in the middle of a step resumes at the same step and promotes;
- the `prometheus` analysis source reads the gates from Debian's Prometheus;
- `kubectl roost promote` ends a long pause, `kubectl roost abort` rolls a canary back;
- HTTPRoute backend weights follow the steps (Gateway API CRDs from the pinned module).

Every scenario prints ``SCENARIO <name>: verdict <X> after <N> s`` (apply to verdict); run with
``pytest -m e2e tests/e2e/test_canary_scenarios.py -s`` to see them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from crd_install import install_crd
from e2e.operator_fixtures import OperatorProcess, operator_process
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from roost_devcluster import modeldeployments as mds
from roost_devcluster.kubeapi import ApiError, KubeApi, api_path
from roost_devcluster.prometheus import Prometheus
from roost_devcluster.traffic import Traffic
from roost_devcluster.waiting import WaitTimeoutError, list_pods, wait_for

__all__ = ["operator_process"]

pytestmark = pytest.mark.e2e

T = TypeVar("T")
Obj = dict[str, Any]
MD_PATH = "/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments/wine"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/wine"
GATEWAY_CRDS = Path.home() / ".cache" / "roost" / "gateway-api-v1.3.0"
BIN = Path(sys.executable).parent
WAIT = 120.0  # bound of every wait for the operator; a rollout here takes well under a minute
# Short steps and a 2 s analysis interval keep each scenario around a minute.
ANALYSIS: Obj = {"interval": "2s", "minRequests": 10, "failureLimit": 2}


@dataclass
class Rollout:
    """One ModelDeployment named `wine` in a test namespace, and how to watch it."""

    api: KubeApi
    namespace: str
    op: OperatorProcess
    models: dict[str, Path]
    started: float = field(default_factory=time.monotonic)
    routing: list[str] = field(default_factory=list)
    """The routing check's words of every analysis seen in a status read (changes only)."""
    paused: list[str] = field(default_factory=list)
    """Every `lastAnalysis.paused` seen: the routing check paused the rollout."""
    expect_routing_mismatch: bool = False
    divergence: list[str] = field(default_factory=list)
    """The divergence gate's words of every analysis seen (changes only)."""

    @property
    def path(self) -> str:
        return MD_PATH.format(ns=self.namespace)

    def apply(self, model: str, steps: list[Obj], gates: Obj, **extra: Any) -> None:
        """Server-side apply `wine` serving `model`; starts the apply-to-verdict clock."""
        analysis = {**ANALYSIS, "gates": gates, **extra.pop("analysis", {})}
        body = mds.manifest(self.namespace, self.models[model], "wine", 2, steps, analysis, **extra)
        self.started = time.monotonic()
        mds.apply(self.api, body)

    def obj(self) -> Obj:
        return self.api.get(self.path)

    def status(self) -> Obj:
        st = dict(self.obj().get("status") or {})
        self._note_routing(st)
        return st

    def _note_routing(self, st: Obj) -> None:
        """Record what the routing check said: every wait reads the status, so every scenario
        shows whether the check ever paused it (the fixture asserts it never did)."""
        last = (st.get("canary") or {}).get("lastAnalysis") or {}
        words = next((g["message"] for g in last.get("gates") or [] if g["name"] == "routing"), "")
        if words and (not self.routing or self.routing[-1] != words):
            self.routing.append(words)
        gates = {g["name"]: g["message"] for g in last.get("gates") or []}
        if gates.get("divergence") and gates["divergence"] not in self.divergence[-1:]:
            self.divergence.append(gates["divergence"])
        if last.get("paused") and last["paused"] not in self.paused:
            self.paused.append(last["paused"])

    def canary(self) -> Obj:
        return dict(self.status().get("canary") or {})

    def condition(self, kind: str) -> Obj:
        return next((c for c in self.status().get("conditions") or [] if c["type"] == kind), {})

    def wait(self, fn: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """`wait_for`, failing with the status and the operator's log tail."""
        try:
            return wait_for(fn, timeout, what)
        except WaitTimeoutError as e:
            raise AssertionError(f"{e}\n{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        try:
            status = json.dumps(self.status(), indent=1)
        except ApiError as e:
            status = f"(unreadable: {e})"
        pods = "\n".join(
            f"  {p['metadata']['name']} uid={p['metadata']['uid'][:8]} ready={_ready(p)} "
            f"deleting={bool(p['metadata'].get('deletionTimestamp'))} "
            f"phase={p.get('status', {}).get('phase')}"
            for p in list_pods(self.api, self.namespace, "roost.dev/modeldeployment=wine")
        )
        log = self.op.log()[-4000:]
        return f"status: {status}\npods:\n{pods}\noperator log tail:\n{log}"

    def events(self) -> list[Obj]:
        """The namespace's events about `wine`."""
        path = api_path("v1", "events", self.namespace)
        return list(self.api.get(path, fieldSelector="involvedObject.name=wine")["items"])

    def wait_events(self, *reasons: str) -> set[str]:
        """Wait until events with every one of `reasons` exist; the reasons seen.

        kopf posts events from a queue of its own, after the status patch that a verdict wait
        reads, so an event can lag the status it belongs to by a moment.
        """

        def seen() -> set[str] | None:
            found = {e["reason"] for e in self.events()}
            return found if set(reasons) <= found else None

        return self.wait(seen, f"events {', '.join(reasons)}")

    def deployments(self) -> list[str]:
        items = self.api.get(
            api_path("apps/v1", "deployments", self.namespace),
            labelSelector="roost.dev/modeldeployment=wine",
        )["items"]
        return sorted(d["metadata"]["name"] for d in items)

    def pods(self, revision: str) -> list[Obj]:
        return [
            p
            for p in list_pods(self.api, self.namespace, f"roost.dev/revision={revision}")
            if not p["metadata"].get("deletionTimestamp")
        ]

    def ready_pods(self, revision: str, count: int) -> list[Obj] | None:
        pods = self.pods(revision)
        ready = [p for p in pods if _ready(p)]
        return pods if len(pods) == count and len(ready) == count else None

    def serve_stable(self, gates: Obj, **extra: Any) -> str:
        """wine-v1 as the stable revision on 2 Ready pods; returns its revision."""
        self.apply("wine-v1", [{"weight": 50, "pause": "4s"}], gates, **extra)
        rev: str = self.wait(lambda: (self.status().get("stable") or {}).get("revision"), "stable")
        self.wait(lambda: self.ready_pods(rev, 2), f"2 Ready pods of {rev}")
        return rev

    def new_canary(self, old: str) -> str:
        rev: str | None = self.wait(
            lambda: self.canary().get("revision") if self.canary().get("revision") != old else None,
            "a canary",
        )
        assert rev
        return rev

    def verdict(self, outcome: str, name: str, timeout: float = WAIT) -> Obj:
        """Wait for the last history entry to have `outcome`; print the apply-to-verdict time."""

        def done() -> Obj | None:
            st = self.status()
            history = st.get("history") or []
            return (
                st
                if history and history[-1]["outcome"] == outcome and not st.get("canary")
                else None
            )

        st = self.wait(done, f"outcome {outcome}", timeout)
        print(f"SCENARIO {name}: verdict {outcome} after {time.monotonic() - self.started:.1f} s")
        return st

    def assert_rolled_back(self, stable: str, failed: str, gate_words: str) -> Obj:
        """Stable serves at full scale, the canary Deployment is gone, the failure stays put."""
        st = self.status()
        assert st["failedRevision"] == failed
        assert st["stable"]["revision"] == stable
        stalled = self.condition("Stalled")
        assert (stalled["status"], stalled["reason"]) == ("True", "CanaryRolledBack"), stalled
        assert gate_words in stalled["message"], stalled["message"]
        self.wait(lambda: self.deployments() == [f"wine-{stable}"], "the canary Deployment gone")
        self.wait(lambda: not self.pods(failed), "the canary pods gone")
        self.wait(lambda: self.ready_pods(stable, 2), "the stable revision at full scale")
        # Ready is about the stable revision serving, whatever happened to the canary.
        self.wait(lambda: self.condition("Ready").get("status") == "True", "Ready=True")
        assert self.condition("Stalled")["reason"] == "CanaryRolledBack"
        deployment = self.api.get(
            api_path("apps/v1", "deployments", self.namespace, f"wine-{stable}")
        )
        assert deployment["spec"]["replicas"] == 2
        # All traffic now lands on the stable revision and succeeds.
        with Traffic(self.api, self.namespace, "wine", self.rows(), rate=40, count=40) as after:
            after.wait()
        assert after.by_revision == {(stable, 200): 40}, after.by_revision
        # Not retried while the spec asks for the same revision: a touch that makes the
        # operator reconcile, then several analysis intervals without a new canary.
        self.api.patch(self.path, {"metadata": {"labels": {"touched": "yes"}}}, "merge-patch")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert self.deployments() == [f"wine-{stable}"], "the failed revision was retried"
            assert not self.status().get("canary"), self.diagnosis()
            time.sleep(0.5)
        assert self.status()["failedRevision"] == failed
        return st

    def rows(self) -> list[list[float]]:
        sample = json.loads((self.models["wine-v1"] / "sample.json").read_text())
        return list(sample["rows"])

    def traffic(self, seconds: float = 200, rate: float = 30) -> Traffic:
        """Bounded traffic (30 req/s unless told) to the Ready pods, by replicas."""
        return Traffic(self.api, self.namespace, "wine", self.rows(), rate=rate, duration=seconds)


def _ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture
def rollout(
    request: pytest.FixtureRequest,
    kube: client.ApiClient,
    kube_api: KubeApi,
    namespace: str,
    example_models: dict[str, Path],
    operator_process: Callable[[str], OperatorProcess],
) -> Iterator[Rollout]:
    """The CRD installed and an operator watching the test namespace."""
    install_crd(kube)
    ro = Rollout(kube_api, namespace, operator_process(namespace), example_models)
    yield ro
    # Issue 11's routing check pauses a rollout whose arms see different inputs. No scenario
    # but the one built for it may ever be paused by it: random routing must never trip it.
    if ro.expect_routing_mismatch:
        return
    mismatches = [e["message"] for e in ro.events() if e["reason"] == "RoutingMismatch"]
    print(
        f"ROUTING {request.node.name}: paused {len(ro.paused)} times, "
        f"{len(mismatches)} RoutingMismatch events; last: {ro.routing[-1] if ro.routing else '-'}"
    )
    assert not ro.paused, ro.paused
    assert not mismatches, mismatches


def test_erroring_model_rolled_back_on_error_rate(rollout: Rollout) -> None:
    # wine-bad-signature refuses the 13-feature rows with 400 while the stable answers them:
    # 4xx are not judged by default, so this gate opts in with clientErrorMargin.
    gates = {"errorRate": {"margin": 0.05, "clientErrorMargin": 0.05}}
    stable = rollout.serve_stable(gates)
    with rollout.traffic():
        rollout.apply("wine-bad-signature", [{"weight": 50, "pause": "4s"}], gates)
        canary = rollout.new_canary(stable)
        st = rollout.verdict("RolledBack", "error-rate")
    entry = st["history"][-1]
    assert entry["revision"] == canary
    assert entry["reason"].startswith("gate clientErrors failed"), entry
    assert "4xx +100.00 pp" in entry["reason"], entry
    assert "worse than margin" in entry["reason"], entry
    rollout.assert_rolled_back(stable, canary, "4xx +100.00 pp")
    assert rollout.op.metric("roost_operator_rollouts_total", {"outcome": "RolledBack"}) == 1
    # One failing analysis suffices: the sequential gate is worse than its margin with
    # confidence, so no failureLimit applies on top.
    assert rollout.op.metric("roost_operator_analysis_total", {"verdict": "fail"}) >= 1


def test_shifted_model_rolled_back_on_drift(rollout: Rollout) -> None:
    gates = {"errorRate": {"margin": 0.05}, "drift": {"margin": 0.1}}
    stable = rollout.serve_stable(gates)
    with rollout.traffic():
        rollout.apply("wine-shifted", [{"weight": 50, "pause": "4s"}], gates)
        canary = rollout.new_canary(stable)
        st = rollout.verdict("RolledBack", "drift")
    entry = st["history"][-1]
    assert entry["reason"].startswith("gate drift failed"), entry  # errors stayed in margin
    assert "worse than margin" in entry["reason"], entry
    psi = float(entry["reason"].split("PSI of ")[1].split(" ")[1].rstrip(")"))
    assert psi > 0.25, entry
    rollout.assert_rolled_back(stable, canary, "PSI")


def test_operator_killed_mid_step_resumes_and_promotes(rollout: Rollout) -> None:
    gates = {"errorRate": {"margin": 0.05}, "divergence": {"margin": 0.1}}
    stable = rollout.serve_stable(gates)
    # The promotion waits for evidence, not for the clock: twice the traffic, about half the time.
    with rollout.traffic(rate=60):
        rollout.apply("wine-v2", [{"weight": 50, "pause": "25s"}], gates)
        canary = rollout.new_canary(stable)
        before = rollout.wait(
            lambda: (c := rollout.canary()).get("readyReplicas") and c.get("analysisCount") and c,
            "a ready canary with an analysis",
        )
        uids = {p["metadata"]["uid"] for p in rollout.pods(canary)}
        assert rollout.op.proc is not None
        rollout.op.proc.kill()  # SIGKILL: no cleanup, whatever was in memory is lost
        rollout.op.proc.wait(timeout=10)
        rollout.op.start()
        # The new process has analysed at least once: it works from the persisted step.
        after = rollout.wait(
            lambda: (c := rollout.canary()).get("analysisCount", 0) > before["analysisCount"] and c,
            "an analysis by the restarted operator",
        )
        assert (after["revision"], after["step"]) == (before["revision"], before["step"])
        assert after["stepStartedAt"] == before["stepStartedAt"], "the step's clock restarted"
        # The sequential tests continue from the persisted evidence, not from scratch (the
        # restarted process's first scrape is a baseline and adds none).
        old = before.get("evidence") or {"intervals": 0, "requests": {"canary": {}}}

        def continued() -> Obj | None:
            ev = rollout.canary().get("evidence") or {}
            return ev if ev.get("intervals", 0) > old["intervals"] else None

        ev = rollout.wait(continued, "evidence added by the restarted operator")
        served = sum(ev["requests"]["canary"].values())
        assert served >= sum(old["requests"]["canary"].values())
        assert {p["metadata"]["uid"] for p in rollout.pods(canary)} == uids
        st = rollout.verdict("Promoted", "operator-restart")
    assert st["stable"]["revision"] == canary
    assert st["history"][-1]["reason"] == "passed all 1 steps"
    pods = rollout.wait(lambda: rollout.ready_pods(canary, 2), "the promoted revision at 2 pods")
    # Promotion scaled the canary up: the pod that lived through the restart still serves.
    assert uids <= {p["metadata"]["uid"] for p in pods}
    for pod in pods:
        assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
    rollout.wait(lambda: rollout.deployments() == [f"wine-{canary}"], "the old stable removed")


def test_prometheus_source_promotes_good_model(rollout: Rollout, prometheus: Prometheus) -> None:
    # This scenario is about where the gate values come from. Loose drift threshold: PSI over
    # the first few dozen rows of a canary's drift window sits well above 0.25 for any model
    # (13 features x ~10 bins), and increase() over a young canary series counts only what
    # came after its first scrape, so more requests per window keep the comparison fair.
    gates = {
        "errorRate": {"margin": 0.05},
        "latency": {"maxP99Seconds": 0.5, "maxRatio": 5.0},
        "drift": {"margin": 0.5},
        "divergence": {"margin": 0.3},
    }
    analysis = {"source": "prometheus", "prometheusUrl": prometheus.url, "minRequests": 60}
    source = {"analysis": analysis}
    stable = rollout.serve_stable(gates, **source)
    with rollout.traffic():
        rollout.apply("wine-v2", [{"weight": 50, "pause": "4s"}], gates, **source)
        canary = rollout.new_canary(stable)
        st = rollout.verdict("Promoted", "prometheus")
    assert st["stable"]["revision"] == canary
    assert st["history"][-1]["reason"] == "passed all 1 steps"
    assert rollout.op.metric("roost_operator_rollouts_total", {"outcome": "Promoted"}) == 1
    # The analysis that passed the step (status.canary is gone with the canary; the operator's
    # gauges keep the last analysis): every gate measured a value.
    values = _gate_values(rollout)
    for gate in ("errorRate", "latencyP99", "latency", "drift", "divergence"):
        assert gate in values, values
    assert values["errorRate"] == 0.0, values
    assert rollout.op.metric("roost_operator_analysis_total", {"verdict": "pass"}) >= 1
    # The figures came from Prometheus: it holds the canary's series under the pod labels.
    series = prometheus.query(
        f'roost_requests_total{{namespace="{rollout.namespace}",revision="{canary}"}}'
    )
    assert series, "Prometheus has no request series of the canary"
    assert all(s["metric"].get("pod", "").startswith(f"wine-{canary}") for s in series), series


def _gate_values(rollout: Rollout) -> dict[str, float]:
    """`roost_operator_gate_value` by gate for `wine`, as the operator exports it."""
    url = f"http://127.0.0.1:{rollout.op.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        s.labels["gate"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "roost_operator_gate_value" and s.labels.get("namespace") == rollout.namespace
    }


def _kubectl_roost(rollout: Rollout, kubeconfig: Path, *args: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed on PATH"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [kubectl, "roost", "--kubeconfig", str(kubeconfig), "-n", rollout.namespace, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_kubectl_roost_promote_and_abort(rollout: Rollout, kubeconfig: Path) -> None:
    gates = {"errorRate": {"max": 0.05}}
    long_pause = [{"weight": 25, "pause": "10m"}, {"weight": 50, "pause": "10m"}]
    v1 = rollout.serve_stable(gates)
    with rollout.traffic():
        rollout.apply("wine-v2", long_pause, gates)
        v2 = rollout.new_canary(v1)
        rollout.wait(lambda: rollout.canary().get("readyReplicas"), "a ready canary")
        table = _kubectl_roost(rollout, kubeconfig, "status", "wine")
        assert v1 in table, table
        assert v2 in table, table
        _kubectl_roost(rollout, kubeconfig, "promote", "wine")
        st = rollout.verdict("Promoted", "kubectl-promote")
        assert st["stable"]["revision"] == v2
        assert st["history"][-1]["reason"] == "promoted by user"
        assert "promote" in st["handledRequests"]
        # The request starts the full-scale phase (its replica arithmetic is unit-tested);
        # both steps show as events on the ModelDeployment.
        rollout.wait_events("PromotionRequested", "CanaryPromoted")
        rollout.wait(lambda: rollout.deployments() == [f"wine-{v2}"], "the old stable removed")

        rollout.apply("wine-shifted", long_pause, gates)
        shifted = rollout.new_canary(v2)
        rollout.wait(lambda: rollout.canary().get("readyReplicas"), "a ready canary")
        _kubectl_roost(rollout, kubeconfig, "abort", "wine")
        st = rollout.verdict("Aborted", "kubectl-abort")
    assert st["history"][-1]["reason"] == "aborted by user"
    rollout.assert_rolled_back(v2, shifted, "aborted by user")
    history = _kubectl_roost(rollout, kubeconfig, "history", "wine")
    assert "Aborted" in history, history
    assert "Promoted" in history, history


def _install_gateway_crds(kube: client.ApiClient) -> None:
    assert GATEWAY_CRDS.is_dir(), f"{GATEWAY_CRDS} is missing: run hack/k8s/build.sh"
    api = client.ApiextensionsV1Api(kube)
    names = []
    for path in sorted(GATEWAY_CRDS.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        names.append(body["metadata"]["name"])
        api.patch_custom_resource_definition(
            names[-1],
            body,
            field_manager="roost-tests",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def established() -> bool:
        for name in names:
            crd = api.read_custom_resource_definition(name)
            found = crd.status.conditions if crd.status else None
            conditions = {c.type: c.status for c in found or []}
            if conditions.get("Established") != "True":
                return False
        return True

    wait_for(established, 60, "the Gateway API CRDs established")


def _route_weights(rollout: Rollout) -> tuple[tuple[str, int], ...] | None:
    route = rollout.api.find(ROUTES.format(ns=rollout.namespace))
    if route is None:
        return None
    backends = route["spec"]["rules"][0]["backendRefs"]
    return tuple((b["name"], int(b["weight"])) for b in backends)


def test_http_route_weights_follow_steps(kube: client.ApiClient, rollout: Rollout) -> None:
    _install_gateway_crds(kube)
    gates = {"errorRate": {"max": 0.05}}
    traffic = {"traffic": {"httpRoute": {"name": "wine", "parentRefs": [{"name": "gateway"}]}}}
    stable = rollout.serve_stable(gates, **traffic)
    assert rollout.wait(lambda: _route_weights(rollout), "the HTTPRoute") == (
        (f"wine-{stable}", 100),
    )
    steps = [{"weight": 25, "pause": "4s"}, {"weight": 50, "pause": "4s"}]
    seen: list[tuple[tuple[str, int], ...]] = []
    with rollout.traffic():
        rollout.apply("wine-v2", steps, gates, **traffic)

        def promoted() -> bool:
            weights = _route_weights(rollout)
            if weights and (not seen or seen[-1] != weights):
                seen.append(weights)
            history = rollout.status().get("history") or []
            return bool(history) and history[-1]["outcome"] == "Promoted"

        rollout.wait(promoted, "promotion through the HTTPRoute steps")
        print(
            f"SCENARIO httproute: verdict Promoted after {time.monotonic() - rollout.started:.1f} s"
        )
    canary = rollout.status()["stable"]["revision"]
    rollout.wait(
        lambda: _route_weights(rollout) == ((f"wine-{canary}", 100),), "all route weight on v2"
    )
    old, new = f"wine-{stable}", f"wine-{canary}"
    # Ordered, possibly with the canary at 0 until its pods are ready: 100/0 -> 75/25 -> 50/50.
    splits = [dict(w).get(new, 0) for w in seen if dict(w).get(old) is not None]
    shown = [s for i, s in enumerate(splits) if s and (i == 0 or splits[i - 1] != s)]
    assert shown == [25, 50], seen
    assert all(sum(dict(w).values()) == 100 for w in seen), seen
    # The weights were also the canary's Services: one per revision as backends.
    service = rollout.api.get(api_path("v1", "services", rollout.namespace, new))
    assert service["spec"]["selector"]["roost.dev/revision"] == canary
    assert rollout.status()["httpRoute"] == "wine"
    # Taking spec.traffic away prunes what roost made for it: the route and the revision
    # Services; the same revision keeps serving (traffic never makes a new revision).
    rollout.apply("wine-v2", steps, gates)
    rollout.wait(lambda: _route_weights(rollout) is None, "the HTTPRoute pruned")
    rollout.wait(
        lambda: (
            not rollout.api.get(
                api_path("v1", "services", rollout.namespace), labelSelector="roost.dev/revision"
            )["items"]
        ),
        "the revision Services pruned",
    )
    st = rollout.wait(
        lambda: rollout.status() if "httpRoute" not in rollout.status() else None,
        "status.httpRoute cleared",
    )
    assert st["stable"]["revision"] == canary
    assert not st.get("canary")
    rollout.wait(lambda: rollout.deployments() == [new], "only the promoted Deployment left")


# --- the sequential gates' own scenarios (issue 11), alpha 0.01 --------------------------------

SEQUENTIAL: Obj = {"alpha": 0.01, "progressDeadline": "3m"}


def _copy_model(rollout: Rollout, tmp_path: Path, source: str, name: str) -> None:
    """The same model files under another URI: a new revision serving an identical model."""
    dest = tmp_path / name
    shutil.copytree(rollout.models[source], dest)
    # A new dict: the session's `example_models` fixture is shared with every later test.
    rollout.models = {**rollout.models, name: dest}


def _canary_requests(traffic: Traffic, revision: str) -> int:
    return sum(n for (rev, _), n in traffic.by_revision.items() if rev == revision)


AA_ROLLOUTS = 3


def test_identical_regressor_promoted_by_passing_at_low_traffic(
    rollout: Rollout, tmp_path: Path
) -> None:
    # A/A three times (the 3 of 3 false rollbacks): a 20-bin regressor canaried against
    # a copy of itself at about 10 canary requests per second. Each must be promoted by passing
    # its gates, not by the deadline; the false-rollback rate itself is bench_gates' to measure.
    gates = {"errorRate": {"margin": 0.02}, "divergence": {"margin": 0.1}}
    steps = [{"weight": 50, "pause": "10s"}]
    extra = {"analysis": SEQUENTIAL}
    names = ["wine-regressor"]
    for i in range(AA_ROLLOUTS):
        _copy_model(rollout, tmp_path, "wine-regressor", f"wine-regressor-{i}")
        names.append(f"wine-regressor-{i}")
    rollout.apply(names[0], steps, gates, **extra)
    stable = rollout.wait(lambda: (rollout.status().get("stable") or {}).get("revision"), "stable")
    rollout.wait(lambda: rollout.ready_pods(stable, 2), "2 Ready pods of the stable revision")
    times = []
    with Traffic(rollout.api, rollout.namespace, "wine", rollout.rows(), rate=20, duration=900):
        for name in names[1:]:
            rollout.apply(name, steps, gates, **extra)
            canary = rollout.new_canary(stable)
            st = rollout.verdict("Promoted", f"a/a-regressor-{name}", timeout=300)
            times.append(time.monotonic() - rollout.started)
            entry = st["history"][-1]
            assert entry["revision"] == canary
            assert entry["reason"] == "passed all 1 steps", entry  # never a deadline verdict
            stable = canary
            rollout.wait(lambda s=stable: rollout.ready_pods(s, 2), "the promoted revision, 2 pods")
    print(
        f"SCENARIO a/a-regressor: {AA_ROLLOUTS}/{AA_ROLLOUTS} promoted by passing, "
        f"{', '.join(f'{t:.0f}' for t in times)} s"
    )


def test_one_class_model_rolled_back_with_its_time_and_requests(rollout: Rollout) -> None:
    gates = {"errorRate": {"margin": 0.02}, "divergence": {"margin": 0.05}}
    stable = rollout.serve_stable(gates, analysis=SEQUENTIAL)
    with rollout.traffic() as traffic:
        rollout.apply("wine-constant", [{"weight": 50, "pause": "10s"}], gates, analysis=SEQUENTIAL)
        canary = rollout.new_canary(stable)
        st = rollout.verdict("RolledBack", "one-class")
        requests = _canary_requests(traffic, canary)
    entry = st["history"][-1]
    assert entry["reason"].startswith("gate divergence failed"), entry
    assert "worse than margin, 99.5 % confidence" in entry["reason"], entry
    print(
        f"SCENARIO one-class: rolled back after {time.monotonic() - rollout.started:.1f} s "
        f"and {requests} canary requests ({entry['reason']})"
    )
    rollout.assert_rolled_back(stable, canary, "divergence")


def test_malformed_client_requests_do_not_fail_a_good_canary(rollout: Rollout) -> None:
    gates = {"errorRate": {"margin": 0.02}, "divergence": {"margin": 0.1}}
    stable = rollout.serve_stable(gates, analysis=SEQUENTIAL)
    malformed = [[1.0, 2.0, 3.0]]  # 3 features where the model takes 13: every answer is 400
    with (
        rollout.traffic(rate=60),  # evidence-bound: more traffic, a shorter test
        Traffic(rollout.api, rollout.namespace, "wine", malformed, rate=10, duration=200) as bad,
    ):
        rollout.apply("wine-v2", [{"weight": 50, "pause": "10s"}], gates, analysis=SEQUENTIAL)
        canary = rollout.new_canary(stable)
        st = rollout.verdict("Promoted", "malformed-clients")
    assert st["history"][-1]["reason"] == "passed all 1 steps"
    assert bad.by_revision.get((canary, 400), 0) > 0, bad.by_revision


def test_a_canary_without_traffic_ends_by_its_progress_deadline(rollout: Rollout) -> None:
    gates = {"errorRate": {"margin": 0.02}}
    analysis = {"alpha": 0.01, "progressDeadline": "20s", "onInconclusive": "rollback"}
    stable = rollout.serve_stable(gates, analysis=analysis)
    rollout.apply("wine-v2", [{"weight": 50, "pause": "4s"}], gates, analysis=analysis)
    canary = rollout.new_canary(stable)
    st = rollout.verdict("RolledBack", "no-traffic-deadline")
    entry = st["history"][-1]
    assert entry["revision"] == canary
    assert entry["reason"].startswith("deadline verdict (onInconclusive: rollback)"), entry
    rollout.wait_events("ProgressDeadlineExceeded")


def test_inputs_routed_unevenly_pause_the_rollout(rollout: Rollout, tmp_path: Path) -> None:
    # The canary is the stable's own model and profile; only its traffic differs: it gets the
    # rows with the lower half of the first feature, the stable gets every row. No gate can
    # fail (no drift or divergence gate, no errors): the routing check alone must pause it.
    rollout.expect_routing_mismatch = True
    gates = {"errorRate": {"margin": 0.02}}
    analysis = {"alpha": 0.01, "progressDeadline": "3m"}
    stable = rollout.serve_stable(gates, analysis=analysis)
    _copy_model(rollout, tmp_path, "wine-v1", "wine-v1-copy")
    rows = rollout.rows()
    median = sorted(r[0] for r in rows)[len(rows) // 2]
    with rollout.traffic() as traffic:
        rollout.apply("wine-v1-copy", [{"weight": 50, "pause": "150s"}], gates, analysis=analysis)
        canary = rollout.new_canary(stable)
        traffic.rows_by_revision[canary] = [r for r in rows if r[0] < median]
        stalled = rollout.wait(
            lambda: (c := rollout.condition("Stalled")).get("reason") == "RoutingMismatch" and c,
            "the routing check to pause the rollout",
            timeout=150,
        )
        paused_after = time.monotonic() - rollout.started
        requests = _canary_requests(traffic, canary)
        c = rollout.canary()
    assert (c["revision"], c["step"]) == (canary, 0), c  # neither promoted nor rolled back
    assert "receive different inputs" in stalled["message"], stalled
    rollout.wait_events("RoutingMismatch")
    print(
        f"SCENARIO routing-mismatch: paused after {paused_after:.1f} s and {requests} canary "
        f"requests ({stalled['message']})"
    )


def test_a_retrained_profile_is_judged_on_the_stables_bins(
    rollout: Rollout, tmp_path: Path
) -> None:
    # The same regressor with a retrained profile: other output edges (every other one of the
    # stable's, 10 bins instead of 20). Its own bins cannot be compared with the stable's; the
    # pushed section `compare` makes both arms count on the stable's, so the enforced
    # divergence gate passes it (the old code showed it in observe mode, never judged).
    gates = {"errorRate": {"margin": 0.02}, "divergence": {"margin": 0.1}}
    steps = [{"weight": 50, "pause": "10s"}]
    _copy_model(rollout, tmp_path, "wine-regressor", "wine-regressor-retrained")
    path = rollout.models["wine-regressor-retrained"] / "profile.json"
    profile = json.loads(path.read_text())
    pred = profile["prediction"]
    freqs = pred["frequencies"]
    pred["edges"] = pred["edges"][1::2]
    pred["frequencies"] = [sum(freqs[i : i + 2]) for i in range(0, len(freqs), 2)]
    assert len(pred["frequencies"]) == len(pred["edges"]) + 1
    path.write_text(json.dumps(profile))
    rollout.apply("wine-regressor", steps, gates, analysis=SEQUENTIAL)
    stable = rollout.wait(lambda: (rollout.status().get("stable") or {}).get("revision"), "stable")
    rollout.wait(lambda: rollout.ready_pods(stable, 2), "2 Ready pods of the stable revision")
    with Traffic(rollout.api, rollout.namespace, "wine", rollout.rows(), rate=40, duration=300):
        rollout.apply("wine-regressor-retrained", steps, gates, analysis=SEQUENTIAL)
        canary = rollout.new_canary(stable)
        st = rollout.verdict("Promoted", "retrained-profile", timeout=300)
    entry = st["history"][-1]
    assert entry["revision"] == canary
    assert entry["reason"] == "passed all 1 steps", entry  # passed, not by the deadline policy
    judged = [w for w in rollout.divergence if "on the stable's bins" in w]
    assert judged, rollout.divergence
    print(f"SCENARIO retrained-profile: {judged[-1]}")
