"""Polling helpers for tests: wait until a condition holds, with a bounded timeout.

``wait_for(fn, timeout, what)`` calls ``fn`` until it returns something truthy and returns it;
on timeout it raises ``WaitTimeoutError`` naming ``what`` and the last value or error seen, so a
failing test says what it was waiting for. The predicates below read raw pod/object JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from roost_devcluster.kubeapi import ApiError, KubeApi, api_path

T = TypeVar("T")
Obj = dict[str, Any]


class WaitTimeoutError(AssertionError):
    """The awaited condition did not hold in time."""


def wait_for(
    fn: Callable[[], T | None],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.25,
) -> T:
    """Poll ``fn`` until it returns a truthy value; ApiError counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except ApiError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


def find_condition(obj: Obj, kind: str) -> Obj:
    """The status condition `kind` of an object as read from the API, or {}."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def condition(obj: Obj, kind: str) -> str | None:
    """Status ("True"/"False"/"Unknown") of a status condition, None when absent."""
    found = find_condition(obj, kind).get("status")
    return None if found is None else str(found)


def pod_ready(pod: Obj) -> bool:
    """The pod's Ready condition is True."""
    return condition(pod, "Ready") == "True"


def container_status(pod: Obj, name: str | None = None) -> Obj:
    """A container's status entry (the first container when name is None); {} when absent."""
    for entry in pod.get("status", {}).get("containerStatuses") or []:
        if name is None or entry.get("name") == name:
            return dict(entry)
    return {}


def list_pods(api: KubeApi, namespace: str, selector: str = "") -> list[Obj]:
    """Pods of a namespace, optionally filtered by a label selector."""
    params = {"labelSelector": selector} if selector else {}
    return list(api.get(api_path("v1", "pods", namespace), **params)["items"])


def wait_pods_ready(
    api: KubeApi, namespace: str, selector: str, count: int, timeout: float = 90.0
) -> list[Obj]:
    """Wait until exactly ``count`` pods match and all are Ready; returns them."""

    def ready() -> list[Obj] | None:
        pods = [
            p
            for p in list_pods(api, namespace, selector)
            if not p["metadata"].get("deletionTimestamp")
        ]
        return pods if len(pods) == count and all(pod_ready(p) for p in pods) else None

    return wait_for(ready, timeout, f"{count} Ready pods matching {selector!r} in {namespace}")


def wait_gone(api: KubeApi, path: str, timeout: float = 60.0) -> None:
    """Wait until GET on an object path answers 404."""

    wait_for(lambda: api.find(path) is None, timeout, f"{path} to be deleted")
