"""Serving pods as the planner sees them: ready or not, why they fail, where to scrape them.

Pure: pods come in as the dicts the API returns (kopf's index keeps only what is read here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roost_operator.api import LABEL_REVISION, TRAFFIC_CONDITION

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


@dataclass(frozen=True)
class PodTarget:
    """A ready serving pod to scrape: its uid tells a replaced pod from the one before it."""

    name: str
    uid: str
    ip: str
    port: int = 8080

    @property
    def url(self) -> str:
        """`http://<podIP>:<port>`."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """`http://<podIP>:<port>/metrics`."""
        return f"{self.url}/metrics"


@dataclass(frozen=True)
class RevisionPods:
    """The pods of one revision, summarised."""

    total: int = 0
    ready: int = 0
    """Pods whose containers are ready (``ContainersReady``): they could serve. Whether they
    take traffic is the ``roost.dev/traffic`` gate's business (`gated`)."""
    ready_pods: tuple[PodTarget, ...] = ()
    failure: str | None = None
    gated: tuple[str, ...] = ()
    """Pods with ready containers whose ``roost.dev/traffic`` readiness gate is not True yet:
    the operator opens it once the revision may take traffic."""


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
        restarts = int(cs.get("restartCount", 0))
        # One kill of a running container (OOM, a node agent, a chaos test) is not a failing
        # revision: the container restarted and serves again. Crashing again is.
        running_again = "running" in (cs.get("state") or {}) and restarts < 2
        if terminated and terminated.get("exitCode", 0) != 0 and restarts and not running_again:
            why = str(terminated.get("reason") or "Error")
            return f"{why}: {detail}" if detail else why
    return None


def _condition(pod: Mapping[str, Any], kind: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    """Containers ready: Ready itself waits for the traffic gate, which waits for this."""
    containers = _condition(pod, "ContainersReady")
    if containers is not None:
        return containers == "True"
    return _condition(pod, "Ready") == "True"


def _gate_closed(pod: Mapping[str, Any]) -> bool:
    """The pod has the ``roost.dev/traffic`` readiness gate and it is not True."""
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    if not any(g.get("conditionType") == TRAFFIC_CONDITION for g in gates):
        return False  # a pod from before the gate: Ready alone decides, as it always did
    return _condition(pod, TRAFFIC_CONDITION) != "True"


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
            PodTarget(
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
        gated = tuple(str(p["metadata"]["name"]) for p in ready if _gate_closed(p))
        out[rev] = RevisionPods(len(members), len(ready), refs, failure, gated)
    return out


def _container_port(pod: Mapping[str, Any], default: int) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == "http" and p.get("containerPort"):
                return int(p["containerPort"])
    return default
