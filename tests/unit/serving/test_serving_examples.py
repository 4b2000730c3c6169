"""The example models served with their profiles: drift series appear, a bad signature fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
from roost_serving.config import Settings
from sklearn.datasets import load_wine


def _wine_request(rows: np.ndarray) -> dict[str, Any]:
    x = rows.astype(np.float32)
    return {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]
    }


def test_wine_v1_with_profile_exports_drift_and_predictions(
    start_server: Any, example_models: dict[str, Path]
) -> None:
    model = example_models["wine-v1"]
    server = start_server(
        Settings(
            model=str(model / "model.onnx"),
            profile=str(model / "profile.json"),
            name="wine",
            revision="v1",
        )
    )
    rows = load_wine().data[:40]
    response = httpx.post(server.url + "/v2/models/wine/infer", json=_wine_request(rows))
    assert response.status_code == 200
    labels = response.json()["outputs"][0]["data"]
    assert len(labels) == 40
    assert server.metric("roost_drift_window_rows", model="wine", revision="v1") == 40.0
    counted = sum(
        server.metric("roost_predictions_total", model="wine", revision="v1", bin=b) or 0.0
        for b in ("0", "1", "2", "other")
    )
    assert counted == 40.0
    assert "roost_feature_psi{" in httpx.get(server.url + "/metrics").text


def test_bad_signature_model_rejects_what_clients_send(
    start_server: Any, example_models: dict[str, Path]
) -> None:
    model = example_models["wine-bad-signature"]
    server = start_server(Settings(model=str(model / "model.onnx"), name="wine"))
    response = httpx.post(
        server.url + "/v2/models/wine/infer", json=_wine_request(load_wine().data[:2])
    )
    assert response.status_code == 400
    assert "model expects [-1, 12]" in response.json()["error"]
