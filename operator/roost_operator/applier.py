"""Carries out a `planner.Plan` against the API server, writing only what changed.

- Children: server-side apply (field manager `roost`, force) — but only when the desired
  manifest differs from the live object. Each applied manifest carries the hash of itself in
  the annotation `roost.dev/applied-hash`; a child is rewritten when that hash differs (the
  desired object changed, including fields that were removed) or when a desired field no longer
  matches the live one (someone edited it). A restarted operator therefore writes nothing.
- Older revisions: replicas through the Deployment's scale subresource, when different.
- Pruning: children labelled as ours that the plan no longer wants are deleted.
- Status: a JSON merge patch of the keys that changed (removed keys as null), or no request.

The kubernetes client's synchronous API runs in a worker thread so the event loop (kopf's
watches, other ModelDeployments' daemons) never blocks on a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from roost_operator.api import TRAFFIC_CONDITION
from roost_operator.builders import Manifest
from roost_operator.planner import ChildKey, Plan
from roost_operator.times import rfc3339_seconds

FIELD_MANAGER = "roost"
HASH_ANNOTATION = "roost.dev/applied-hash"
PLURALS = {
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "grpcroutes",
}
# Seconds per request: a hung API call must fail and be retried, not stall the daemon.
REQUEST_TIMEOUT = 30.0
MD_PATH = "/apis/roost.dev/v1alpha1/namespaces/{namespace}/modeldeployments/{name}"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    """REST path of a namespaced collection."""
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def with_hash(manifest: Manifest) -> Manifest:
    """The manifest with `roost.dev/applied-hash` set to the hash of its own content."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), HASH_ANNOTATION: digest}
    return {**manifest, "metadata": meta}


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server canonicalises quantities ("1000m" -> "1", 1 -> "1").
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, str | int) and isinstance(have, str | int):
        try:
            return Decimal(parse_quantity(want)) == Decimal(parse_quantity(have))  # type: ignore[no-untyped-call]
        except ValueError:
            return False
    return False


def contains(want: Any, have: Any) -> bool:
    """Whether every field of `want` is in `have` with the same value (lists: same length)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and contains(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(contains(w, h) for w, h in zip(want, have, strict=True))
        )
    return _same_scalar(want, have)


def up_to_date(desired: Manifest, live: Mapping[str, Any] | None) -> bool:
    """Whether applying `desired` (as returned by `with_hash`) would change nothing we own."""
    if live is None:
        return False
    want_hash = desired["metadata"]["annotations"][HASH_ANNOTATION]
    have_hash = ((live.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return want_hash == have_hash and contains(desired, live)


def _stored(value: Any) -> Any:
    """`value` as the API server keeps it after a merge patch: null members are removed."""
    if isinstance(value, Mapping):
        return {k: _stored(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_stored(v) for v in value]
    return value


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level merge patch from `old` to `new` status (empty when equal).

    Nested nulls in `new` stay in the patch (they delete stale members) but do not count as a
    change against a stored status that simply lacks those members.
    """
    patch: dict[str, Any] = {k: v for k, v in new.items() if _stored(old.get(k)) != _stored(v)}
    patch.update({k: None for k in old if k not in new})
    return patch


class Applier:
    """Writes plans through one `kubernetes.client.ApiClient`."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.writes = 0
        """Requests that changed something (apply, scale, delete, status), for tests/logs."""

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, Any]] | None = None,
    ) -> Any:
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        data = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return json.loads(data) if data else None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, Any]] | None = None,
    ) -> Any:
        """One REST call in a worker thread; raises `ApiException` on HTTP errors."""
        return await asyncio.to_thread(self._call, method, path, body, content_type, query)

    async def apply(self, manifest: Manifest, live: Mapping[str, Any] | None) -> bool:
        """Server-side apply `manifest` unless the live object already matches; True if written."""
        desired = with_hash(manifest)
        if up_to_date(desired, live):
            return False
        meta = desired["metadata"]
        path = collection_path(desired["apiVersion"], desired["kind"], meta["namespace"])
        await self.request(
            "PATCH",
            f"{path}/{meta['name']}",
            desired,
            "application/apply-patch+yaml",
            [("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        self.writes += 1
        return True

    async def scale(
        self, namespace: str, name: str, replicas: int, live: Mapping[str, Any] | None
    ) -> bool:
        """Set a Deployment's replicas through its scale subresource, when different."""
        if live is not None and (live.get("spec") or {}).get("replicas") == replicas:
            return False
        path = collection_path("apps/v1", "Deployment", namespace)
        await self.request(
            "PATCH",
            f"{path}/{name}/scale",
            {"spec": {"replicas": replicas}},
            "application/merge-patch+json",
        )
        self.writes += 1
        return True

    async def delete(self, namespace: str, key: ChildKey) -> bool:
        """Delete a child (its pods follow through the garbage collector); gone is fine."""
        path = collection_path(key.api_version, key.kind, namespace)
        try:
            await self.request("DELETE", f"{path}/{key.name}", {"propagationPolicy": "Background"})
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        self.writes += 1
        return True

    async def patch_status(
        self,
        namespace: str,
        name: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource with what changed; the new object, or None.

        With `resource_version` the patch only applies to that version of the object (else
        409 Conflict): a status planned on what someone has since changed is never written.
        """
        patch = status_patch(old, new)
        if not patch:
            return None
        body: dict[str, Any] = {"status": patch}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = await self.request(
            "PATCH",
            MD_PATH.format(namespace=namespace, name=name) + "/status",
            body,
            "application/merge-patch+json",
        )
        self.writes += 1
        return result

    async def open_traffic(self, namespace: str, pod: str, now: str) -> bool:
        """Set a pod's ``roost.dev/traffic`` condition True (pods/status); gone is fine.

        A strategic merge patch merges ``conditions`` by type, so the kubelet's own conditions
        (Ready, ContainersReady) are left alone; the kubelet then turns Ready true.
        """
        condition = {
            "type": TRAFFIC_CONDITION,
            "status": "True",
            "reason": "TrafficAllowed",
            "message": "the rollout lets this revision take traffic",
            "lastTransitionTime": now,
        }
        try:
            await self.request(
                "PATCH",
                f"{collection_path('v1', 'Pod', namespace)}/{pod}/status",
                {"status": {"conditions": [condition]}},
                "application/strategic-merge-patch+json",
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        self.writes += 1
        return True

    async def execute(
        self,
        namespace: str,
        plan: Plan,
        observed: Mapping[ChildKey, Mapping[str, Any]],
    ) -> int:
        """Apply, scale and prune the plan's children; the number of writes."""
        before = self.writes
        for manifest in plan.apply:
            key = ChildKey(manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])
            await self.apply(manifest, observed.get(key))
        for name, replicas in plan.scale:
            await self.scale(
                namespace, name, replicas, observed.get(ChildKey("apps/v1", "Deployment", name))
            )
        for key in plan.delete:
            await self.delete(namespace, key)
        now = rfc3339_seconds(datetime.now(UTC))
        for pod in plan.traffic:
            await self.open_traffic(namespace, pod, now)
        return self.writes - before
