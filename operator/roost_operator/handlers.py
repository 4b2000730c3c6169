"""Thin kopf handlers: observe through in-memory indexes, plan purely, apply what changed.

One daemon per ModelDeployment runs its reconcile loop, so reconciliations of one object never
overlap (the canary analysis keeps baselines between ticks). It wakes up when the
ModelDeployment, one of its Deployments or one of its pods changes (`@kopf.on.event` pokes it),
when the plan asks to look again (a step's pause ends, the next analysis is due), or after
`RESYNC_SECONDS` as a level-based safety net. Children and pods are read from kopf indexes fed
by watches, so an idle operator sends no requests at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from roost_operator import planner
from roost_operator.analysis import AnalysisSources, PodTarget
from roost_operator.applier import MD_PATH, Applier, collection_path
from roost_operator.builders import LABEL_MD
from roost_operator.continuity import Continuity
from roost_operator.gates import AnalysisResult
from roost_operator.metrics import OperatorMetrics, new_outcomes
from roost_operator.planner import ChildKey, ModelDeploymentObject
from roost_operator.spec import SpecError, parse_spec

GROUP, VERSION, PLURAL = "roost.dev", "v1alpha1", "modeldeployments"
RESYNC_SECONDS = 300.0
# Pod and Deployment events come in bursts (a rollout touches several at once): one
# reconciliation after a short quiet period does the work of many.
DEBOUNCE_SECONDS = 0.2
# A status write that lost a race is planned again on fresh state; more than a few losses in
# a row means a hot loop with another writer, which a TemporaryError backs off from.
CONFLICT_RETRIES = 3
# What an unreachable or failing API server raises: the kubernetes client's urllib3 gives up
# with MaxRetryError (not an OSError) when connections are refused.
API_ERRORS = (ApiException, aiohttp.ClientError, OSError, urllib3.exceptions.HTTPError)
ChildIndexKey = tuple[str, str]


@dataclass(frozen=True)
class OperatorConfig:
    """What `roost-operator` was started with (see `main`)."""

    namespaces: tuple[str, ...] = ()
    serving_image: str = "ghcr.io/roost-dev/roost-serving:0.1.0"
    metrics_port: int = 9090
    health_port: int = 8081
    bind_address: str = "0.0.0.0"


@dataclass
class Runtime:
    """Process-wide state, kept in kopf's memo."""

    config: OperatorConfig
    applier: Applier
    sources: AnalysisSources
    metrics: OperatorMetrics
    wakers: dict[ChildIndexKey, asyncio.Event] = field(default_factory=dict)
    written: dict[ChildIndexKey, tuple[str, dict[str, Any], str]] = field(default_factory=dict)
    """Per ModelDeployment: (resourceVersion the status was written over, that status, the
    resourceVersion the write made)."""
    continuity: Continuity = field(default_factory=Continuity)
    """Interruptions (failing reconciliations, rollouts picked up) that events report."""


def _kube_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """All kopf tuning, and the process-wide runtime."""
    # roost's own prefixes: nothing of kopf's default `kopf.zalando.org` on users' objects.
    settings.persistence.finalizer = "roost.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="roost.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="roost.dev", key="last-handled-configuration"
    )
    # Events are writes: only warnings from kopf's logs become events; roost posts its own
    # events for the transitions a user cares about.
    settings.posting.level = logging.WARNING
    # Watches: the server ends a watch after 5 minutes so a silently dropped connection is
    # noticed; the client gives it a little longer before it calls the connection dead.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Plain requests (status patches, kopf's own patches) should never take long; a hung one
    # must fail and be retried rather than stall the object's handlers.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # One replica, no peering: the rollout state lives in status, so a restarted operator
    # resumes where it was, and two replicas would race on analysis (docs/architecture.md).
    settings.peering.standalone = True
    settings.peering.mandatory = False
    cfg = memo.get("config") or OperatorConfig()
    runtime = Runtime(
        config=cfg,
        applier=Applier(await asyncio.to_thread(_kube_client)),
        sources=AnalysisSources(),
        metrics=OperatorMetrics(),
    )
    runtime.metrics.serve(cfg.metrics_port, cfg.bind_address)
    memo["runtime"] = runtime
    logger.info(
        "roost-operator: namespaces %s, serving image %s, metrics on :%d",
        ",".join(cfg.namespaces) or "all",
        cfg.serving_image,
        cfg.metrics_port,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Close HTTP sessions and the API client."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.sources.close()
        runtime.applier.api.close()  # type: ignore[no-untyped-call]


def _wake(memo: kopf.Memo, namespace: str | None, name: str | None) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None and namespace and name:
        waker = runtime.wakers.get((namespace, name))
        if waker is not None:
            waker.set()


def _slim(body: kopf.Body) -> dict[str, Any]:
    """The object without managedFields (the largest part, and never read)."""
    meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


def _child_index(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels
) -> dict[ChildIndexKey, dict[str, Any]]:
    return {(str(namespace), str(labels[LABEL_MD])): _slim(body)}


@kopf.index("apps", "v1", "deployments", labels={LABEL_MD: kopf.PRESENT})
def roost_deployments(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[ChildIndexKey, dict[str, Any]]:
    """Deployments of each ModelDeployment."""
    return _child_index(body, namespace, labels)


@kopf.index("v1", "services", labels={LABEL_MD: kopf.PRESENT})
def roost_services(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[ChildIndexKey, dict[str, Any]]:
    """Services of each ModelDeployment."""
    return _child_index(body, namespace, labels)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels={LABEL_MD: kopf.PRESENT})
def roost_pdbs(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[ChildIndexKey, dict[str, Any]]:
    """PodDisruptionBudgets of each ModelDeployment."""
    return _child_index(body, namespace, labels)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels={LABEL_MD: kopf.PRESENT})
def roost_hpas(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[ChildIndexKey, dict[str, Any]]:
    """HorizontalPodAutoscalers of each ModelDeployment."""
    return _child_index(body, namespace, labels)


@kopf.index("v1", "pods", labels={LABEL_MD: kopf.PRESENT})
def roost_pods(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[ChildIndexKey, dict[str, Any]]:
    """Serving pods of each ModelDeployment (only what the planner reads)."""
    meta = body.get("metadata", {})
    slim = {
        "metadata": {
            k: meta[k] for k in ("name", "uid", "labels", "deletionTimestamp") if k in meta
        },
        "spec": {
            "containers": [{"ports": c.get("ports") or []} for c in body.spec.get("containers", [])]
        },
        "status": {
            k: body.status[k]
            for k in ("podIP", "conditions", "containerStatuses")
            if k in body.status
        },
    }
    return {(str(namespace), str(labels[LABEL_MD])): slim}


@kopf.on.event("v1", "pods", labels={LABEL_MD: kopf.PRESENT})
@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MD: kopf.PRESENT})
async def child_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """A pod or Deployment of a ModelDeployment changed: reconcile its owner soon."""
    _wake(memo, namespace, labels.get(LABEL_MD))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modeldeployment_changed(
    namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Spec, annotations (manual requests) or status changed: reconcile now."""
    _wake(memo, namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def validate(spec: kopf.Spec, **_: Any) -> None:
    """Refuse a spec that cannot be served; the daemon reports it as Stalled/InvalidSpec."""
    try:
        parse_spec(dict(spec))
    except SpecError as e:
        raise kopf.PermanentError(str(e)) from e


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
    """The HTTPRoutes this reconciliation must see (no index: a GET by name each).

    The route `spec.traffic` names, whoever made it (roost applies its fields to it), and the
    one roost applied before (`status.httpRoute`) when the spec no longer names it — but only
    if this ModelDeployment owns it, so the planner prunes roost's routes and never a user's.
    """
    named = ((md.spec.get("traffic") or {}).get("httpRoute") or {}).get("name")
    previous = md.status.get("httpRoute")
    path = collection_path("gateway.networking.k8s.io/v1", "HTTPRoute", md.namespace)
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
        md = _md_object(obj, status)
        if attempt == 0:
            analysis = await _analyse(runtime, md, list(_values(pods_index, key)), logger)
            analysed_over = _last_analysis(status)
        elif analysis is not None and _last_analysis(status) != analysed_over:
            logger.info("a newer analysis is in status already; this one is dropped")
            analysis = None
        try:
            return await _plan_and_apply(
                runtime, body, md, resource_version, analysis, pods_index, child_indexes, logger
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
    source = runtime.sources.for_spec(request.source)
    analysis = await source.analyse(
        namespace=md.namespace,
        name=md.name,
        canary_revision=request.canary_revision,
        stable_revision=request.stable_revision,
        canary_pods=[PodTarget(p.name, p.uid, p.ip, p.port) for p in request.canary_pods],
        stable_pods=[PodTarget(p.name, p.uid, p.ip, p.port) for p in request.stable_pods],
        window_seconds=request.window_seconds,
        thresholds=request.thresholds,
        now=now,
    )
    runtime.metrics.observe_analysis(md.namespace, md.name, analysis)
    logger.info("analysis %s: %s", analysis.verdict, analysis.message)
    return analysis


async def _plan_and_apply(
    runtime: Runtime,
    body: kopf.Body,
    md: ModelDeploymentObject,
    resource_version: str,
    analysis: AnalysisResult | None,
    pods_index: kopf.Index[ChildIndexKey, dict[str, Any]],
    child_indexes: Iterable[kopf.Index[ChildIndexKey, dict[str, Any]]],
    logger: kopf.Logger,
) -> planner.Plan:
    key = (md.namespace, md.name)
    observed = _observed(md.uid, child_indexes, key)
    for route in await _http_routes(runtime, md):
        observed[ChildKey(route["apiVersion"], route["kind"], route["metadata"]["name"])] = route
    pods = list(_values(pods_index, key))
    plan = planner.plan(
        md, observed, pods, analysis, datetime.now(UTC), runtime.config.serving_image
    )
    writes = await runtime.applier.execute(md.namespace, plan, observed)
    updated = await runtime.applier.patch_status(
        md.namespace, md.name, md.status, plan.status, resource_version=resource_version
    )
    if updated is not None:
        new_version = str(updated["metadata"]["resourceVersion"])
        runtime.written[key] = (str(body.metadata.get("resourceVersion")), plan.status, new_version)
        runtime.metrics.observe_outcomes(new_outcomes(md.status, plan.status))
    if writes or updated is not None:
        logger.debug("reconciled with %d child writes, status %s", writes, bool(updated))
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    runtime.metrics.observe_status(md.namespace, md.name, plan.status)
    return plan


# backoff: an error the loop does not expect still restarts it soon (kopf's default is 60 s).
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, backoff=5.0)
async def reconcile_loop(
    body: kopf.Body,
    name: str | None,
    namespace: str | None,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Reconcile one ModelDeployment whenever something about it changed, until it is gone.

    kopf passes every index by its function's name in `kwargs`.
    """
    runtime: Runtime = memo["runtime"]
    key = (str(namespace), str(name))
    waker = runtime.wakers.setdefault(key, asyncio.Event())
    roost_pods: kopf.Index[ChildIndexKey, dict[str, Any]] = kwargs["roost_pods"]
    children = tuple(
        kwargs[n] for n in ("roost_deployments", "roost_services", "roost_pdbs", "roost_hpas")
    )
    runtime.continuity.picked_up(body, str(memo.get("identity") or "roost-operator"))
    try:
        while not stopped:
            waker.clear()
            started = time.perf_counter()
            try:
                plan = await reconcile(runtime, body, roost_pods, children, logger)
            except API_ERRORS as e:
                # The API server unreachable or failing: nothing was decided, nothing written
                # (a status write is all or nothing); the next try plans on fresh state.
                runtime.metrics.reconciliations.labels("error").inc()
                reason = (
                    f"HTTP {e.status}: {e.reason}" if isinstance(e, ApiException) else str(e)[:200]
                )
                runtime.continuity.failed(key, reason)
                raise kopf.TemporaryError(f"reconcile failed ({reason}); retrying", delay=2) from e
            finally:
                runtime.metrics.reconcile_duration.observe(time.perf_counter() - started)
            runtime.continuity.succeeded(body, key)
            result = "invalid" if plan.spec_error else "success"
            runtime.metrics.reconciliations.labels(result).inc()
            timeout = plan.requeue_after if plan.requeue_after is not None else RESYNC_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), timeout=max(timeout, 0.05))
            await asyncio.sleep(DEBOUNCE_SECONDS)
    finally:
        runtime.wakers.pop(key, None)
        if (
            stopped.reason is not None
            and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED
        ):
            runtime.written.pop(key, None)
            runtime.continuity.forget(key)
            runtime.sources.forget(*key)
            runtime.metrics.forget(*key)
