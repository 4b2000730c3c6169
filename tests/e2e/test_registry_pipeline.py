"""The model pipeline example (examples/ci/pipeline.sh) end to end against a real MLflow server.

No cluster: train -> export -> profile -> validate -> register -> alias, twice (the second run
validates against the first), then a bad candidate that validation refuses, leaving the alias
where it was. Checks the registry through its REST API, as the operator reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import MlflowServer

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _get(server: MlflowServer, endpoint: str, **params: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/{endpoint}?{query}", timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def _pipeline(server: MlflowServer, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "ROOST": str(BIN / "roost"),
        "PYTHON": sys.executable,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", str(REPO / "examples/ci/pipeline.sh"), str(work), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pipeline_registers_validates_and_moves_the_alias(tmp_path: Path) -> None:
    with MlflowServer(tmp_path / "mlflow") as server:
        first = _pipeline(server, tmp_path / "run1", "--kind", "forest")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "first release of wine" in first.stdout
        second = _pipeline(server, tmp_path / "run2", "--kind", "extra", "--seed", "8")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "roost: validate: OK" in second.stdout, second.stdout
        assert "label agreement" in second.stdout
        champion = _get(server, "registered-models/alias", name="wine", alias="champion")
        version = champion["model_version"]
        assert version["version"] == "2"
        tags = {t["key"]: t["value"] for t in version["tags"]}
        onnx = (tmp_path / "run2/candidate/model.onnx").read_bytes()
        assert tags["roost.sha256"] == hashlib.sha256(onnx).hexdigest()
        assert version["source"].startswith("mlflow-artifacts:/")
        # The artifact proxy serves exactly the registered bytes (what roost's pods fetch).
        path = version["source"].removeprefix("mlflow-artifacts:/")
        url = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{path}/model.onnx"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert hashlib.sha256(r.read()).hexdigest() == tags["roost.sha256"]

        bad = _pipeline(server, tmp_path / "run3", "--kind", "constant")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "agrees with the stable model on" in bad.stderr, bad.stderr
        assert "not released" in bad.stdout
        after = _get(server, "registered-models/alias", name="wine", alias="champion")
        assert after["model_version"]["version"] == "2"
        versions = _get(server, "model-versions/search", filter="name='wine'")
        assert len(versions["model_versions"]) == 2  # the refused candidate was never registered
