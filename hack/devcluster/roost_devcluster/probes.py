"""Container probes as the kubelet runs them: httpGet, tcpSocket and exec, with
``initialDelaySeconds``, ``periodSeconds``, ``timeoutSeconds``, ``successThreshold`` and
``failureThreshold`` (kubelet defaults 0, 10, 1, 1, 3).

``ProbeTracker`` is the per-probe state machine; it is driven by the caller's clock so the
pod runner decides when a probe is due and the logic is testable without sleeping.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

Obj = dict[str, Any]


@dataclass(frozen=True)
class Probe:
    """One probe of a container spec."""

    handler: Obj
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, spec: Obj | None) -> Probe | None:
        """Parse ``readinessProbe`` / ``livenessProbe`` / ``startupProbe``; None when absent."""
        if not spec:
            return None
        return cls(
            handler={
                k: v for k, v in spec.items() if k in ("httpGet", "tcpSocket", "exec", "grpc")
            },
            initial_delay=float(spec.get("initialDelaySeconds", 0)),
            period=float(spec.get("periodSeconds", 10)),
            timeout=float(spec.get("timeoutSeconds", 1)),
            success_threshold=int(spec.get("successThreshold", 1)),
            failure_threshold=int(spec.get("failureThreshold", 3)),
        )


def _port(value: int | str, ports: Mapping[str, int]) -> int:
    if isinstance(value, int) or value.isdigit():
        return int(value)
    return ports[value]  # a named container port


def run_probe(
    probe: Probe,
    host: str,
    ports: Mapping[str, int],
    env: Mapping[str, str],
    cwd: str | None = None,
) -> tuple[bool, str]:
    """Run the probe once; (success, reason for a failure)."""
    handler = probe.handler
    try:
        if "httpGet" in handler:
            get = handler["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            target = get.get("host") or host
            url = f"{scheme}://{target}:{_port(get['port'], ports)}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            # The kubelet does not verify probe certificates either.
            resp = httpx.get(url, headers=headers, timeout=probe.timeout, verify=False)
            ok = 200 <= resp.status_code < 400
            return ok, "" if ok else f"HTTP probe failed with statuscode: {resp.status_code}"
        if "tcpSocket" in handler:
            tcp = handler["tcpSocket"]
            target = tcp.get("host") or host
            with socket.create_connection((target, _port(tcp["port"], ports)), probe.timeout):
                return True, ""
        if "exec" in handler:
            done = subprocess.run(
                handler["exec"]["command"],
                env=dict(env),
                cwd=cwd,
                capture_output=True,
                timeout=probe.timeout,
                check=False,
            )
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            return done.returncode == 0, output[-200:]
        return False, f"unsupported probe handler {sorted(handler)}"
    except (httpx.HTTPError, OSError, KeyError, subprocess.TimeoutExpired) as exc:
        return False, f"probe error: {exc}"


@dataclass
class ProbeTracker:
    """Consecutive-result counting for one probe of one container run."""

    probe: Probe
    started_at: float
    result: bool  # kubelet: readiness/startup start as failure, liveness as success
    next_due: float = field(init=False)
    successes: int = 0
    failures: int = 0
    last_message: str = ""

    def __post_init__(self) -> None:
        self.next_due = self.started_at + self.probe.initial_delay

    def due(self, now: float) -> bool:
        """True when the probe should run at ``now``."""
        return now >= self.next_due

    def record(self, ok: bool, message: str, now: float) -> bool:
        """Count one outcome; returns True when the tracked result changed."""
        self.next_due = now + self.probe.period
        self.last_message = message
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            flip = not self.result and self.successes >= self.probe.success_threshold
        else:
            self.successes, self.failures = 0, self.failures + 1
            flip = self.result and self.failures >= self.probe.failure_threshold
        if flip:
            self.result = not self.result
        return flip
