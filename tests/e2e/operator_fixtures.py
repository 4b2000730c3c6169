"""`roost-operator` as a real subprocess against the test cluster (import the fixture).

``operator_process(namespace)`` starts the operator watching one namespace, with its metrics and
health endpoints on free loopback ports, and stops it (SIGTERM) at the end of the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    """One running operator and how to reach it."""

    namespace: str
    kubeconfig: Path
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the operator and wait (bounded) until its liveness endpoint answers."""
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
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
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
        """SIGTERM, then SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

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
