"""KServe's own clients (InferenceRESTClient V2, InferenceGRPCClient) against roost, unmodified.

kserve pins pandas below 3 and roost's dev extra pins pandas 3, so the clients run in a
virtualenv of their own: created by the ``kserve_python`` fixture on first use (CI creates it
the same way), cached under ``~/.cache/roost/venvs/`` by a hash of its requirements so later
runs reuse it, and never inside the work tree. The clients run in a subprocess
(kserve_clients.py) that prints what each call returned.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from roost_serving.config import Settings

RunningServer = Any  # start_server and serving_models come from this directory's conftest.py
REQUIREMENTS = ["kserve==0.21.0"]
SCRIPT = Path(__file__).with_name("kserve_clients.py")
ROWS = np.arange(15, dtype=np.float32).reshape(3, 5) / 10.0  # the rows kserve_clients.py sends


def _venv_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "roost" / "venvs"


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The python of a virtualenv with :data:`REQUIREMENTS`, created once and cached."""
    key = hashlib.sha256("\n".join([sys.version, *REQUIREMENTS]).encode()).hexdigest()[:16]
    venv = _venv_root() / f"kserve-{key}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent test sessions (CI, several worktrees) wait for one another's install.
    with open(venv.parent / f"kserve-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
                check=True,
                timeout=540,
            )
            done.write_text("\n".join(REQUIREMENTS) + "\n")
    return python


def _run_clients(python: Path, server: RunningServer, state: str) -> dict[str, Any]:
    address = f"127.0.0.1:{server.plane.grpc_port}"
    result = subprocess.run(
        [str(python), str(SCRIPT), server.url, address, state],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def test_kserve_clients_live_ready_model_ready_and_infer_json_binary_grpc(
    kserve_python: Path, start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    model = serving_models["forest"]
    server = start_server(Settings(model=str(model), name="forest", grpc_port=0))
    out = _run_clients(kserve_python, server, "ready")
    assert (out["live"], out["ready"], out["model_ready"]) == (True, True, True)
    label, proba = ort.InferenceSession(str(model)).run(None, {"X": ROWS})
    for key in ("infer_binary_false", "infer_binary_true"):
        assert out[key]["id"] == "kserve-1"
        assert out[key]["outputs"]["label"] == label.tolist()
        np.testing.assert_allclose(out[key]["outputs"]["probabilities"], proba, rtol=1e-6)
    assert (out["grpc_ready"], out["grpc_model_ready"]) == (True, True)
    assert out["grpc_infer"]["label"] == label.tolist()
    grpc_count = server.metric(
        "roost_requests_total",
        model="forest",
        revision="",
        protocol="grpc",
        source="client",
        code="200",
    )
    assert grpc_count == 1.0


def test_kserve_rest_client_reports_not_ready_as_against_kserve(
    kserve_python: Path, start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = start_server(Settings(model=str(serving_models["forest"]), name="forest"))
    server.plane.begin_shutdown()  # draining: live, not ready
    assert httpx.get(server.url + "/v2/health/ready").status_code == 503
    out = _run_clients(kserve_python, server, "not-ready")
    # KServe's client raises on a non-2xx readiness answer (KServe's server answers 503 too)
    # and reads model readiness from the status code alone.
    assert out == {"live": True, "ready": {"http_error": 503}, "model_ready": False}
