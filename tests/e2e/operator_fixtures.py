"""`roost-operator` as a real subprocess against the test cluster (import the fixture).

``operator_process(namespace)`` starts the operator watching one namespace, with its metrics and
health endpoints on free loopback ports, and stops it (SIGTERM) at the end of the test.
``OperatorProcess(..., args=[...], supervise=True)`` passes extra flags (leader election) and
restarts the process whenever it exits on its own, as the kubelet restarts a container: a
leader that lost its Lease exits, and comes back as a follower.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families
from roost_devcluster.net import free_port

BIN = Path(sys.executable).parent


@dataclass
class OperatorProcess:
    """One running operator and how to reach it."""

    namespace: str
    kubeconfig: Path
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    supervise: bool = False
    exits: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, exit status) of every exit the supervisor restarted."""
    _stopping: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None

    def start(self) -> None:
        """Start the operator and wait (bounded) until its liveness endpoint answers."""
        self._stopping.clear()
        self._spawn()
        self._wait_live()
        if self.supervise and (self._supervisor is None or not self._supervisor.is_alive()):
            self._supervisor = threading.Thread(target=self._watch, daemon=True)
            self._supervisor.start()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                self.exits.append((time.monotonic(), int(proc.returncode)))
                time.sleep(
                    1.0
                )  # the kubelet's first back-off is longer; one second keeps tests short
                if not self._stopping.is_set():
                    self._spawn()
            time.sleep(0.1)

    def _spawn(self) -> None:
        # The test Prometheus scrapes every 2 s: intervals of 6 s hold enough scrapes, and six
        # of them (the sequential tests' floor) fit the scenarios' time bounds.
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "ROOST_OPERATOR_PROMETHEUS_MIN_WINDOW": "6",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "roost-operator"),
                    "--namespace",
                    self.namespace,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--health-port",
                    str(self.health_port),
                    "--bind-address",
                    "127.0.0.1",
                    "--verbose",
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_live(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"roost-operator exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"roost-operator never became live:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s (the supervisor restarts nothing from here on)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release; the supervisor, if any, starts it again."""
        assert self.proc is not None
        self.proc.kill()

    def restart(self) -> None:
        """Stop and start again (fresh process, fresh in-memory state)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of `name` matching `labels` on the operator's /metrics."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += s.value
        return total


@pytest.fixture
def operator_process(
    kubeconfig: Path, tmp_path: Path
) -> Iterator[Callable[[str], OperatorProcess]]:
    """Factory: ``operator_process(namespace)`` -> a started operator watching `namespace`."""
    started: list[OperatorProcess] = []

    def start(namespace: str) -> OperatorProcess:
        op = OperatorProcess(namespace, kubeconfig, tmp_path / f"operator-{namespace}.log")
        started.append(op)
        op.start()
        return op

    yield start
    for op in started:
        op.stop()


@contextmanager
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """The official Kubernetes client for `kubeconfig`, closed afterwards."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]
