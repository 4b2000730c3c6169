"""Serving test fixtures: small real ONNX models and a real server on a loopback socket.

Models are built here with onnx.helper and scikit-learn (no binaries in the repository); the
server is the real app under the real uvicorn, on 127.0.0.1 with an ephemeral port, run on a
background thread so tests can read its injected metrics registry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import uvicorn
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry
from roost_devcluster.net import free_port
from roost_serving.app import DataPlane, create_app
from roost_serving.cli import server_config
from roost_serving.config import Settings

# V2 datatype -> ONNX element type, for the identity model covering every datatype.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_identity_model(path: Path) -> Path:
    """One input ``in_<DT>`` [-1, 2] per datatype, echoed to output ``out_<DT>``."""
    inputs, outputs, nodes = [], [], []
    for name, elem in ONNX_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["N", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["N", 2]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    return _save(helper.make_graph(nodes, "identity", inputs, outputs), path)


def build_fixed_batch_model(path: Path) -> Path:
    """X FP32 [1, 3] -> Y = 2 X: a fixed batch dimension, so no dynamic batching."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["Y"])],
        "fixed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
        initializer=[two],
    )
    return _save(graph, path)


def build_forest_model(path: Path) -> Path:
    """A 3-class random forest over 5 FP32 features (input X, outputs label, probabilities)."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    forest = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(x, y)
    onx = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="session")
def serving_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of the test models."""
    root = tmp_path_factory.mktemp("serving-models")
    return {
        "identity": build_identity_model(root / "identity.onnx"),
        "fixed": build_fixed_batch_model(root / "fixed.onnx"),
        "forest": build_forest_model(root / "forest.onnx"),
    }


class RunningServer:
    """A real roost app under uvicorn on 127.0.0.1, on a background thread."""

    def __init__(self, settings: Settings, wait_ready: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.app = create_app(settings, registry=self.registry)
        self.plane: DataPlane = self.app.state.plane
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        # The CLI's own configuration (guarded protocol, limits), on a socket of our own.
        config = server_config(self.app, settings, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (self.plane.ready if wait_ready else self.server.started):
            if self.plane.load_error is not None:
                raise RuntimeError(self.plane.load_error)
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not become ready")
            time.sleep(0.01)

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample value from the server's registry."""
        return self.registry.get_sample_value(name, labels)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def start_server() -> Iterator[type[RunningServer]]:
    """Start servers for a test (``start_server(settings)``); all are stopped afterwards."""
    started: list[RunningServer] = []

    class _Tracked(RunningServer):
        def __init__(self, settings: Settings, wait_ready: bool = True) -> None:
            started.append(self)
            super().__init__(settings, wait_ready)

    yield _Tracked
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def forest_server(serving_models: dict[str, Path]) -> Iterator[RunningServer]:
    """One forest-model server shared by a module's tests (e.g. many property examples)."""
    server = RunningServer(Settings(model=str(serving_models["forest"]), name="forest"))
    yield server
    server.stop()


class ServeProcess:
    """A real ``roost serve`` process on 127.0.0.1, configured through ROOST_* variables."""

    def __init__(
        self, env: dict[str, str], wait_ready: bool = True, port: int | None = None
    ) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roost_serving", "serve"],
            env={**os.environ, "ROOST_PORT": str(self.port), "ROOST_LOG_LEVEL": "warning", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"roost serve did not become ready: {self.proc.communicate(timeout=5)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def serve_process() -> Iterator[type[ServeProcess]]:
    """Start ``roost serve`` processes for a test; all are killed afterwards."""
    started: list[ServeProcess] = []

    class _Tracked(ServeProcess):
        def __init__(self, env: dict[str, str], wait_ready: bool = True) -> None:
            started.append(self)
            super().__init__(env, wait_ready)

    yield _Tracked
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def identity_process(serving_models: dict[str, Path]) -> Iterator[ServeProcess]:
    """One ``roost serve`` of the every-datatype identity model, shared by a module."""
    proc = ServeProcess(
        {
            "ROOST_MODEL": str(serving_models["identity"]),
            "ROOST_NAME": "id",
            "ROOST_MAX_BODY_BYTES": str(1 << 20),
            "ROOST_MAX_ELEMENTS": "65536",
        }
    )
    yield proc
    proc.stop()
