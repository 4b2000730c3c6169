"""Request ids and the ``source`` label, against the real server on loopback (REST and gRPC)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from roost_serving.config import Settings
from roost_serving.proto import open_inference_pb2 as pb
from roost_serving.requestid import MAX_LENGTH, Inference, problem, resolve

RunningServer = Any  # start_server and serving_models come from this directory's conftest.py
ROW = [0.5, -1.0, 0.25, 2.0, 0.0]
PATH = "/v2/models/forest/infer"


def _body(**extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 5], "data": ROW}], **extra}


@pytest.fixture
def forest(start_server: type[RunningServer], serving_models: dict[str, Path]) -> RunningServer:
    return start_server(Settings(model=str(serving_models["forest"]), name="forest", grpc_port=0))


def test_body_id_wins_then_header_then_generated(forest: RunningServer) -> None:
    both = httpx.post(forest.url + PATH, json=_body(id="body-1"), headers={"X-Request-Id": "h-1"})
    assert (both.json()["id"], both.headers["x-request-id"]) == ("body-1", "body-1")
    header = httpx.post(forest.url + PATH, json=_body(), headers={"X-Request-Id": "h-2"})
    assert (header.json()["id"], header.headers["x-request-id"]) == ("h-2", "h-2")
    first = httpx.post(forest.url + PATH, json=_body())
    second = httpx.post(forest.url + PATH, json=_body())
    ids = [r.json()["id"] for r in (first, second)]
    assert ids[0] != ids[1]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert first.headers["x-request-id"] == ids[0]


def test_errors_carry_the_header_id(forest: RunningServer) -> None:
    response = httpx.post(
        forest.url + PATH, json={"inputs": []}, headers={"X-Request-Id": "trace-9"}
    )
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "trace-9"
    unknown = httpx.post(forest.url + "/v2/models/nope/infer", json=_body())
    assert unknown.status_code == 404
    assert len(unknown.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("headers", "body_id", "fragment"),
    [
        ({"X-Request-Id": "x" * (MAX_LENGTH + 1)}, None, "at most 128"),
        ({"X-Request-Id": "a\tb"}, None, "printable ASCII"),
        ({}, "caf\u00e9", "printable ASCII"),
        ({}, "line\nbreak", "printable ASCII"),
        ({}, "y" * 1000, "has 1000 characters"),
    ],
)
def test_hostile_ids_are_400s_that_say_why(
    forest: RunningServer, headers: dict[str, str], body_id: str | None, fragment: str
) -> None:
    body = _body() if body_id is None else _body(id=body_id)
    response = httpx.post(forest.url + PATH, json=body, headers=headers)
    assert response.status_code == 400
    assert "request id" in response.json()["error"]
    assert fragment in response.json()["error"]
    # A fresh id, never the hostile one echoed into a header.
    assert len(response.headers["x-request-id"]) == 32


def test_header_bytes_outside_ascii_are_refused(forest: RunningServer) -> None:
    response = httpx.post(forest.url + PATH, json=_body(), headers=[(b"X-Request-Id", b"\xff\xfe")])
    assert response.status_code == 400
    assert "printable ASCII" in response.json()["error"]


def test_observers_see_the_id_after_the_model_ran(forest: RunningServer) -> None:
    seen: list[Inference] = []
    forest.plane.observers.append(seen.append)
    forest.plane.observers.append(lambda _done: 1 / 0)  # a failing observer fails nothing
    response = httpx.post(forest.url + PATH, json=_body(), headers={"X-Request-Id": "obs-1"})
    assert response.status_code == 200
    assert [(d.request_id, d.source) for d in seen] == [("obs-1", "client")]
    label = response.json()["outputs"][0]
    assert seen[0].outputs["label"].tolist() == label["data"]


def test_validation_requests_are_counted_apart_and_not_monitored(forest: RunningServer) -> None:
    headers = {"Roost-Source": "validation"}
    for _ in range(3):
        assert httpx.post(forest.url + PATH, json=_body(), headers=headers).status_code == 200
    assert httpx.post(forest.url + PATH, json=_body()).status_code == 200
    base = {"model": "forest", "revision": "", "protocol": "rest"}
    requests = "roost_requests_total"
    assert forest.metric(requests, code="200", source="validation", **base) == 3.0
    assert forest.metric(requests, code="200", source="client", **base) == 1.0
    duration = "roost_request_duration_seconds_count"
    assert forest.metric(duration, source="validation", **base) == 3.0
    # Only the client's row reached the batcher's observers (batch sizes, drift, predictions).
    assert forest.metric("roost_batch_size_sum", model="forest", revision="") == 1.0


def test_ids_are_logged_on_failures(
    forest: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="roost.server"):
        httpx.post(forest.url + PATH, json={"inputs": []}, headers={"X-Request-Id": "log-1"})
    assert any("log-1" in r.getMessage() for r in caplog.records)


def _grpc_request(request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="forest", id=request_id)
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 5])
    tensor.contents.fp32_contents.extend(ROW)
    return request


def _grpc_call(server: RunningServer, request: pb.ModelInferRequest, metadata: Any = ()) -> Any:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.plane.grpc_port}")
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    try:
        return call.with_call(request, metadata=metadata, timeout=10)
    finally:
        channel.close()


def test_grpc_ids_field_then_metadata_then_generated(forest: RunningServer) -> None:
    response, call = _grpc_call(forest, _grpc_request("g-1"), [("x-request-id", "m-1")])
    assert response.id == "g-1"
    assert dict(call.trailing_metadata())["x-request-id"] == "g-1"
    response, call = _grpc_call(forest, _grpc_request(), [("x-request-id", "m-2")])
    assert response.id == "m-2"
    assert dict(call.trailing_metadata())["x-request-id"] == "m-2"
    response, call = _grpc_call(forest, _grpc_request())
    assert len(response.id) == 32
    assert dict(call.trailing_metadata())["x-request-id"] == response.id


def test_grpc_hostile_metadata_id_is_invalid_argument(forest: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _grpc_call(forest, _grpc_request(), [("x-request-id", "z" * 500)])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 128" in error.value.details()
    trailing = dict(error.value.trailing_metadata() or ())
    assert len(trailing["x-request-id"]) == 32


def test_grpc_validation_source_is_labelled(forest: RunningServer) -> None:
    _grpc_call(forest, _grpc_request(), [("roost-source", "validation")])
    base = {"model": "forest", "revision": "", "protocol": "grpc"}
    assert forest.metric("roost_requests_total", code="200", source="validation", **base) == 1.0
    assert forest.metric("roost_requests_total", code="200", source="client", **base) == 0.0


def test_resolve_and_problem() -> None:
    assert resolve("a", "b") == "a"
    assert resolve(None, "b") == "b"
    assert resolve("", None) != resolve("", None)
    assert problem(" padded") is not None
    assert problem("ok id-1_2.3") is None
    assert np.all([problem(chr(c)) is not None for c in range(32)])
