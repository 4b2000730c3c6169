"""A container as a real local process: exit codes, termination message, back-off, restarts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from roost_devcluster.container import BACKOFF_BASE, ContainerProcess, Launch


def _container(tmp_path: Path, script: str, policy: str = "Always") -> ContainerProcess:
    sh = shutil.which("sh")
    assert sh
    launch = Launch(
        argv=[sh, "-c", script],
        env={"PATH": "/usr/bin:/bin", "WHO": "roost"},
        cwd=str(tmp_path),
        host="127.0.0.1",
        ports={},
        log=tmp_path / "c.log",
        pid_file=tmp_path / "c.pid",
        restart_policy=policy,
    )
    return ContainerProcess({"name": "c", "image": "local"}, launch)


def _until_exited(container: ContainerProcess) -> float:
    """Tick until the current run has been seen to exit (bounded by the process itself)."""
    assert container.proc is not None
    container.proc.wait(timeout=30)
    now = time.monotonic()
    assert container.tick(now, grace=1)
    return now


def test_crash_is_reported_and_restarted_after_backoff(tmp_path: Path) -> None:
    container = _container(tmp_path, 'echo "hello $WHO"; echo "roost: error: boom" >&2; exit 3')
    assert container.tick(time.monotonic(), grace=1)  # first start, no back-off
    assert (tmp_path / "c.pid").exists()
    first_exit = _until_exited(container)

    # Like the kubelet, the first failure restarts at once (no CrashLoopBackOff yet).
    status = container.status()
    assert status["restartCount"] == 0
    assert status["ready"] is False
    assert status["state"]["waiting"]["reason"] != "CrashLoopBackOff"
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "hello roost\nroost: error: boom"
    assert not (tmp_path / "c.pid").exists()
    assert container.restart_at == first_exit
    assert container.tick(first_exit, grace=1)
    assert container.restart_count == 1

    # Crashing again: back-off, reported as CrashLoopBackOff, doubled on every further crash.
    exited_at = _until_exited(container)
    assert container.status()["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert not container.tick(exited_at + BACKOFF_BASE / 2, grace=1)  # still backing off
    assert container.tick(exited_at + BACKOFF_BASE, grace=1)
    assert container.restart_count == 2
    third_exit = _until_exited(container)
    assert container.backoff == 2 * BACKOFF_BASE  # consecutive crash: doubled
    assert container.restart_at == third_exit + 2 * BACKOFF_BASE
    # The message covers the latest run only.
    assert container.status()["lastState"]["terminated"]["message"].count("boom") == 1


def test_signal_deaths_report_128_plus_signal(tmp_path: Path) -> None:
    container = _container(tmp_path, "exec sleep 60")
    container.tick(time.monotonic(), grace=1)
    assert container.running()
    container.kill(grace=5)  # SIGTERM
    container.tick(time.monotonic(), grace=1)
    assert container.status()["lastState"]["terminated"]["exitCode"] == 143


def test_restart_policy_never_keeps_the_terminated_state(tmp_path: Path) -> None:
    container = _container(tmp_path, "exit 0", policy="Never")
    container.tick(time.monotonic(), grace=1)
    _until_exited(container)
    status = container.status()
    assert container.done
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert status["lastState"] == {}
    assert not container.tick(time.monotonic() + 100, grace=1)


def test_ready_without_probe_once_running(tmp_path: Path) -> None:
    container = _container(tmp_path, "exec sleep 60")
    container.tick(time.monotonic(), grace=1)
    try:
        assert container.status()["ready"] is True
        assert container.status()["started"] is True
    finally:
        container.stop(grace=1)
    assert container.status()["ready"] is False
