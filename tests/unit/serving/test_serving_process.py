"""`roost serve` as a real process: environment configuration, fatal load errors, SIGTERM."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from roost_devcluster.net import free_port

ROW = b'{"inputs":[{"name":"X","datatype":"FP32","shape":[1,5],"data":[0.5,-1,0.25,2,0]}]}'


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roost_serving", "serve", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server did not become ready: {proc.communicate(timeout=5)}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _fails_with(proc: subprocess.Popen[str], fragment: str) -> None:
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("roost: error: "), stderr
    assert fragment in last


def test_missing_model_exits_1_with_the_reason(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc = _start({}, "--model", str(tmp_path / "nope.onnx"), "--port", str(free_port()))
    processes.append(proc)
    _fails_with(proc, "no such file")


def test_sha256_mismatch_refuses_to_start(
    serving_models: dict[str, Path], processes: list[subprocess.Popen[str]]
) -> None:
    env = {"ROOST_MODEL": str(serving_models["forest"]), "ROOST_SHA256": "0" * 64}
    proc = _start(env, "--port", str(free_port()))
    processes.append(proc)
    _fails_with(proc, "was pinned")


def test_a_pickle_is_never_loaded(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    marker = tmp_path / "pwned"
    # A pickle that would create a file if it were ever unpickled.
    payload = pickle.dumps(_Exploit(str(marker)))
    (tmp_path / "model.onnx").write_bytes(payload)
    proc = _start({}, "--model", str(tmp_path / "model.onnx"), "--port", str(free_port()))
    processes.append(proc)
    _fails_with(proc, "is not a loadable ONNX model")
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_bad_option_exits_2(processes: list[subprocess.Popen[str]]) -> None:
    proc = _start({"ROOST_MODEL": "m.onnx", "ROOST_MAX_BATCH_SIZE": "lots"})
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "ROOST_MAX_BATCH_SIZE='lots' is not a valid value" in stderr


def test_sigterm_drains_finishes_in_flight_and_exits_0(
    serving_models: dict[str, Path], processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "ROOST_MODEL": f"file://{serving_models['forest']}",
        "ROOST_NAME": "forest",
        "ROOST_PORT": str(port),
        "ROOST_DRAIN_SECONDS": "1.5",
    }
    proc = _start(env)
    processes.append(proc)
    _wait_ready(url, proc)
    # An in-flight request: headers and half the body sent before SIGTERM, the rest after.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        head = (
            f"POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(ROW)}\r\n\r\n"
        ).encode()
        conn.sendall(head + ROW[:20])
        time.sleep(0.2)  # let the server parse the headers (synchronisation, not an assertion)
        proc.send_signal(signal.SIGTERM)
        ready = None
        for _ in range(100):
            ready = httpx.get(url + "/v2/health/ready", timeout=5)
            if ready.status_code == 503:
                break
            time.sleep(0.01)
        assert ready is not None
        assert ready.status_code == 503
        # Still serving during the drain period: a load balancer may not have noticed yet.
        assert httpx.post(url + "/v2/models/forest/infer", content=ROW).status_code == 200
        conn.sendall(ROW[20:])
        response = b""
        while b'"outputs"' not in response:
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr


def test_drain_under_load_fails_no_in_flight_request_and_fits_the_grace_period(
    serving_models: dict[str, Path], processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "ROOST_MODEL": str(serving_models["forest"]),
        "ROOST_NAME": "forest",
        "ROOST_PORT": str(port),
        "ROOST_DRAIN_SECONDS": "1",
        "ROOST_GRACE_SECONDS": "6",
    }
    proc = _start(env)
    processes.append(proc)
    _wait_ready(url, proc)
    statuses: Counter[int] = Counter()
    failed: list[str] = []
    closes = Counter[str]()
    lock = threading.Lock()

    noticed = threading.Event()

    def client() -> None:
        # Keep-alive clients, as gateways and SDKs are. They keep sending through SIGTERM
        # until the endpoint is gone ("noticed", half-way through the drain, as a load
        # balancer that watches readiness would); a request sent is never left unanswered.
        with httpx.Client(timeout=10) as session:
            while not noticed.is_set():
                try:
                    response = session.post(url + "/v2/models/forest/infer", content=ROW)
                except httpx.TransportError as exc:
                    with lock:
                        failed.append(repr(exc))
                    return
                with lock:
                    statuses[response.status_code] += 1
                    closes[response.headers.get("connection", "keep-alive")] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    noticed.set()
    _, stderr = proc.communicate(timeout=30)
    exited = time.monotonic() - signalled
    for thread in threads:
        thread.join(timeout=30)
    print(
        f"drain under load: {dict(statuses)}, {dict(closes)}, failed {len(failed)}, {exited:.2f} s"
    )
    assert proc.returncode == 0, stderr
    assert failed == [], failed
    assert set(statuses) == {200}, statuses
    assert closes["close"] >= 1  # responses during the drain told clients to reconnect
    assert exited < 6, exited  # inside the grace period the pod was given


def test_grpc_port_in_use_exits_1_with_the_reason(
    serving_models: dict[str, Path], processes: list[subprocess.Popen[str]]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        model = str(serving_models["forest"])
        proc = _start(
            {}, "--model", model, "--port", str(free_port()), "--grpc-port", str(grpc_port)
        )
        processes.append(proc)
        _fails_with(proc, f"cannot listen for gRPC on 127.0.0.1:{grpc_port}")


def test_sigterm_turns_grpc_readiness_false_serves_the_drain_and_exits_0(
    serving_models: dict[str, Path], processes: list[subprocess.Popen[str]]
) -> None:
    import numpy as np
    import tritonclient.grpc as triton

    port, grpc_port = free_port(), free_port()
    env = {
        "ROOST_MODEL": str(serving_models["forest"]),
        "ROOST_NAME": "forest",
        "ROOST_PORT": str(port),
        "ROOST_GRPC_PORT": str(grpc_port),
        "ROOST_DRAIN_SECONDS": "1.5",
    }
    proc = _start(env)
    processes.append(proc)
    _wait_ready(f"http://127.0.0.1:{port}", proc)
    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert client.is_server_ready()
    proc.send_signal(signal.SIGTERM)
    for _ in range(100):
        if not client.is_server_ready():
            break
        time.sleep(0.01)
    assert not client.is_server_ready()
    tensor = triton.InferInput("X", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    assert client.infer("forest", [tensor]).as_numpy("label").shape == (1,)
    client.close()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr


def test_serve_collects_cyclic_garbage_less_often() -> None:
    """`roost serve` raises the GC thresholds (full collections over the prediction table
    were the p99 stalls at concurrency 32); the values are cli.GC_THRESHOLDS."""
    import gc

    from roost_serving import cli

    before = gc.get_threshold()
    try:
        cli.tune_gc()
        assert gc.get_threshold() == cli.GC_THRESHOLDS
        assert cli.GC_THRESHOLDS[0] > 700 * 10  # well above Python's default young threshold
    finally:
        gc.set_threshold(*before)
