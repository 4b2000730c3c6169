"""Serving pods as the planner sees them: ready or not, why they fail, where to scrape them.

Pure: pods come in as the dicts the API returns (kopf's index keeps only what is read here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roost_operator.api import LABEL_REVISION

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
    ready_pods: tuple[PodTarget, ...] = ()
    failure: str | None = None


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
        out[rev] = RevisionPods(len(members), len(ready), refs, failure)
    return out


def _container_port(pod: Mapping[str, Any], default: int) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == "http" and p.get("containerPort"):
                return int(p["containerPort"])
    return default
