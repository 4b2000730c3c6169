"""Detached processes and the state file that remembers them.

Every process the dev cluster starts runs in its own session (``setsid``), so ``down`` can
signal its whole process group, and is recorded as (pid, start time): a pid is only signalled
while ``/proc/<pid>/stat`` still shows the same start time, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of pid, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait() is left
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Proc:
    """A process started by the dev cluster."""

    name: str
    pid: int
    started: int

    def alive(self) -> bool:
        """True while the recorded process (not a recycled pid) still runs."""
        return start_time(self.pid) == self.started

    def to_json(self) -> dict[str, object]:
        """The record written to the state file."""
        return asdict(self)


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start argv detached in a new session, stdout and stderr appended to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    started = start_time(child.pid)
    return Proc(name=name, pid=child.pid, started=started if started is not None else -1)


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    if not proc.alive():
        return
    # The process leads its own session, so its pgid is its pid; fall back to the pid alone
    # if it has left the group.
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def stop(procs: Sequence[Proc], grace: float = 10.0) -> None:
    """SIGTERM the process groups, then SIGKILL whatever still runs after grace seconds."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        _reap(procs)
        time.sleep(0.1)
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)
    for _ in range(50):
        _reap(procs)
        if not any(p.alive() for p in procs):
            return
        time.sleep(0.1)


def _reap(procs: Sequence[Proc]) -> None:
    # Children spawned by this very process stay zombies until waited for. Only the recorded
    # pids are waited for: waitpid(-1) would steal other Popen objects' exit statuses.
    for proc in procs:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, os.WNOHANG)


@dataclass
class ClusterState:
    """Ports and processes of one running dev cluster (``<state dir>/state.json``)."""

    ports: dict[str, int] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    kwok_ready_all: bool = False

    def save(self, path: Path) -> None:
        """Write atomically, so a concurrent reader never sees half a file."""
        tmp = path.with_suffix(".tmp")
        payload = {
            "ports": self.ports,
            "procs": [p.to_json() for p in self.procs],
            "kwok_ready_all": self.kwok_ready_all,
        }
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterState | None:
        """The recorded state, or None when there is none."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(
            ports={str(k): int(v) for k, v in raw.get("ports", {}).items()},
            procs=[Proc(str(p["name"]), int(p["pid"]), int(p["started"])) for p in raw["procs"]],
            kwok_ready_all=bool(raw.get("kwok_ready_all", False)),
        )


def read_pid_files(directory: Path) -> list[Proc]:
    """Processes recorded as ``*.pid`` files (``<pid> <start time>``) by the pod runner."""
    procs = []
    for pid_file in sorted(directory.glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid, started = pid_file.read_text().split()
            procs.append(Proc(pid_file.stem, int(pid), int(started)))
    return procs
