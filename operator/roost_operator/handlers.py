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
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from roost_operator import registry_webhook
from roost_operator.analysis import AnalysisSources
from roost_operator.api import GROUP, LABEL_MD, PLURAL, VERSION
from roost_operator.applier import Applier
from roost_operator.continuity import Continuity
from roost_operator.metrics import OperatorMetrics
from roost_operator.reconciler import reconcile
from roost_operator.registry_sync import RegistrySync
from roost_operator.runtime_push import RuntimePusher

RESYNC_SECONDS = 300.0
# Pod and Deployment events come in bursts (a rollout touches several at once): one
# reconciliation after a short quiet period does the work of many.
DEBOUNCE_SECONDS = 0.2
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
    pusher: RuntimePusher
    """Runtime configuration of the serving pods (tokens, pushes)."""
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
    applier = Applier(await asyncio.to_thread(_kube_client))
    runtime = Runtime(
        config=cfg,
        applier=applier,
        sources=AnalysisSources(),
        metrics=OperatorMetrics(),
        registry=RegistrySync(applier),
        pusher=RuntimePusher(applier),
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
    runtime.metrics.ready.set()
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
        await runtime.pusher.close()
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


# The kinds the planner prunes and compares, one kopf index each; the daemon gets every index
# in its kwargs under the index's id.
CHILD_INDEXES: dict[str, tuple[str, ...]] = {
    "roost_deployments": ("apps", "v1", "deployments"),
    "roost_services": ("v1", "services"),
    "roost_pdbs": ("policy", "v1", "poddisruptionbudgets"),
    "roost_hpas": ("autoscaling", "v2", "horizontalpodautoscalers"),
}


def child_index(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[ChildIndexKey, dict[str, Any]]:
    """Children of each ModelDeployment, keyed by (namespace, ModelDeployment name)."""
    return {(str(namespace), str(labels[LABEL_MD])): _slim(body)}


for _id, _resource in CHILD_INDEXES.items():
    kopf.index(*_resource, id=_id, labels={LABEL_MD: kopf.PRESENT})(child_index)


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
    children = tuple(kwargs[n] for n in CHILD_INDEXES)
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
            runtime.registry.forget(*key)
            runtime.pusher.forget(str(body.metadata.uid))
            runtime.metrics.forget(*key)
