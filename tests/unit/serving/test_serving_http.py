"""The real server over HTTP on loopback: endpoints, every datatype, binary extension, errors."""

from __future__ import annotations

import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from roost_serving.config import Settings
from roost_serving.protocol import DTYPES

# start_server and serving_models come from this directory's conftest.py.
RunningServer = Any
ONNX_TYPES = list(DTYPES)

FOREST_ROW = [0.5, -1.0, 0.25, 2.0, 0.0]
_REST = {"protocol": "rest", "source": "client"}
_FOREST_REST = {"model": "forest", "revision": "", "protocol": "rest", "source": "client"}


def _forest(start_server: type[RunningServer], models: dict[str, Path], **kw: Any) -> RunningServer:
    return start_server(Settings(model=str(models["forest"]), name="forest", **kw))


def _infer(url: str, body: Any, path: str = "/v2/models/forest/infer") -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=10)


def _row_request(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [len(rows), 5], "data": rows}],
        **extra,
    }


def test_health_and_metadata(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, revision="abc123")
    live = httpx.get(server.url + "/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = httpx.get(server.url + "/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    model_ready = httpx.get(server.url + "/v2/models/forest/ready")
    assert (model_ready.status_code, model_ready.json()) == (200, {"name": "forest", "ready": True})
    assert httpx.get(server.url + "/v2/models/forest/versions/abc123/ready").status_code == 200
    meta = httpx.get(server.url + "/v2").json()
    assert meta["name"] == "roost"
    assert "binary_tensor_data" in meta["extensions"]
    model = httpx.get(server.url + "/v2/models/forest").json()
    assert model["platform"] == "onnx_onnxv1"
    assert model["versions"] == ["abc123"]
    assert model["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 5]}]
    assert {o["name"]: o["shape"] for o in model["outputs"]} == {
        "label": [-1],
        "probabilities": [-1, 3],
    }
    assert httpx.get(server.url + "/v2/models/forest/versions/abc123").json() == model


def test_infer_matches_onnxruntime_flat_and_nested(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    rows = [FOREST_ROW, [-2.0, 1.0, 0.0, 0.0, 1.5]]
    nested = _infer(server.url, _row_request(rows, id="req-7", parameters={"trace": True}))
    flat_body = _row_request(rows)
    flat_body["inputs"][0]["data"] = [v for row in rows for v in row]
    flat = _infer(server.url, flat_body)
    assert nested.status_code == flat.status_code == 200
    body = nested.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "forest"
    assert flat.json()["outputs"] == body["outputs"]
    session = ort.InferenceSession(str(serving_models["forest"]))
    label, proba = session.run(None, {"X": np.array(rows, dtype=np.float32)})
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [2],
        "data": label.tolist(),
    }
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert (
        np.array(outputs["probabilities"]["data"], dtype=np.float32).tolist()
        == proba.ravel().tolist()
    )


def test_outputs_selection(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    response = _infer(server.url, _row_request([FOREST_ROW], outputs=[{"name": "probabilities"}]))
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities"]
    unknown = _infer(server.url, _row_request([FOREST_ROW], outputs=[{"name": "nope"}]))
    assert unknown.status_code == 400
    assert "unknown output 'nope'" in unknown.json()["error"]


def _identity_values(datatype: str) -> list[Any]:
    values: dict[str, list[Any]] = {
        "BOOL": [True, False, False, True],
        "FP16": [0.5, -1.25, 2048.0, 0.0],
        "FP32": [0.1, -3.5, 1e30, 7.0],
        "FP64": [0.1, -3.5, 1e300, 7.0],
        "BYTES": ["héllo", "", "a b", "🙂"],
    }
    if datatype in values:
        return values[datatype]
    info = np.iinfo(np.dtype(datatype.lower().replace("fp", "float")))
    return [int(info.min), int(info.max), 0, 1]


def _identity_request(binary: bool) -> tuple[dict[str, Any], bytes]:
    inputs, chunks = [], []
    for datatype in ONNX_TYPES:
        values = _identity_values(datatype)
        entry: dict[str, Any] = {"name": f"in_{datatype}", "datatype": datatype, "shape": [2, 2]}
        if binary:
            if datatype == "BYTES":
                raw = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
            else:
                dtype = (
                    np.dtype(datatype.lower().replace("fp", "float"))
                    if datatype != "BOOL"
                    else np.bool_
                )
                raw = (
                    np.array(values, dtype=dtype)
                    .astype(np.dtype(dtype).newbyteorder("<"))
                    .tobytes()
                )
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values
        inputs.append(entry)
    return {"inputs": inputs}, b"".join(chunks)


def test_every_datatype_round_trips_as_json(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = start_server(Settings(model=str(serving_models["identity"]), name="id"))
    body, _ = _identity_request(binary=False)
    response = _infer(server.url, body, "/v2/models/id/infer")
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    for datatype in ONNX_TYPES:
        out = outputs[f"out_{datatype}"]
        assert (out["datatype"], out["shape"]) == (datatype, [2, 2])
        expected = _identity_values(datatype)
        if datatype == "FP32":
            expected = np.array(expected, dtype=np.float32).astype(float).tolist()
        assert (
            out["data"] == pytest.approx(expected)
            if datatype.startswith("FP")
            else out["data"] == expected
        )


def _split_binary(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers["inference-header-content-length"])
    return orjson.loads(response.content[:length]), response.content[length:]


def test_every_datatype_round_trips_as_binary(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = start_server(Settings(model=str(serving_models["identity"]), name="id"))
    header, data = _identity_request(binary=True)
    header["parameters"] = {"binary_data_output": True}
    raw_header = orjson.dumps(header)
    response = httpx.post(
        server.url + "/v2/models/id/infer",
        content=raw_header + data,
        headers={"Inference-Header-Content-Length": str(len(raw_header))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    meta, payload = _split_binary(response)
    # Inputs and outputs are in the same order with the same shapes: the binary sections of
    # an identity model's response are exactly the request's.
    assert [o["name"] for o in meta["outputs"]] == [f"out_{d}" for d in ONNX_TYPES]
    assert all("data" not in o for o in meta["outputs"])
    assert payload == data
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert sum(sizes) == len(data)


def test_binary_output_for_one_output_json_for_the_rest(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    body = _row_request(
        [FOREST_ROW],
        outputs=[{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}],
    )
    meta, payload = _split_binary(_infer(server.url, body))
    label, proba = meta["outputs"]
    assert "data" in label
    assert proba["parameters"]["binary_data_size"] == 12 == len(payload)
    json_proba = _infer(server.url, _row_request([FOREST_ROW])).json()["outputs"][1]["data"]
    assert (
        np.frombuffer(payload, dtype="<f4").tolist()
        == np.array(json_proba, dtype=np.float32).tolist()
    )


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (
            {"inputs": [{"name": "Z", "datatype": "FP32", "shape": [1, 5], "data": FOREST_ROW}]},
            400,
            "unknown input 'Z'",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "FP64", "shape": [1, 5], "data": FOREST_ROW}]},
            400,
            "has datatype FP64 but the model expects FP32",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 5], "data": FOREST_ROW}]},
            400,
            "needs 10 elements but data has 5",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [5, 1], "data": FOREST_ROW}]},
            400,
            "model expects [-1, 5]",
        ),
        ({"inputs": []}, 400, "no inputs"),
        ({"inputs": [{"name": "X"}]}, 400, "inputs.0.shape"),
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 5], "data": ["a"] * 5}]},
            400,
            "FP32 data must be numbers",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2], "data": [[1], [2, 3]]}]},
            400,
            "ragged",
        ),
        (
            {"inputs": [{"name": "X", "datatype": "COMPLEX", "shape": [1], "data": [1]}]},
            400,
            "unknown datatype 'COMPLEX'",
        ),
    ],
)
def test_bad_requests_get_400_with_a_reason(
    start_server: type[RunningServer],
    serving_models: dict[str, Path],
    body: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    server = _forest(start_server, serving_models)
    response = _infer(server.url, body)
    assert response.status_code == status
    assert fragment in response.json()["error"]
    assert server.metric("roost_requests_total", **_FOREST_REST, code="400") == 1.0


def test_missing_input_invalid_json_404_and_413(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = start_server(
        Settings(model=str(serving_models["identity"]), name="id", max_body_bytes=4096)
    )
    body, _ = _identity_request(binary=False)
    body["inputs"] = body["inputs"][:3]
    missing = _infer(server.url, body, "/v2/models/id/infer")
    assert missing.status_code == 400
    assert "missing input(s) 'in_UINT32', 'in_UINT64'" in missing.json()["error"]
    garbage = httpx.post(server.url + "/v2/models/id/infer", content=b"{not json")
    assert garbage.status_code == 400
    assert "not valid JSON" in garbage.json()["error"]
    unknown = _infer(server.url, body, "/v2/models/other/infer")
    assert unknown.status_code == 404
    assert "unknown model 'other'" in unknown.json()["error"]
    version = _infer(server.url, body, "/v2/models/id/versions/9/infer")
    assert version.status_code == 404
    assert "unknown version '9'" in version.json()["error"]
    assert httpx.get(server.url + "/v2/models/other").status_code == 404
    assert httpx.get(server.url + "/v2/models/id/versions/9/ready").status_code == 404
    big = httpx.post(server.url + "/v2/models/id/infer", content=b"x" * 5000)
    assert big.status_code == 413
    assert "--max-body-bytes" in big.json()["error"]
    # Chunked bodies carry no Content-Length; the limit holds while reading.
    chunked = httpx.post(
        server.url + "/v2/models/id/infer", content=iter([b"x" * 3000, b"x" * 3000])
    )
    assert chunked.status_code == 413
    assert httpx.get(server.url + "/nowhere").json() == {"error": "Not Found"}


def test_fixed_batch_dimension_disables_batching(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = start_server(Settings(model=str(serving_models["fixed"]), name="fixed"))
    assert server.plane.batcher is not None
    assert not server.plane.batcher.enabled
    ok = _infer(
        server.url,
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
        "/v2/models/fixed/infer",
    )
    assert ok.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    two_rows = _infer(
        server.url,
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": [1] * 6}]},
        "/v2/models/fixed/infer",
    )
    assert two_rows.status_code == 400
    assert "model expects [1, 3]" in two_rows.json()["error"]


def test_metrics_endpoint_and_values(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, revision="r1")
    for _ in range(3):
        assert _infer(server.url, _row_request([FOREST_ROW])).status_code == 200
    _infer(server.url, {"inputs": []})
    labels = {"model": "forest", "revision": "r1"}
    assert server.metric("roost_requests_total", code="200", **_REST, **labels) == 3.0
    assert server.metric("roost_requests_total", code="400", **_REST, **labels) == 1.0
    assert (
        server.metric(
            "roost_requests_total", code="200", protocol="grpc", source="client", **labels
        )
        == 0.0
    )
    assert server.metric("roost_request_duration_seconds_count", **_REST, **labels) == 4.0
    assert server.metric("roost_queue_duration_seconds_count", **labels) == 3.0
    assert server.metric("roost_batch_size_sum", **labels) == 3.0
    assert server.metric("roost_inflight_requests", **labels) == 0.0
    digest = hashlib.sha256(serving_models["forest"].read_bytes()).hexdigest()
    info = {"uri": str(serving_models["forest"]), "sha256": digest, "platform": "onnx_onnxv1"}
    assert server.metric("roost_model_info", **labels, **info) == 1.0
    assert server.metric("roost_model_load_duration_seconds", **labels) > 0
    text = httpx.get(server.url + "/metrics").text
    assert (
        'roost_requests_total{code="200",model="forest",protocol="rest",revision="r1",'
        'source="client"} 3.0'
    ) in text
    # The fine request-latency buckets the operator's latency gate needs (x1.14 apart).
    assert (
        'roost_request_duration_seconds_bucket{le="0.00065",model="forest",protocol="rest",'
        'revision="r1",source="client"}'
    ) in text
    assert 'roost_queue_duration_seconds_bucket{le="0.0075",model="forest",revision="r1"}' in text


class _HeldModelHandler(http.server.BaseHTTPRequestHandler):
    """Serves one model file, but only once the test releases it (a slow model download)."""

    release = threading.Event()
    payload = b""

    def do_GET(self) -> None:
        self.release.wait(timeout=30)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def held_model_url(serving_models: dict[str, Path]) -> Iterator[tuple[str, threading.Event]]:
    handler = type("Held", (_HeldModelHandler,), {"release": threading.Event()})
    handler.payload = serving_models["forest"].read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/forest.onnx", handler.release
    handler.release.set()
    httpd.shutdown()


def test_not_ready_while_the_model_downloads_then_ready(
    start_server: type[RunningServer], held_model_url: tuple[str, threading.Event]
) -> None:
    url, release = held_model_url
    server = start_server(Settings(model=url, name="forest"), wait_ready=False)
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    not_ready = httpx.get(server.url + "/v2/health/ready")
    assert (not_ready.status_code, not_ready.json()) == (503, {"ready": False})
    assert httpx.get(server.url + "/v2/models/forest/ready").status_code == 503
    refused = _infer(server.url, _row_request([FOREST_ROW]))
    assert refused.status_code == 503
    assert "not loaded yet" in refused.json()["error"]
    release.set()
    for _ in range(3000):
        if httpx.get(server.url + "/v2/health/ready").status_code == 200:
            break
        threading.Event().wait(0.01)
    assert _infer(server.url, _row_request([FOREST_ROW])).status_code == 200
    assert server.metric("roost_requests_total", **_FOREST_REST, code="503") == 1.0


def test_openapi_documents_the_infer_request(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    spec = httpx.get(server.url + "/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    ref = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/InferenceRequest"
    assert "RequestInput" in spec["components"]["schemas"]
    versioned = spec["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert [p["name"] for p in versioned["parameters"]] == ["name", "version"]
    ok = versioned["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok == "#/components/schemas/InferenceResponse"
    assert "ErrorResponse" in spec["components"]["schemas"]
    # Documented, but no FastAPI handler behind it: the fast path answers every infer request.
    routes = {getattr(r, "path", "") for r in server.app.routes}
    assert not any(path.endswith("/infer") for path in routes)
