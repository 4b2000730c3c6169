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
from typing import Any

from roost_serving.redact import redact_uri

from roost_operator import builders, conditions, rollout
from roost_operator.api import REQUEST_KINDS, REQUEST_PREFIX
from roost_operator.builders import Manifest, Owner
from roost_operator.gates import AnalysisResult
from roost_operator.pods import PodTarget, RevisionPods, summarise_pods
from roost_operator.revision import compute_revision
from roost_operator.rollout import Event
from roost_operator.spec import (
    AnalysisSpec,
    ModelDeploymentSpec,
    SpecError,
    ValidationSpec,
    parse_spec,
)

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
class Plan:
    """The outcome of one reconciliation."""

    apply: tuple[Manifest, ...] = ()
    scale: tuple[tuple[str, int], ...] = ()
    """(Deployment name, replicas) of revisions no longer built from the spec."""
    delete: tuple[ChildKey, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    spec_error: str | None = None
    traffic: tuple[str, ...] = ()
    """Pods whose ``roost.dev/traffic`` readiness gate the applier opens (pods/status)."""


@dataclass(frozen=True)
class AnalysisRequest:
    """An analysis the handler must run before planning (the source does I/O)."""

    canary_revision: str
    stable_revision: str
    canary_pods: tuple[PodTarget, ...]
    stable_pods: tuple[PodTarget, ...]
    analysis: AnalysisSpec
    """`spec.rollout.analysis`: the source, the window (its interval) and the gates."""
    evidence: Mapping[str, Any] | None
    """``status.canary.evidence``: the sequential tests continue from it."""
    shadow: bool = False
    """A shadow step: judge the stable pods' comparisons of copies, not canary traffic."""


@dataclass(frozen=True)
class ValidationRequest:
    """Validation the handler must run before planning (`roost_operator.validator`)."""

    model_name: str
    canary_revision: str
    stable_revision: str
    canary_pods: tuple[PodTarget, ...]
    stable_pods: tuple[PodTarget, ...]
    validation: ValidationSpec
    profile_uri: str | None
    """The canary's reference profile: its sampled rows when there is no golden set."""


def requests_of(annotations: Mapping[str, str]) -> dict[str, str]:
    """Manual request tokens (`roost.dev/promote|abort|retry` annotations) by request name."""
    keys = {kind: REQUEST_PREFIX + kind for kind in REQUEST_KINDS}
    return {kind: str(annotations[a]) for kind, a in keys.items() if annotations.get(a)}


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
    # status is readable by anyone who can list the object: never the URI's credentials.
    desired = rollout.RevisionRef(revision=revision, model_uri=redact_uri(spec.model.uri))
    obs = _observations(md, spec, desired, state, summary, None, now)
    return _Prepared(spec, image, revision, summary, state, obs)


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
    if not rollout.needs_analysis(p.spec.rollout, p.state, p.obs):
        return None
    canary = p.summary.get(p.state.canary.revision, RevisionPods())
    stable = p.summary.get(p.state.stable.revision, RevisionPods())
    return AnalysisRequest(
        canary_revision=p.state.canary.revision,
        stable_revision=p.state.stable.revision,
        canary_pods=canary.ready_pods,
        stable_pods=stable.ready_pods,
        analysis=p.spec.rollout.analysis,
        evidence=p.state.canary.evidence,
        shadow=p.spec.rollout.shadow(p.state.canary.step) > 0,
    )


def validation_request(
    md: ModelDeploymentObject, pods: Sequence[Mapping[str, Any]], now: datetime, image: str
) -> ValidationRequest | None:
    """The validation to run before `plan`, when the canary's containers are ready for it."""
    try:
        p = _prepare(md, pods, now, image)
    except SpecError:
        return None
    validation = p.spec.rollout.validation
    if p.state.canary is None or p.state.stable is None or validation is None:
        return None
    if not rollout.needs_validation(p.spec.rollout, p.state, p.obs):
        return None
    canary = p.summary.get(p.state.canary.revision, RevisionPods())
    stable = p.summary.get(p.state.stable.revision, RevisionPods())
    return ValidationRequest(
        model_name=md.name,
        canary_revision=p.state.canary.revision,
        stable_revision=p.state.stable.revision,
        canary_pods=canary.ready_pods,
        stable_pods=stable.ready_pods,
        validation=validation,
        profile_uri=p.spec.model.profile_uri,
    )


def _invalid(md: ModelDeploymentObject, message: str, now: datetime) -> Plan:
    """A spec that cannot be served: keep every child as it is, say what to fix."""
    status = dict(md.status)
    previous = status.get("conditions")
    wanted = conditions.kstatus((False, "InvalidSpec", message), None, ("InvalidSpec", message))
    status["observedGeneration"] = md.generation
    status["conditions"] = conditions.merge(previous, wanted, md.generation, now)
    events: tuple[Event, ...] = ()
    if not _same_condition(previous, conditions.STALLED, "InvalidSpec", message):
        events = (Event("Warning", "InvalidSpec", message),)
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
    validation: Mapping[str, Any] | None = None,
) -> Plan:
    """Reconcile one ModelDeployment on paper.

    `observed` holds the children labelled `roost.dev/modeldeployment=<md>` (any kind), `pods`
    the serving pods with that label, `image` the operator's default serving image,
    `validation` the outcome of a `validation_request` run this tick.
    """
    try:
        p = _prepare(md, pods, now, image)
    except SpecError as e:
        return _invalid(md, str(e), now)
    spec, image, revision, summary = p.spec, p.image, p.revision, p.summary
    owner = Owner(md.name, md.namespace, md.uid)
    obs = replace(p.obs, analysis=analysis, validation=validation)
    decision = rollout.decide(p.spec.rollout, p.state, obs)
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

    events = [Event(e.type, e.reason, e.message) for e in decision.events]
    if (
        stalled
        and not _same_condition(previous, conditions.STALLED, *stalled)
        and not any(e.reason == stalled[0] for e in events)
    ):
        events.append(Event("Warning", stalled[0], stalled[1]))
    if ready[0] and not conditions.is_true(previous, conditions.READY):
        events.append(Event("Normal", "Ready", ready[2]))

    requeue = decision.requeue_after
    if progressing is not None and decision.progressing is None:
        requeue = min(requeue or WAIT_REQUEUE_SECONDS, WAIT_REQUEUE_SECONDS)
    # Stable pods always take traffic; canary pods once the rollout allows it (validated).
    traffic = list(stable_pods.gated)
    if new.canary is not None and rollout.traffic_allowed(spec.rollout, new.canary):
        traffic += canary_pods.gated
    return Plan(
        traffic=tuple(traffic),
        apply=tuple(apply),
        scale=tuple(scale),
        delete=tuple(delete),
        status=status,
        events=tuple(events),
        requeue_after=requeue,
    )
