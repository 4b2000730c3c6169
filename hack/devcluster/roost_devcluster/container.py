"""One container of a runner pod as a local process: start, probe, restart with back-off,
terminate, and the ``containerStatuses`` entry a kubelet would report for it.

Restart back-off: the kubelet waits 10 s, doubling to 5 min. Tests cannot wait that long, so
here it starts at ``BACKOFF_BASE`` (1 s), doubles per consecutive crash up to ``BACKOFF_CAP``
(16 s) and resets once a run has lasted ``BACKOFF_RESET`` (30 s).
The termination ``message`` is the tail of the container log (stdout and stderr interleaved,
as ``terminationMessagePolicy: FallbackToLogsOnError`` reads it): at most 80 lines / 2 KiB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roost_devcluster import procs
from roost_devcluster.probes import Probe, ProbeTracker, run_probe

Obj = dict[str, Any]
BACKOFF_BASE = 1.0
BACKOFF_CAP = 16.0
BACKOFF_RESET = 30.0
_MESSAGE_LINES = 80
_MESSAGE_BYTES = 2048


def rfc3339(at: float | None = None) -> str:
    """Kubernetes timestamp (seconds precision, UTC)."""
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


@dataclass(frozen=True)
class Launch:
    """Everything needed to start the process (computed once per pod by the pod runner)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    host: str
    ports: dict[str, int]
    log: Path
    pid_file: Path
    restart_policy: str = "Always"


class ContainerProcess:
    """State machine of one container; driven by ``tick`` from its pod's worker thread."""

    def __init__(self, spec: Obj, launch: Launch, restart_count: int = 0) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.launch = launch
        self.restart_count = restart_count
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_wall = 0.0  # wall clock, for timestamps
        self.started_mono = 0.0  # monotonic, for probes and back-off
        self.log_offset = 0
        self.last_terminated: Obj | None = None
        self.waiting: tuple[str, str] = ("ContainerCreating", "")
        self.backoff = 0.0
        self.crashes = 0  # failures in a row (a run of BACKOFF_RESET seconds resets it)
        self.restart_at: float | None = 0.0  # start at once
        self.done = False  # exited and will not be restarted (restartPolicy)
        self.readiness: ProbeTracker | None = None
        self.liveness: ProbeTracker | None = None
        self.startup: ProbeTracker | None = None
        self.started = False

    # -- process lifecycle -------------------------------------------------------------
    def running(self) -> bool:
        """True while the process of the current run has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def _start(self, now: float) -> None:
        launch = self.launch
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        with launch.log.open("ab") as out:
            out.write(f"--- {rfc3339()} starting {launch.argv}\n".encode())
            out.flush()
            self.log_offset = out.tell()  # the termination message covers this run only
            self.proc = subprocess.Popen(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach its children
            )
        started = procs.start_time(self.proc.pid)
        launch.pid_file.write_text(f"{self.proc.pid} {started}\n")
        self.started_wall, self.started_mono = time.time(), now
        self.restart_at = None
        self.waiting = ("", "")

        def tracker(key: str, initial: bool) -> ProbeTracker | None:
            probe = Probe.from_spec(self.spec.get(key))
            return ProbeTracker(probe, now, initial) if probe else None

        self.readiness = tracker("readinessProbe", False)
        self.liveness = tracker("livenessProbe", True)
        self.startup = tracker("startupProbe", False)
        self.started = self.startup is None

    def _message(self) -> str:
        try:
            with self.launch.log.open("rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-_MESSAGE_LINES:])
        return tail[-_MESSAGE_BYTES:]

    def _exited(self, code: int, now: float) -> None:
        exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128 + N
        self.last_terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": self._message(),
            "startedAt": rfc3339(self.started_wall),
            "finishedAt": rfc3339(),
            "containerID": f"roost://{self.proc.pid if self.proc else 0}",
        }
        self.proc = None
        self.started = False
        with contextlib.suppress(OSError):
            self.launch.pid_file.unlink()
        policy = self.launch.restart_policy
        if policy == "Never" or (policy == "OnFailure" and exit_code == 0):
            self.done = True
            return
        ran = now - self.started_mono
        if ran >= BACKOFF_RESET:
            self.crashes = 0
        self.crashes += 1
        if self.crashes == 1:
            # As the kubelet does: a first failure (or one after a long healthy run) restarts at
            # once; CrashLoopBackOff only starts with the next one.
            self.backoff = 0.0
            self.restart_at = now
            self.waiting = ("", "")
            return
        self.backoff = BACKOFF_BASE if self.crashes == 2 else min(self.backoff * 2, BACKOFF_CAP)
        self.restart_at = now + self.backoff
        self.waiting = (
            "CrashLoopBackOff",
            f"back-off {self.backoff:.0f}s restarting failed container={self.name}",
        )

    def signal(self, sig: signal.Signals) -> None:
        """Signal the process group of the current run."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after grace seconds; returns once the process has exited."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, grace: float) -> None:
        """Final stop (pod deleted or runner shutting down): no restart afterwards."""
        self.kill(grace)
        if self.proc is not None and self.proc.returncode is not None:
            self._exited(self.proc.returncode, time.monotonic())
        self.done = True
        self.restart_at = None

    # -- the kubelet loop --------------------------------------------------------------
    def tick(self, now: float, grace: float) -> bool:
        """Advance the state machine; returns True when the reported status may change."""
        if self.done:
            return False
        if self.proc is None:
            if self.restart_at is not None and now >= self.restart_at:
                if self.last_terminated is not None:
                    self.restart_count += 1
                self._start(now)
                return True
            return False
        code = self.proc.poll()
        if code is not None:
            self._exited(code, now)
            return True
        return self._probe(now, grace)

    def _probe(self, now: float, grace: float) -> bool:
        changed = False
        launch = self.launch

        def run(tracker: ProbeTracker) -> bool:
            ok, message = run_probe(
                tracker.probe, launch.host, launch.ports, launch.env, launch.cwd
            )
            return tracker.record(ok, message, time.monotonic())

        if self.startup is not None and not self.started:
            if self.startup.due(now):
                changed = run(self.startup)
                if self.startup.result:
                    self.started = True
                elif self.startup.failures >= self.startup.probe.failure_threshold:
                    self.kill(grace)  # the kubelet restarts a container that never started
            return changed or self.startup.result
        if self.liveness is not None and self.liveness.due(now) and run(self.liveness):
            if not self.liveness.result:
                self.kill(grace)
            return True
        if self.readiness is not None and self.readiness.due(now):
            changed = run(self.readiness)
        return changed

    # -- reporting ---------------------------------------------------------------------
    def ready(self) -> bool:
        """Container readiness: running, started, and its readiness probe passing."""
        if not self.running() or not self.started:
            return False
        return self.readiness is None or self.readiness.result

    def status(self, config_error: str = "") -> Obj:
        """The ``containerStatuses`` entry."""
        entry: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready(),
            "started": self.running() and self.started,
            "restartCount": self.restart_count,
        }
        if config_error:
            entry["state"] = {
                "waiting": {"reason": "CreateContainerConfigError", "message": config_error}
            }
        elif self.running() and self.proc is not None:
            entry["state"] = {"running": {"startedAt": rfc3339(self.started_wall)}}
            entry["containerID"] = f"roost://{self.proc.pid}"
        elif self.done and self.last_terminated is not None:
            entry["state"] = {"terminated": self.last_terminated}
        else:
            reason, message = self.waiting
            waiting = {"reason": reason or "ContainerCreating"}
            if message:
                waiting["message"] = message
            entry["state"] = {"waiting": waiting}
        if self.last_terminated is not None and not (
            self.done and entry["state"].get("terminated") is self.last_terminated
        ):
            entry["lastState"] = {"terminated": self.last_terminated}
        else:
            entry["lastState"] = {}
        return entry
