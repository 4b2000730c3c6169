"""The pure planner: (spec, status, observed children and pods, analysis, now) -> a `Plan`.

A plan is everything one reconciliation does: the manifests to apply, the Deployments whose
replicas to change, the children to delete, the new `status`, the events to post and when to
look again. The canary logic itself is `roost_operator.rollout.decide`; the planner turns its
decision into objects and kstatus conditions. Nothing here talks to the API server.

Only the desired revision's Deployment is built from the spec: an older revision (the stable one
while a canary runs, or after a rollback) was built from a spec that no longer exists, so the
planner only changes its replicas (through the scale subresource) and never rewrites its pod
template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from roost_operator import builders, conditions, rollout
from roost_operator.builders import LABEL_MD, LABEL_REVISION, Manifest, Owner
from roost_operator.gates import AnalysisResult, GateThresholds
from roost_operator.revision import compute_revision
from roost_operator.spec import ModelDeploymentSpec, SpecError, parse_spec

REQUEST_ANNOTATIONS = {
    "promote": "roost.dev/promote",
    "abort": "roost.dev/abort",
    "retry": "roost.dev/retry",
}
# Waiting reasons that mean the pod will not become ready by itself.
FAILING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
# Requeue while pods are starting, in case an event is missed (kopf re-lists on reconnects).
WAIT_REQUEUE_SECONDS = 30.0


@dataclass(frozen=True)
class ModelDeploymentObject:
    """What the planner needs of the ModelDeployment itself."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildKey:
    """Identity of a child object."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class PodRef:
    """A ready serving pod: what the pods analysis source scrapes."""

    name: str
    uid: str
    ip: str
    port: int


@dataclass(frozen=True)
class RevisionPods:
    """The pods of one revision, summarised."""

    total: int = 0
    ready: int = 0
    ready_pods: tuple[PodRef, ...] = ()
    failure: str | None = None


@dataclass(frozen=True)
class PlannedEvent:
    """An event to post on the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """The outcome of one reconciliation."""

    apply: tuple[Manifest, ...] = ()
    scale: tuple[tuple[str, int], ...] = ()
    """(Deployment name, replicas) of revisions no longer built from the spec."""
    delete: tuple[ChildKey, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[PlannedEvent, ...] = ()
    requeue_after: float | None = None
    spec_error: str | None = None
    weight: int = 0


@dataclass(frozen=True)
class AnalysisRequest:
    """An analysis the handler must run before planning (the source does I/O)."""

    canary_revision: str
    stable_revision: str
    canary_pods: tuple[PodRef, ...]
    stable_pods: tuple[PodRef, ...]
    window_seconds: float
    thresholds: GateThresholds
    source: Mapping[str, Any]


def policy_of(spec: ModelDeploymentSpec) -> rollout.RolloutPolicy:
    """The rollout policy `rollout.decide` works with."""
    return rollout.RolloutPolicy(
        steps=tuple(
            rollout.Step(weight=s.weight, pause_seconds=s.pause_seconds) for s in spec.steps
        ),
        interval_seconds=spec.analysis.interval_seconds,
        failure_limit=spec.analysis.failure_limit,
        analysis_enabled=_gates_configured(spec),
    )


def _gates_configured(spec: ModelDeploymentSpec) -> bool:
    t = spec.analysis.thresholds
    return any(
        v is not None
        for v in (
            t.max_error_rate,
            t.max_p99_seconds,
            t.max_p99_ratio,
            t.max_psi,
            t.max_js_distance,
        )
    )


def _termination_reason(message: str) -> str:
    """The `roost: error:` line of a termination message (the tail of the log), or its end."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("roost: error:"):
            return line
    return lines[-1] if lines else ""


def pod_failure(pod: Mapping[str, Any]) -> str | None:
    """Why a pod cannot become ready, read from its container statuses, or None."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        last = (cs.get("lastState") or {}).get("terminated") or {}
        current = (cs.get("state") or {}).get("terminated") or {}
        terminated = current or last
        detail = _termination_reason(str(terminated.get("message") or ""))
        if reason in FAILING_REASONS:
            detail = detail or str(waiting.get("message") or "")
            return f"{reason}: {detail}" if detail else reason
        if terminated and terminated.get("exitCode", 0) != 0 and int(cs.get("restartCount", 0)):
            why = str(terminated.get("reason") or "Error")
            return f"{why}: {detail}" if detail else why
    return None


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def summarise_pods(pods: Sequence[Mapping[str, Any]], port: int) -> dict[str, RevisionPods]:
    """Pods grouped by `roost.dev/revision`; terminating pods are not counted."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        rev = (meta.get("labels") or {}).get(LABEL_REVISION)
        if rev:
            grouped.setdefault(rev, []).append(pod)
    out: dict[str, RevisionPods] = {}
    for rev, members in grouped.items():
        ready = [p for p in members if _pod_ready(p)]
        refs = tuple(
            PodRef(
                name=str(p["metadata"]["name"]),
                uid=str(p["metadata"].get("uid", "")),
                ip=str(p["status"]["podIP"]),
                port=_container_port(p, port),
            )
            for p in ready
            if (p.get("status") or {}).get("podIP")
        )
        failures = [f for f in (pod_failure(p) for p in members) if f]
        failure = None
        if failures and len(ready) < len(members):
            failure = failures[0]
        out[rev] = RevisionPods(len(members), len(ready), refs, failure)
    return out


def _container_port(pod: Mapping[str, Any], default: int) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == "http" and p.get("containerPort"):
                return int(p["containerPort"])
    return default


def requests_of(annotations: Mapping[str, str]) -> dict[str, str]:
    """Manual request tokens (`roost.dev/promote|abort|retry` annotations) by request name."""
    return {k: str(annotations[a]) for k, a in REQUEST_ANNOTATIONS.items() if annotations.get(a)}


def _observations(
    md: ModelDeploymentObject,
    spec: ModelDeploymentSpec,
    desired: rollout.RevisionRef,
    state: rollout.RolloutState,
    pods: Mapping[str, RevisionPods],
    analysis: AnalysisResult | None,
    now: datetime,
) -> rollout.Observations:
    stable_rev = state.stable.revision if state.stable else None
    canary_rev = state.canary.revision if state.canary else desired.revision
    canary = pods.get(canary_rev, RevisionPods()) if canary_rev != stable_rev else RevisionPods()
    stable = pods.get(stable_rev, RevisionPods()) if stable_rev else RevisionPods()
    return rollout.Observations(
        desired=desired,
        total_replicas=spec.replicas,
        paused=spec.paused,
        stable_ready_replicas=stable.ready,
        canary_ready_replicas=canary.ready,
        canary_failure=canary.failure if state.canary else None,
        requests=requests_of(md.annotations),
        analysis=analysis,
        now=now,
    )


@dataclass(frozen=True)
class _Prepared:
    spec: ModelDeploymentSpec
    image: str
    revision: str
    summary: dict[str, RevisionPods]
    state: rollout.RolloutState
    policy: rollout.RolloutPolicy
    obs: rollout.Observations


def _prepare(
    md: ModelDeploymentObject, pods: Sequence[Mapping[str, Any]], now: datetime, image: str
) -> _Prepared:
    """Everything both `analysis_request` and `plan` derive; raises `SpecError`."""
    spec = parse_spec(md.spec)
    image = spec.server.image or image
    revision = compute_revision(spec, image)
    summary = summarise_pods(pods, spec.server.port)
    state = rollout.RolloutState.from_status(md.status)
    desired = rollout.RevisionRef(revision=revision, model_uri=spec.model.uri)
    obs = _observations(md, spec, desired, state, summary, None, now)
    return _Prepared(spec, image, revision, summary, state, policy_of(spec), obs)


def analysis_request(
    md: ModelDeploymentObject, pods: Sequence[Mapping[str, Any]], now: datetime, image: str
) -> AnalysisRequest | None:
    """The analysis to run before `plan`, when the canary's step is due for one."""
    try:
        p = _prepare(md, pods, now, image)
    except SpecError:
        return None
    if p.state.canary is None or p.state.stable is None:
        return None
    if not rollout.needs_analysis(p.policy, p.state, p.obs):
        return None
    canary = p.summary.get(p.state.canary.revision, RevisionPods())
    stable = p.summary.get(p.state.stable.revision, RevisionPods())
    return AnalysisRequest(
        canary_revision=p.state.canary.revision,
        stable_revision=p.state.stable.revision,
        canary_pods=canary.ready_pods,
        stable_pods=stable.ready_pods,
        window_seconds=p.spec.analysis.interval_seconds,
        thresholds=p.spec.analysis.thresholds,
        source=p.spec.analysis.source_spec(),
    )


def _invalid(md: ModelDeploymentObject, message: str, now: datetime) -> Plan:
    """A spec that cannot be served: keep every child as it is, say what to fix."""
    status = dict(md.status)
    previous = status.get("conditions")
    wanted = conditions.kstatus((False, "InvalidSpec", message), None, ("InvalidSpec", message))
    status["observedGeneration"] = md.generation
    status["conditions"] = conditions.merge(previous, wanted, md.generation, now)
    events: tuple[PlannedEvent, ...] = ()
    if not _same_condition(previous, conditions.STALLED, "InvalidSpec", message):
        events = (PlannedEvent("Warning", "InvalidSpec", message),)
    return Plan(status=status, events=events, spec_error=message)


def _same_condition(
    previous: Sequence[Mapping[str, Any]] | None, kind: str, reason: str, message: str
) -> bool:
    old = conditions.find(previous, kind)
    return (
        old is not None
        and old.get("status") == "True"
        and old.get("reason") == reason
        and old.get("message") == message
    )


def _children(
    owner: Owner,
    spec: ModelDeploymentSpec,
    desired_rev: str,
    image: str,
    decision: rollout.Decision,
    observed: Mapping[ChildKey, Mapping[str, Any]],
) -> tuple[list[Manifest], list[tuple[str, int]], list[ChildKey]]:
    state = decision.state
    replicas: dict[str, int] = {}
    if state.stable is not None:
        replicas[state.stable.revision] = decision.stable_replicas
    if state.canary is not None:
        replicas[state.canary.revision] = decision.canary_replicas
    apply: list[Manifest] = []
    scale: list[tuple[str, int]] = []
    for rev, count in replicas.items():
        name = builders.deployment_name(owner.name, rev)
        if rev == desired_rev:
            apply.append(builders.build_deployment(owner, spec, rev, count, image))
        elif ChildKey("apps/v1", "Deployment", name) in observed:
            scale.append((name, count))
    apply.append(builders.build_service(owner))
    if builders.wants_pdb(spec):
        apply.append(builders.build_pdb(owner))
    if spec.autoscaling is not None:
        apply.append(builders.build_hpa(owner, spec))
    if spec.http_route is not None or spec.grpc_route is not None:
        apply += [builders.build_revision_service(owner, rev) for rev in replicas]
        stable = state.stable.revision if state.stable else None
        canary = state.canary.revision if state.canary else None
        for route, build in (
            (spec.http_route, builders.build_http_route),
            (spec.grpc_route, builders.build_grpc_route),
        ):
            if route is not None:
                apply.append(build(owner, spec, stable, canary, decision.weight))
    wanted = {ChildKey(m["apiVersion"], m["kind"], m["metadata"]["name"]) for m in apply}
    wanted |= {ChildKey("apps/v1", "Deployment", name) for name, _ in scale}
    delete = sorted(
        (key for key in observed if key not in wanted),
        key=lambda k: (k.kind, k.name),
    )
    return apply, scale, delete


def plan(
    md: ModelDeploymentObject,
    observed: Mapping[ChildKey, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    analysis: AnalysisResult | None,
    now: datetime,
    image: str,
) -> Plan:
    """Reconcile one ModelDeployment on paper.

    `observed` holds the children labelled `roost.dev/modeldeployment=<md>` (any kind), `pods`
    the serving pods with that label, `image` the operator's default serving image.
    """
    try:
        p = _prepare(md, pods, now, image)
    except SpecError as e:
        return _invalid(md, str(e), now)
    spec, image, revision, summary = p.spec, p.image, p.revision, p.summary
    owner = Owner(md.name, md.namespace, md.uid)
    decision = rollout.decide(p.policy, p.state, replace(p.obs, analysis=analysis))
    apply, scale, delete = _children(owner, spec, revision, image, decision, observed)

    new = decision.state
    stable_pods = summary.get(new.stable.revision, RevisionPods()) if new.stable else RevisionPods()
    canary_pods = summary.get(new.canary.revision, RevisionPods()) if new.canary else RevisionPods()
    wanted_total = decision.stable_replicas + decision.canary_replicas
    ready_total = stable_pods.ready + canary_pods.ready

    status: dict[str, Any] = {
        k: v for k, v in md.status.items() if k not in ("stable", "canary", "failedRevision")
    }
    status.update(new.to_status())
    # Remembered so that a route the spec stops naming is still found, and pruned.
    status["httpRoute"] = spec.http_route.name if spec.http_route is not None else None
    status["grpcRoute"] = spec.grpc_route.name if spec.grpc_route is not None else None
    status["observedGeneration"] = md.generation
    status["replicas"] = sum(p.total for p in summary.values())
    status["readyReplicas"] = sum(p.ready for p in summary.values())
    status["selector"] = builders.selector(md.name)
    if new.stable is not None and isinstance(status.get("stable"), dict):
        status["stable"] = {**status["stable"], "readyReplicas": stable_pods.ready}
    if new.canary is not None and isinstance(status.get("canary"), dict):
        status["canary"] = {**status["canary"], "readyReplicas": canary_pods.ready}

    stalled = decision.stalled
    failing = stable_pods.failure if new.stable else None
    if stalled is None and failing and stable_pods.ready < decision.stable_replicas:
        stalled = (
            "PodsFailing",
            f"revision {new.stable.revision if new.stable else ''}: {failing}",
        )
    serving = wanted_total > 0 and ready_total >= wanted_total
    if spec.replicas == 0:
        ready = (True, "ScaledToZero", "spec.replicas is 0")
    elif serving:
        ready = (True, "Serving", f"{ready_total}/{wanted_total} pods ready")
    elif (
        stalled is not None
        and stable_pods.ready > 0
        and (
            # Right after a rollback the stable revision grows back to full scale; it still serves.
            stalled[0] == "CanaryRolledBack" or stable_pods.ready >= decision.stable_replicas
        )
    ):
        ready = (
            True,
            "StableServing",
            f"stable revision serves {stable_pods.ready}/{decision.stable_replicas} ready pods",
        )
    else:
        ready = (False, "PodsNotReady", f"{ready_total}/{wanted_total} pods ready")
    progressing = decision.progressing
    if progressing is None and not (serving or spec.replicas == 0):
        progressing = ("PodsStarting", f"waiting for pods: {ready_total}/{wanted_total} ready")
    wanted = conditions.kstatus(ready, progressing, stalled)
    previous = md.status.get("conditions")
    status["conditions"] = conditions.merge(previous, wanted, md.generation, now)

    events = [PlannedEvent(e.type, e.reason, e.message) for e in decision.events]
    if (
        stalled
        and not _same_condition(previous, conditions.STALLED, *stalled)
        and not any(e.reason == stalled[0] for e in events)
    ):
        events.append(PlannedEvent("Warning", stalled[0], stalled[1]))
    if ready[0] and not conditions.is_true(previous, conditions.READY):
        events.append(PlannedEvent("Normal", "Ready", ready[2]))

    requeue = decision.requeue_after
    if progressing is not None and decision.progressing is None:
        requeue = min(requeue or WAIT_REQUEUE_SECONDS, WAIT_REQUEUE_SECONDS)
    return Plan(
        apply=tuple(apply),
        scale=tuple(scale),
        delete=tuple(delete),
        status=status,
        events=tuple(events),
        requeue_after=requeue,
        weight=decision.weight if new.canary else 0,
    )


def owned_by(labels: Mapping[str, str] | None, name: str) -> bool:
    """Whether an object with these labels is a child of ModelDeployment `name`."""
    return (labels or {}).get(LABEL_MD) == name
