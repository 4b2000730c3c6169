"""The gRPC GRPCInferenceService with stock clients: tritonclient.grpc, and plain grpc stubs.

Every test runs the real server (REST and gRPC in one process, on loopback) and talks to it
the way a user's client would; the answers are compared with onnxruntime run directly and with
the REST path's answers for the same rows.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from roost_serving.config import Settings
from roost_serving.proto import open_inference_pb2 as pb
from roost_serving.protocol import DTYPES
from tritonclient.utils import InferenceServerException

RunningServer = Any  # start_server and serving_models come from this directory's conftest.py
ROOT = Path(__file__).resolve().parents[3]
ROWS = np.random.default_rng(3).normal(size=(7, 5)).astype(np.float32)
GRPC = {"model": "forest", "revision": "", "protocol": "grpc", "source": "client"}


def _serve(start: type[RunningServer], model: Path, name: str, **kw: Any) -> RunningServer:
    return start(Settings(model=str(model), name=name, grpc_port=0, **kw))


def _client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.plane.grpc_port}")


@pytest.fixture
def forest(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> Iterator[tuple[RunningServer, triton.InferenceServerClient]]:
    server = _serve(start_server, serving_models["forest"], "forest")
    client = _client(server)
    yield server, client
    client.close()


def _forest_input(rows: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def test_triton_health_and_metadata(forest: tuple[RunningServer, Any]) -> None:
    _, client = forest
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("forest")
    assert client.is_model_ready("forest", "1")
    meta = client.get_server_metadata()
    assert (meta.name, list(meta.extensions)) == ("roost", [])
    model = client.get_model_metadata("forest", as_json=True)
    assert (model["platform"], model["versions"]) == ("onnx_onnxv1", ["1"])
    assert model["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "5"]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("other")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "this server serves 'forest'" in unknown.value.message()


def test_triton_infer_several_rows_raw_matches_onnxruntime_and_rest(
    forest: tuple[RunningServer, Any], serving_models: dict[str, Path]
) -> None:
    server, client = forest
    result = client.infer("forest", [_forest_input(ROWS)], request_id="req-7")
    session = ort.InferenceSession(str(serving_models["forest"]))
    label, proba = session.run(["label", "probabilities"], {"X": ROWS})
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-6)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", "forest", "1")
    assert len(response.raw_output_contents) == 2  # raw in, raw out
    rest = httpx.post(
        server.url + "/v2/models/forest/infer",
        json={
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [7, 5], "data": ROWS.ravel().tolist()}
            ]
        },
    ).json()
    assert rest["outputs"][0]["data"] == result.as_numpy("label").tolist()
    only = client.infer(
        "forest", [_forest_input(ROWS[:2])], outputs=[triton.InferRequestedOutput("label")]
    )
    assert [o.name for o in only.get_response().outputs] == ["label"]
    assert only.as_numpy("probabilities") is None


def test_triton_every_datatype_round_trips_raw(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _serve(start_server, serving_models["identity"], "identity")
    client = _client(server)
    inputs, sent = [], {}
    for datatype in DTYPES:
        if datatype == "BYTES":
            array = np.array([[b"h\xc3\xa9llo", b""], [b"a b", b"x"]], dtype=object)
        elif datatype == "BOOL":
            array = np.array([[True, False], [False, True]])
        elif datatype.startswith("FP"):
            array = np.array([[0.5, -1.25], [2048.0, 0.0]], dtype=DTYPES[datatype])
        else:
            info = np.iinfo(DTYPES[datatype])
            array = np.array([[info.min, info.max], [0, 1]], dtype=DTYPES[datatype])
        tensor = triton.InferInput(f"in_{datatype}", [2, 2], datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
        sent[datatype] = array
    result = client.infer("identity", inputs)
    for datatype, array in sent.items():
        back = result.as_numpy(f"out_{datatype}")
        assert back.dtype == array.dtype or datatype == "BYTES"
        np.testing.assert_array_equal(back, array)
    client.close()


@pytest.mark.parametrize(
    ("rows", "datatype", "fragment"),
    [
        (ROWS[:, :4].copy(), "FP32", "has shape [7, 4] but the model expects [-1, 5]"),
        (ROWS.astype(np.float64), "FP64", "has datatype FP64 but the model expects FP32"),
    ],
)
def test_triton_errors_are_grpc_statuses_with_the_rest_message(
    forest: tuple[RunningServer, Any], rows: np.ndarray, datatype: str, fragment: str
) -> None:
    server, client = forest
    tensor = triton.InferInput("X", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as error:
        client.infer("forest", [tensor])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert fragment in error.value.message()
    assert server.metric("roost_requests_total", code="400", **GRPC) == 1.0


def test_triton_unknown_model_version_and_output(forest: tuple[RunningServer, Any]) -> None:
    _, client = forest
    cases = [
        ({"model_name": "other"}, "StatusCode.NOT_FOUND", "unknown model 'other'"),
        ({"model_name": "forest", "model_version": "9"}, "StatusCode.NOT_FOUND", "version '9'"),
        (
            {"model_name": "forest", "outputs": [triton.InferRequestedOutput("nope")]},
            "StatusCode.INVALID_ARGUMENT",
            "unknown output 'nope'",
        ),
    ]
    for kwargs, status, fragment in cases:
        with pytest.raises(InferenceServerException) as error:
            client.infer(inputs=[_forest_input(ROWS)], **kwargs)
        assert (error.value.status(), fragment in error.value.message()) == (status, True)


def _stub(server: RunningServer, method: str, response: Any) -> Any:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.plane.grpc_port}")
    return channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response.FromString,
    )


def test_typed_contents_in_typed_contents_out(forest: tuple[RunningServer, Any]) -> None:
    server, _ = forest
    infer = _stub(server, "ModelInfer", pb.ModelInferResponse)
    request = pb.ModelInferRequest(model_name="forest")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[7, 5])
    tensor.contents.fp32_contents.extend(ROWS.ravel().tolist())
    response = infer(request)
    assert not response.raw_output_contents
    labels = {o.name: list(o.contents.int64_contents) for o in response.outputs}["label"]
    raw = _client(server).infer("forest", [_forest_input(ROWS)]).as_numpy("label")
    assert labels == raw.tolist()
    mixed = pb.ModelInferRequest(model_name="forest", raw_input_contents=[ROWS.tobytes()])
    mixed.inputs.add(name="X", datatype="FP32", shape=[7, 5]).contents.fp32_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as error:
        infer(mixed)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "use one or the other" in error.value.details()
    short = pb.ModelInferRequest(model_name="forest")
    short.inputs.add(name="X", datatype="FP32", shape=[7, 5]).contents.fp32_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as error:
        infer(short)
    assert "needs 35 elements but data has 1" in error.value.details()


@pytest.mark.parametrize(
    ("shape", "raw", "fragment"),
    [
        ([-7, 5], [ROWS.tobytes()], "negative dimension"),
        ([8, 5], [ROWS.tobytes()], "needs 160 bytes but binary_data_size is 140"),
        ([7, 5], [ROWS.tobytes(), b""], "raw_input_contents has 2 entries for 1 inputs"),
    ],
)
def test_raw_contents_that_do_not_fit_are_invalid_arguments(
    forest: tuple[RunningServer, Any], shape: list[int], raw: list[bytes], fragment: str
) -> None:
    server, _ = forest
    request = pb.ModelInferRequest(model_name="forest", raw_input_contents=raw)
    request.inputs.add(name="X", datatype="FP32", shape=shape)
    with pytest.raises(grpc.RpcError) as error:
        _stub(server, "ModelInfer", pb.ModelInferResponse)(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.value.details()


def test_grpc_shares_metrics_drift_and_batching_with_rest(
    start_server: type[RunningServer], serving_models: dict[str, Path], tmp_path: Path
) -> None:
    from roost_serving.profile import build_profile

    train = np.random.default_rng(0).normal(size=(400, 5)).astype(np.float32)
    profile = build_profile(train, str(serving_models["forest"]))
    (tmp_path / "profile.json").write_text(profile.to_json())
    server = _serve(
        start_server, serving_models["forest"], "forest", profile=str(tmp_path / "profile.json")
    )
    client = _client(server)
    for _ in range(3):
        client.infer("forest", [_forest_input(ROWS)])
    assert server.metric("roost_requests_total", code="200", **GRPC) == 3.0
    assert server.metric("roost_request_duration_seconds_count", **GRPC) == 3.0
    labels = {"model": "forest", "revision": ""}
    assert server.metric("roost_batch_size_sum", **labels) == 21.0
    assert server.metric("roost_drift_window_rows", **labels) == 21.0
    assert server.metric("roost_inflight_requests", **labels) == 0.0
    client.close()


def test_grpc_readiness_follows_shutdown(forest: tuple[RunningServer, Any]) -> None:
    server, client = forest
    server.plane.begin_shutdown()
    assert client.is_server_live()
    assert not client.is_server_ready()
    assert not client.is_model_ready("forest")
    rest = httpx.get(server.url + "/v2/health/ready")
    assert (rest.status_code, rest.json()) == (503, {"ready": False})


def test_checked_in_generated_code_matches_the_pinned_generator() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("shape", "outputs", "fragment"),
    [
        ([1] * 33, None, "at most 32 are allowed"),
        ([0, 2**62], None, "exceeds the limit"),
        ([7, 5], ["label", "label"], "requested twice"),
    ],
)
def test_the_rest_limits_bound_grpc_requests_too(
    forest: tuple[RunningServer, Any], shape: list[int], outputs: list[str] | None, fragment: str
) -> None:
    """Shapes numpy cannot lay out and repeated outputs are INVALID_ARGUMENT, never INTERNAL."""
    server, _ = forest
    request = pb.ModelInferRequest(model_name="forest", raw_input_contents=[ROWS.tobytes()])
    request.inputs.add(name="X", datatype="FP32", shape=shape)
    for name in outputs or []:
        request.outputs.add(name=name)
    with pytest.raises(grpc.RpcError) as error:
        _stub(server, "ModelInfer", pb.ModelInferResponse)(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.value.details()
    assert server.metric("roost_requests_total", code="500", **GRPC) == 0.0


def test_a_full_queue_is_unavailable_at_once_over_grpc(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _serve(start_server, serving_models["forest"], "forest", max_queue=1)
    server.plane.inflight = 1  # one request inside already: the queue is full
    request = pb.ModelInferRequest(model_name="forest", raw_input_contents=[ROWS.tobytes()])
    request.inputs.add(name="X", datatype="FP32", shape=[7, 5])
    with pytest.raises(grpc.RpcError) as error:
        _stub(server, "ModelInfer", pb.ModelInferResponse)(request)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "--max-queue 1" in error.value.details()
    server.plane.inflight = 0
    labels = {"model": "forest", "revision": ""}
    assert server.metric("roost_requests_shed_total", reason="queue_full", **labels) == 1.0
