"""The operator under control-plane faults, each in the middle of a canary step with live traffic.

Every test serves wine-v1, starts a wine-v2 canary (one 20 s step at 50 %, analysis every 2 s,
which an undisturbed run promotes: test_canary_scenarios, test_operator_canary) and injects one
fault once the canary has been analysed:

- the API server restarted (after etcd's history was compacted, so every watch that resumes
  gets 410 Gone and must relist: kopf logs "Restarting the watch-stream");
- etcd restarted;
- the API server unreachable for 60 s (frozen: connections hang, as behind a partition);
- the leader of two operator replicas SIGKILLed (the follower takes the Lease);
- another field manager `kubectl apply`ing the same ModelDeployment during the step;
- a canary pod's process SIGKILLed (its counters reset; the container restarts).

Each must end in the same verdict, Promoted, with exactly one CanaryStarted and one
CanaryPromoted event (no transition missed or replayed), the same step (and its clock, except
when a canary pod stopped serving: the pause only counts while all canary pods serve), and zero
failed client requests caused by the fault (traffic goes to pod IPs; a killed pod's own
failures are counted apart). Operators run with leader election and are restarted when they
exit, as the kubelet would. Each test prints ``FAULT <name>: resumed after <s> s, client
errors <n> of <sent>, verdict <v>`` (run with ``-s``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_install import install_crd
from e2e.operator_fixtures import OperatorProcess
from e2e.test_canary_scenarios import Rollout, _ready
from kubernetes import client
from roost_devcluster import controlplane, faults
from roost_devcluster.kubeapi import KubeApi
from roost_devcluster.traffic import REFRESH_SECONDS, Traffic
from roost_devcluster.waiting import list_pods

pytestmark = pytest.mark.e2e

Obj = dict[str, Any]
# Sequential gates (docs/analysis.md): wine-v2 differs from v1 by a few points of prediction
# share, so the divergence margin is 10 points, as in test_canary_scenarios.
GATES: Obj = {"errorRate": {"margin": 0.05}, "divergence": {"margin": 0.1}}
STEP = [{"weight": 50, "pause": "20s"}]
VERDICT_WAIT = 240.0
LEASE = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/roost-operator"


@dataclass
class Operators:
    """Supervised, leader-elected operator replicas watching one namespace."""

    namespace: str
    kubeconfig: Path
    directory: Path
    replicas: list[OperatorProcess] = field(default_factory=list)

    def add(self) -> OperatorProcess:
        n = len(self.replicas)
        op = OperatorProcess(
            self.namespace,
            self.kubeconfig,
            self.directory / f"operator-{self.namespace}-{n}.log",
            args=["--leader-elect", f"--leader-election-namespace={self.namespace}"],
            supervise=True,
        )
        self.replicas.append(op)
        op.start()
        return op

    def stop(self) -> None:
        for op in self.replicas:
            op.stop()


@pytest.fixture(autouse=True)
def healed(cluster: controlplane.Cluster) -> Iterator[None]:
    """After each test, every control-plane component runs again, whatever the test did.

    A fault that went wrong (etcd not coming back) then fails its own test, not the rest of
    the session's tests on the shared cluster.
    """
    yield
    restarted = faults.heal(cluster.layout)
    if restarted:
        print(f"  healed after the test: restarted {', '.join(restarted)}")


@pytest.fixture
def operators(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Operators]:
    ops = Operators(namespace, kubeconfig, tmp_path)
    yield ops
    ops.stop()


@pytest.fixture
def rollout(
    kube: client.ApiClient,
    kube_api: KubeApi,
    namespace: str,
    example_models: dict[str, Path],
    operators: Operators,
) -> Rollout:
    """The CRD installed and one leader-elected operator watching the test namespace."""
    install_crd(kube)
    return Rollout(kube_api, namespace, operators.add(), example_models)


@dataclass
class MidStep:
    """A canary in the middle of its step, with traffic running."""

    rollout: Rollout
    traffic: Traffic
    stable: str
    canary: str
    before: Obj


@contextlib.contextmanager
def mid_step(rollout: Rollout, seconds: float = 300) -> Iterator[MidStep]:
    """wine-v1 stable, a wine-v2 canary analysed at least once, traffic on; yields there."""
    stable = rollout.serve_stable(GATES)
    with rollout.traffic(seconds) as traffic:
        rollout.apply("wine-v2", STEP, GATES)
        canary = rollout.new_canary(stable)
        before = rollout.wait(
            lambda: (c := rollout.canary()).get("readyReplicas") and c.get("analysisCount") and c,
            "a ready canary with an analysis",
        )
        # The fault hits a settled step: the stable pod that made room for the canary is gone
        # and the traffic knows it. (A pod retiring during an API outage keeps its place in
        # every client's list, as endpoints do, and fails requests: not what is tested here.)
        rollout.wait(lambda: _settled(rollout), "every pod of the step Ready, none terminating")
        time.sleep(2 * REFRESH_SECONDS)
        yield MidStep(rollout, traffic, stable, canary, before)


def _settled(rollout: Rollout) -> bool:
    pods = list_pods(rollout.api, rollout.namespace, "roost.dev/modeldeployment=wine")
    return bool(pods) and all(
        _ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods
    )


def _analyses(rollout: Rollout) -> int | None:
    """Analyses recorded for the running canary (None once it has ended)."""
    canary = rollout.canary()
    return int(canary.get("analysisCount", 0)) if canary else None


def _resumed(run: MidStep, fault_ended: float, counted: int) -> float:
    """Seconds from the end of the fault until status records a new analysis (or the verdict)."""

    def moved() -> bool:
        n = _analyses(run.rollout)
        return n is None or n > counted

    run.rollout.wait(moved, "a new analysis after the fault")
    return time.monotonic() - fault_ended


def _count_now(rollout: Rollout) -> int:
    """Analyses so far, read as soon as the API answers again."""
    n: int | None = rollout.wait(lambda: (_analyses(rollout),), "the API server answering")[0]
    return n if n is not None else 10**9


def _event_counts(rollout: Rollout) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in rollout.events():
        counts[event["reason"]] = counts.get(event["reason"], 0) + int(event.get("count") or 1)
    return counts


def _finish(run: MidStep, name: str, resumed: float, pod_errors: int = 0) -> Obj:
    """The verdict is the undisturbed one; nothing replayed; the clients saw no fault."""
    rollout = run.rollout
    # The sequential gates decide once the evidence suffices (about 100 s of this traffic for
    # wine-v2's divergence margin), counted again from a restarted leader's first scrape.
    st = rollout.verdict("Promoted", name, timeout=VERDICT_WAIT)
    assert st["stable"]["revision"] == run.canary
    run.traffic.stop()
    errors = sum(n for code, n in run.traffic.codes.items() if not 200 <= code < 300)
    print(
        f"FAULT {name}: resumed after {resumed:.1f} s, client errors {errors - pod_errors} of "
        f"{run.traffic.sent} (+{pod_errors} on the killed pod), verdict Promoted"
    )
    assert errors == pod_errors, (run.traffic.codes, run.traffic.failed_by_pod)
    assert run.traffic.sent > 0
    history = [h for h in st["history"] if h["revision"] == run.canary]
    assert len(history) == 1, history
    # Events are posted after the status write that records the transition: wait for it.
    events = rollout.wait(
        lambda: (e := _event_counts(rollout)).get("CanaryPromoted") and e, "a CanaryPromoted event"
    )
    time.sleep(1.0)  # a replayed transition would post its event again by now
    events = _event_counts(rollout)
    assert events.get("CanaryStarted") == 1, events
    assert events.get("CanaryPromoted") == 1, events
    return st


def _same_step(run: MidStep, clock_kept: bool = True) -> None:
    """The step went on where it was: same revision and step, and (unless a canary pod stopped
    serving, which restarts the pause by design) the same step clock."""
    canary = run.rollout.canary()
    if canary:  # else the verdict came first, which `_finish` checks
        assert (canary["revision"], canary["step"]) == (run.before["revision"], run.before["step"])
        if clock_kept:
            assert canary["stepStartedAt"] == run.before["stepStartedAt"]
        else:
            assert canary["stepStartedAt"] >= run.before["stepStartedAt"]


def test_apiserver_restarted_mid_step_and_watches_relist(
    rollout: Rollout, cluster: controlplane.Cluster
) -> None:
    with mid_step(rollout) as run:
        # Without history every watch resuming from its last resourceVersion gets 410 Gone.
        faults.compact_etcd(cluster.layout)
        down = time.monotonic()
        faults.restart(cluster.layout, "kube-apiserver")
        ended = time.monotonic()
        counted = _count_now(rollout)
        _same_step(run)
        resumed = _resumed(run, ended, counted)
        print(f"  kube-apiserver down {ended - down:.1f} s")
        st = _finish(run, "apiserver-restart", resumed)
    assert st["history"][-1]["reason"] == "passed all 1 steps"
    # kopf relisted after 410 Gone (its debug line), and went on from the fresh list.
    rollout.wait(lambda: "Restarting the watch-stream" in rollout.op.log(), "a relist after 410")


def test_etcd_restarted_mid_step(rollout: Rollout, cluster: controlplane.Cluster) -> None:
    with mid_step(rollout) as run:
        down = time.monotonic()
        faults.restart(cluster.layout, "etcd")
        ended = time.monotonic()
        counted = _count_now(rollout)
        _same_step(run)
        resumed = _resumed(run, ended, counted)
        print(f"  etcd down {ended - down:.1f} s")
        _finish(run, "etcd-restart", resumed)


def test_apiserver_unreachable_for_60_s_pauses_decisions(
    rollout: Rollout, cluster: controlplane.Cluster
) -> None:
    with mid_step(rollout, seconds=400) as run:
        counted_before = int(run.before["analysisCount"])
        froze = time.monotonic()
        faults.freeze(cluster.layout, "kube-apiserver", 60)
        ended = time.monotonic()
        thawed_at = time.time()
        counted = _count_now(rollout)
        # Nothing was decided while the API server could not be reached: the step is where it
        # was, and whatever analysis is recorded was made before the freeze.
        _same_step(run)
        assert counted >= counted_before
        resumed = _resumed(run, ended, counted)
        print(f"  kube-apiserver unreachable {ended - froze:.1f} s")
        st = _finish(run, "apiserver-unreachable-60s", resumed)
    # The verdict was reached after the API server came back, on analyses made since.
    finished = st["history"][-1]["finishedAt"]
    assert _epoch(finished) >= thawed_at - 1, (finished, thawed_at)
    # The operator says what happened: a lost Lease (exit, restart, resume from status) or
    # reconciliations that failed and then succeeded again.
    reasons = _event_counts(rollout)
    assert reasons.get("RolloutResumed") or reasons.get("Reconciled"), reasons


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_leader_sigkilled_follower_takes_over(
    rollout: Rollout, operators: Operators, kube_api: KubeApi, namespace: str
) -> None:
    follower = operators.add()
    leader = rollout.op
    identity = rollout.wait(lambda: _holder(kube_api, namespace), "a Lease holder")
    assert f"/{leader.proc.pid if leader.proc else 0}" in identity, identity
    with mid_step(rollout) as run:
        counted = int(rollout.canary().get("analysisCount", 0))
        killed = time.monotonic()
        leader.kill()  # SIGKILL: no Lease release; the supervisor restarts it as a follower
        new = rollout.wait(
            lambda: (h := _holder(kube_api, namespace)) != identity and h, "a new Lease holder"
        )
        failover = time.monotonic() - killed
        assert f"/{follower.proc.pid if follower.proc else 0}" in new, (new, identity)
        rollout.op = follower  # diagnose from the new leader's log
        resumed = _resumed(run, killed, counted)
        _same_step(run)
        print(f"  failover (Lease taken by the follower) after {failover:.1f} s")
        _finish(run, "leader-sigkill", resumed)
    assert "resumed the rollout" in " ".join(e["message"] for e in rollout.events())
    # client-go's convention: the new leader says so on the Lease.
    lease_events = kube_api.get(
        f"/api/v1/namespaces/{namespace}/events",
        fieldSelector="involvedObject.kind=Lease,involvedObject.name=roost-operator",
    )["items"]
    assert any(
        e["reason"] == "LeaderElection" and e["message"] == f"{new} became leader after {identity}"
        for e in lease_events
    ), [e["message"] for e in lease_events]


def _kubectl_apply(kubeconfig: Path, manifest: Obj, manager: str) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed on PATH"
    subprocess.run(
        [
            kubectl,
            f"--kubeconfig={kubeconfig}",
            "apply",
            "--server-side",
            f"--field-manager={manager}",
            "-f",
            "-",
        ],
        input=yaml.safe_dump(manifest).encode(),
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_concurrent_kubectl_apply_keeps_both_writers_fields(
    rollout: Rollout, kubeconfig: Path
) -> None:
    with mid_step(rollout) as run:
        md = rollout.obj()
        started = time.monotonic()
        # Another manager (a GitOps tool) applies the same ModelDeployment: the spec it owns
        # jointly with the test, plus a label and an annotation that are its own. Several
        # applies in a row: each changes the object between the operator's read and write.
        for i in range(5):
            manifest = {
                "apiVersion": "roost.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {
                    "name": "wine",
                    "namespace": rollout.namespace,
                    "labels": {"team": "ml"},
                    "annotations": {"gitops.example/sync": str(i)},
                },
                "spec": md["spec"],
            }
            _kubectl_apply(kubeconfig, manifest, "gitops")
            time.sleep(1.0)
        _same_step(run)
        resumed = _resumed(run, time.monotonic(), int(rollout.canary().get("analysisCount", 0)))
        st = _finish(run, "concurrent-kubectl-apply", resumed)
        print(f"  5 applies over {time.monotonic() - started:.1f} s")
    meta = rollout.obj()["metadata"]
    assert meta["labels"]["team"] == "ml"
    assert meta["annotations"]["gitops.example/sync"] == "4"
    managers = {m["manager"] for m in meta["managedFields"]}
    assert "gitops" in managers, managers
    assert st["stable"]["revision"] == run.canary
    conflicts = rollout.op.metric("roost_operator_reconciliations_total", {"result": "conflict"})
    print(f"  status writes replanned after 409 Conflict: {conflicts:.0f}")


def _kill_container(cluster: controlplane.Cluster, namespace: str, pod: str) -> int:
    pid_files = sorted(cluster.layout.pods.glob(f"{namespace}_{pod}_*.pid"))
    assert pid_files, f"no pid file for {pod}"
    pid = int(pid_files[0].read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    return pid


def test_canary_pod_killed_mid_step(rollout: Rollout, cluster: controlplane.Cluster) -> None:
    with mid_step(rollout) as run:
        victim = rollout.pods(run.canary)[0]["metadata"]["name"]
        counted = int(rollout.canary().get("analysisCount", 0))
        killed = time.monotonic()
        _kill_container(cluster, rollout.namespace, victim)

        def restarted() -> bool:
            pods = [p for p in rollout.pods(run.canary) if p["metadata"]["name"] == victim]
            statuses = pods[0]["status"].get("containerStatuses") or [] if pods else []
            return (
                bool(pods)
                and any(s.get("restartCount") for s in statuses)
                and all(s.get("ready") for s in statuses)
            )

        rollout.wait(restarted, "the killed container restarted and Ready")
        ended = time.monotonic()
        resumed = _resumed(run, killed, counted)
        # The pause only counts while every canary pod serves: it starts again (same step).
        _same_step(run, clock_kept=False)
        print(f"  killed container back and Ready after {ended - killed:.1f} s")
        pod_errors = run.traffic.failed_by_pod[victim]
        _finish(run, "canary-pod-killed", resumed, pod_errors=pod_errors)
    # The analysis saw the reset: the restarted process's counters count from zero.
    assert "counters count from zero" in rollout.op.log()


def _holder(api: KubeApi, namespace: str) -> str:
    """Who holds the operators' Lease ("" when nobody does)."""
    lease = api.get(LEASE.format(ns=namespace))
    return str((lease.get("spec") or {}).get("holderIdentity") or "")
