"""One reconciliation of one ModelDeployment: observe, analyse if due, plan, apply, write status.

The status write is guarded by the resourceVersion it was planned on; a write that lost a race
with another writer (kubectl, a GitOps tool, a former leader) is planned again on fresh state
(docs/architecture.md, "High availability"). `handlers.reconcile_loop` calls `reconcile`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kopf
from kubernetes.client.exceptions import ApiException

from roost_operator import planner
from roost_operator.applier import MD_PATH, collection_path
from roost_operator.builders import Owner
from roost_operator.gates import AnalysisResult
from roost_operator.metrics import new_outcomes
from roost_operator.planner import ChildKey, ModelDeploymentObject
from roost_operator.pods import summarise_pods
from roost_operator.registry_sync import Prepared
from roost_operator.rollout import RolloutState
from roost_operator.runtime_push import RuntimeContext
from roost_operator.spec import parse_spec

if TYPE_CHECKING:  # handlers imports this module: the type only, no import cycle at run time
    from roost_operator.handlers import Runtime

ChildIndexKey = tuple[str, str]
# A status write that lost a race is planned again on fresh state; more than a few losses in
# a row means a hot loop with another writer, which a TemporaryError backs off from.
CONFLICT_RETRIES = 3


def _values(index: kopf.Index[ChildIndexKey, dict[str, Any]], key: ChildIndexKey) -> Iterable[Any]:
    return index.get(key, [])


def _observed(
    uid: str, indexes: Iterable[kopf.Index[ChildIndexKey, dict[str, Any]]], key: ChildIndexKey
) -> dict[ChildKey, dict[str, Any]]:
    out: dict[ChildKey, dict[str, Any]] = {}
    for index in indexes:
        for obj in _values(index, key):
            owners = obj["metadata"].get("ownerReferences") or []
            # A child of an earlier ModelDeployment of the same name is the garbage
            # collector's to delete, not ours to adopt or prune.
            if owners and not any(o.get("uid") == uid for o in owners):
                continue
            out[ChildKey(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])] = obj
    return out


async def _http_routes(runtime: Runtime, md: ModelDeploymentObject) -> list[dict[str, Any]]:
    """The HTTPRoutes and GRPCRoutes this reconciliation must see (no index: a GET by name).

    The route `spec.traffic` names, whoever made it (roost applies its fields to it), and the
    one roost applied before (`status.httpRoute` / `status.grpcRoute`) when the spec no longer
    names it — but only if this ModelDeployment owns it, so the planner prunes roost's routes
    and never a user's.
    """
    found = []
    for kind, key in (("HTTPRoute", "httpRoute"), ("GRPCRoute", "grpcRoute")):
        found += await _routes(runtime, md, kind, key)
    return found


async def _routes(
    runtime: Runtime, md: ModelDeploymentObject, kind: str, key: str
) -> list[dict[str, Any]]:
    named = ((md.spec.get("traffic") or {}).get(key) or {}).get("name")
    previous = md.status.get(key)
    path = collection_path("gateway.networking.k8s.io/v1", kind, md.namespace)
    found = []
    for name in dict.fromkeys(n for n in (named, previous) if isinstance(n, str) and n):
        try:
            route: dict[str, Any] = await runtime.applier.request("GET", f"{path}/{name}")
        except ApiException as e:
            if e.status == 404:  # not there (or the Gateway API CRDs are not installed)
                continue
            raise
        owners = route["metadata"].get("ownerReferences") or []
        if name == named or any(o.get("uid") == md.uid for o in owners):
            found.append(route)
    return found


def _md_object(obj: Mapping[str, Any], status: dict[str, Any]) -> ModelDeploymentObject:
    meta = obj.get("metadata") or {}
    return ModelDeploymentObject(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        uid=str(meta.get("uid")),
        generation=int(meta.get("generation") or 0),
        spec=dict(obj.get("spec") or {}),
        status=status,
        annotations=dict(meta.get("annotations") or {}),
    )


def _last_analysis(status: Mapping[str, Any]) -> Any:
    return (status.get("canary") or {}).get("lastAnalysis")


async def reconcile(
    runtime: Runtime,
    body: kopf.Body,
    pods_index: kopf.Index[ChildIndexKey, dict[str, Any]],
    child_indexes: Iterable[kopf.Index[ChildIndexKey, dict[str, Any]]],
    logger: kopf.Logger,
) -> planner.Plan:
    """One reconciliation of one ModelDeployment.

    The status write is guarded by the resourceVersion it was planned on. When another writer
    changed the object in between (kubectl, Argo CD, a new leader), the write gets 409: the
    object is read again and planned again on the fresh state, so nothing the other writer set
    is overwritten. An analysis already made is kept for the retry only if the fresh status
    records no newer one: one analysis is never applied twice, nor on top of another.
    """
    meta = body.metadata
    key = (str(meta.namespace), str(meta.name))
    obj: Mapping[str, Any] = body
    status = dict(body.get("status") or {})
    resource_version = str(meta.get("resourceVersion"))
    cached = runtime.written.get(key)
    if cached is not None and cached[0] == resource_version:
        # Our own status write is not back from the watch yet: plan on what we wrote.
        status, resource_version = dict(cached[1]), cached[2]
    analysis: AnalysisResult | None = None
    analysed_over: Any = None
    for attempt in range(CONFLICT_RETRIES + 1):
        as_written = _md_object(obj, status)
        # A models:/ reference is planned as the version it resolves to (roost_operator.registry).
        prepared = await runtime.registry.prepare(as_written, datetime.now(UTC))
        try:
            if prepared.plan is not None:  # nothing resolved (yet): the status says why
                return await _publish(runtime, body, as_written, resource_version, prepared.plan)
            md = prepared.md
            if attempt == 0:
                analysis = await _analyse(runtime, md, list(_values(pods_index, key)), logger)
                analysed_over = _last_analysis(status)
            elif analysis is not None and _last_analysis(status) != analysed_over:
                logger.info("a newer analysis is in status already; this one is dropped")
                analysis = None
            return await _plan_and_apply(
                runtime,
                body,
                as_written,
                prepared,
                resource_version,
                analysis,
                pods_index,
                child_indexes,
                logger,
            )
        except ApiException as e:
            if e.status != 409 or attempt == CONFLICT_RETRIES:
                raise
            runtime.metrics.reconciliations.labels("conflict").inc()
            logger.info("status conflict (another writer changed the object); replanning")
            obj = await runtime.applier.request(
                "GET", MD_PATH.format(**dict(zip(("namespace", "name"), key, strict=True)))
            )
            status = dict(obj.get("status") or {})
            resource_version = str(obj["metadata"]["resourceVersion"])
    raise AssertionError("unreachable")  # the loop returns or raises


async def _analyse(
    runtime: Runtime,
    md: ModelDeploymentObject,
    pods: list[Any],
    logger: kopf.Logger,
) -> AnalysisResult | None:
    """The analysis the step is due for, or None."""
    now = datetime.now(UTC)
    request = planner.analysis_request(md, pods, now, runtime.config.serving_image)
    if request is None:
        return None
    source = runtime.sources.for_spec(request.analysis)
    analysis = await source.analyse(
        namespace=md.namespace,
        name=md.name,
        canary_revision=request.canary_revision,
        stable_revision=request.stable_revision,
        canary_pods=request.canary_pods,
        stable_pods=request.stable_pods,
        window_seconds=request.analysis.interval_seconds,
        spec=request.analysis,
        evidence=request.evidence,
        now=now,
    )
    runtime.metrics.observe_analysis(md.namespace, md.name, analysis)
    logger.info("analysis %s: %s", analysis.verdict, analysis.message)
    return analysis


async def _plan_and_apply(
    runtime: Runtime,
    body: kopf.Body,
    as_written: ModelDeploymentObject,
    prepared: Prepared,
    resource_version: str,
    analysis: AnalysisResult | None,
    pods_index: kopf.Index[ChildIndexKey, dict[str, Any]],
    child_indexes: Iterable[kopf.Index[ChildIndexKey, dict[str, Any]]],
    logger: kopf.Logger,
) -> planner.Plan:
    md = prepared.md
    key = (md.namespace, md.name)
    observed = _observed(md.uid, child_indexes, key)
    for route in await _http_routes(runtime, md):
        observed[ChildKey(route["apiVersion"], route["kind"], route["metadata"]["name"])] = route
    pods = list(_values(pods_index, key))
    now, image = datetime.now(UTC), runtime.config.serving_image
    plan = planner.plan(md, observed, pods, analysis, now, image)
    evidence = analysis.to_status() if analysis is not None else None
    fields = body.metadata.get("managedFields")
    # Audit facts in status, verdicts written back to the registry, audit events.
    plan = await runtime.registry.finish(as_written, prepared, plan, fields, evidence, image, now)
    owner = Owner(md.name, md.namespace, md.uid)
    # The pods' runtime token exists before the first Deployment that reads it.
    token = await runtime.pusher.token(owner) if plan.spec_error is None else None
    writes = await runtime.applier.execute(md.namespace, plan, observed)
    if writes:
        logger.debug("reconciled with %d child writes", writes)
    if token is not None:
        spec = parse_spec(md.spec)
        context = RuntimeContext(
            owner,
            spec,
            RolloutState.from_status(plan.status),
            summarise_pods(pods, spec.server.port),
        )
        await runtime.pusher.push(context, token)
    return await _publish(runtime, body, as_written, resource_version, plan)


async def _publish(
    runtime: Runtime,
    body: kopf.Body,
    md: ModelDeploymentObject,
    resource_version: str,
    plan: planner.Plan,
) -> planner.Plan:
    """Write the planned status (guarded by `resource_version`), post events, set gauges."""
    key = (md.namespace, md.name)
    updated = await runtime.applier.patch_status(
        md.namespace, md.name, md.status, plan.status, resource_version=resource_version
    )
    if updated is not None:
        new_version = str(updated["metadata"]["resourceVersion"])
        runtime.written[key] = (str(body.metadata.get("resourceVersion")), plan.status, new_version)
        runtime.metrics.observe_outcomes(new_outcomes(md.status, plan.status))
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    runtime.metrics.observe_status(md.namespace, md.name, plan.status)
    return plan
