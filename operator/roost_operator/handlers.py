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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from roost_operator import planner, registry, registry_webhook
from roost_operator.analysis import AnalysisSources, PodTarget
from roost_operator.applier import Applier, collection_path
from roost_operator.builders import LABEL_MD
from roost_operator.metrics import OperatorMetrics, new_outcomes
from roost_operator.planner import ChildKey, ModelDeploymentObject
from roost_operator.registry_sync import RegistrySync
from roost_operator.spec import SpecError, parse_spec

GROUP, VERSION, PLURAL = "roost.dev", "v1alpha1", "modeldeployments"
RESYNC_SECONDS = 300.0
# Pod and Deployment events come in bursts (a rollout touches several at once): one
# reconciliation after a short quiet period does the work of many.
DEBOUNCE_SECONDS = 0.2
ChildIndexKey = tuple[str, str]


@dataclass(frozen=True)
class OperatorConfig:
    """What `roost-operator` was started with (see `main`)."""

    namespaces: tuple[str, ...] = ()
    serving_image: str = "ghcr.io/roost-dev/roost-serving:0.1.0"
    metrics_port: int = 9090
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    registry_webhook_port: int | None = None
    registry_webhook_secret: str | None = None


@dataclass
class Runtime:
    """Process-wide state, kept in kopf's memo."""

    config: OperatorConfig
    applier: Applier
    sources: AnalysisSources
    metrics: OperatorMetrics
    registry: RegistrySync
    wakers: dict[ChildIndexKey, asyncio.Event] = field(default_factory=dict)
    written: dict[ChildIndexKey, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """Per ModelDeployment: (resourceVersion the status was written over, that status)."""


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
    applier = Applier(await asyncio.to_thread(_kube_client))
    runtime = Runtime(
        config=cfg,
        applier=applier,
        sources=AnalysisSources(),
        metrics=OperatorMetrics(),
        registry=RegistrySync(applier),
    )
    runtime.registry.wake = lambda namespace, name: _wake(memo, namespace, name)
    if cfg.registry_webhook_port is not None:
        memo["webhook"] = await registry_webhook.serve(
            runtime.registry,
            cfg.registry_webhook_port,
            cfg.bind_address,
            cfg.registry_webhook_secret,
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
        await runtime.registry.close()
        runtime.applier.api.close()  # type: ignore[no-untyped-call]
    webhook = memo.get("webhook")
    if webhook is not None:
        await webhook.cleanup()


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
        model = dict(spec.get("model") or {})
        if registry.is_reference(str(model.get("uri") or "")):
            registry.parse_reference(str(model["uri"]))
            registry.registry_spec(model)
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


async def reconcile(
    runtime: Runtime,
    body: kopf.Body,
    pods_index: kopf.Index[ChildIndexKey, dict[str, Any]],
    child_indexes: Iterable[kopf.Index[ChildIndexKey, dict[str, Any]]],
    logger: kopf.Logger,
) -> planner.Plan:
    """One reconciliation of one ModelDeployment."""
    meta = body.metadata
    namespace, name = str(meta.namespace), str(meta.name)
    key = (namespace, name)
    status = dict(body.get("status") or {})
    cached = runtime.written.get(key)
    if cached is not None and cached[0] == meta.get("resourceVersion"):
        status = cached[1]  # our own status write is not back from the watch yet
    as_written = ModelDeploymentObject(
        name=name,
        namespace=namespace,
        uid=str(meta.uid),
        generation=int(meta.get("generation") or 0),
        spec=dict(body.get("spec") or {}),
        status=status,
        annotations=dict(meta.annotations),
    )
    now = datetime.now(UTC)
    # A models:/ reference is planned as the version it resolves to (roost_operator.registry).
    prepared = await runtime.registry.prepare(as_written, now)
    if prepared.plan is not None:
        return await _publish(runtime, body, key, status, prepared.plan, logger)
    md = prepared.md
    observed = _observed(md.uid, child_indexes, key)
    for route in await _http_routes(runtime, md):
        observed[ChildKey(route["apiVersion"], route["kind"], route["metadata"]["name"])] = route
    pods = list(_values(pods_index, key))
    image = runtime.config.serving_image
    analysis = None
    request = planner.analysis_request(md, pods, now, image)
    if request is not None:
        source = runtime.sources.for_spec(request.source)
        analysis = await source.analyse(
            namespace=namespace,
            name=name,
            canary_revision=request.canary_revision,
            stable_revision=request.stable_revision,
            canary_pods=[PodTarget(p.name, p.uid, p.ip, p.port) for p in request.canary_pods],
            stable_pods=[PodTarget(p.name, p.uid, p.ip, p.port) for p in request.stable_pods],
            window_seconds=request.window_seconds,
            thresholds=request.thresholds,
            now=now,
        )
        runtime.metrics.observe_analysis(namespace, name, analysis)
        logger.info("analysis %s: %s", analysis.verdict, analysis.message)
    plan = planner.plan(md, observed, pods, analysis, now, image)
    evidence = analysis.to_status() if analysis is not None else None
    fields = meta.get("managedFields")
    plan = await runtime.registry.finish(as_written, prepared, plan, fields, evidence, image, now)
    writes = await runtime.applier.execute(namespace, plan, observed)
    return await _publish(runtime, body, key, status, plan, logger, writes)


async def _publish(
    runtime: Runtime,
    body: kopf.Body,
    key: ChildIndexKey,
    status: dict[str, Any],
    plan: planner.Plan,
    logger: kopf.Logger,
    writes: int = 0,
) -> planner.Plan:
    """Write the planned status, post its events, update the gauges."""
    namespace, name = key
    meta = body.metadata
    updated = await runtime.applier.patch_status(namespace, name, status, plan.status)
    if updated is not None:
        runtime.written[key] = (str(meta.get("resourceVersion")), plan.status)
        runtime.metrics.observe_outcomes(new_outcomes(status, plan.status))
    if writes or updated is not None:
        logger.debug("reconciled with %d child writes, status %s", writes, bool(updated))
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    runtime.metrics.observe_status(namespace, name, plan.status)
    return plan


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
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
    try:
        while not stopped:
            waker.clear()
            started = time.perf_counter()
            try:
                plan = await reconcile(runtime, body, roost_pods, children, logger)
            except (ApiException, aiohttp.ClientError, OSError) as e:
                runtime.metrics.reconciliations.labels("error").inc()
                reason = f"HTTP {e.status}: {e.reason}" if isinstance(e, ApiException) else str(e)
                raise kopf.TemporaryError(f"reconcile failed ({reason}); retrying", delay=5) from e
            finally:
                runtime.metrics.reconcile_duration.observe(time.perf_counter() - started)
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
            runtime.sources.forget(*key)
            runtime.registry.forget(*key)
            runtime.metrics.forget(*key)
