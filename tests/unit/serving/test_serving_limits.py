"""The limit checks themselves (limits.py), as every front end calls them."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from roost_serving.limits import (
    Limits,
    ShedError,
    deadline_exceeded,
    parse_deadline,
    parse_header_length,
    queue_full,
)
from roost_serving.protocol import BadRequestError, decode_request, encode_response

LIMITS = Limits(max_elements=100, max_inputs=2, max_response_bytes=4096, request_timeout_s=5)


def _doc(*inputs: dict[str, object], **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _tensor(name: str, shape: list[int]) -> dict[str, object]:
    return {"name": name, "datatype": "FP32", "shape": shape, "data": [0.0] * int(np.prod(shape))}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_doc(_tensor("a", [1] * 33)), "33 dimensions; at most 32"),
        (_doc({"name": "a", "datatype": "FP32", "shape": [0, 2**62], "data": []}), "exceeds"),
        (_doc(_tensor("a", [11, 10])), "110 elements; at most 100"),
        (_doc(_tensor("a", [60]), _tensor("b", [60])), "120 elements together"),
        (_doc(_tensor("a", [1]), _tensor("b", [1]), _tensor("c", [1])), "3 inputs; at most 2"),
        (_doc(_tensor("a", [1]), outputs=[{"name": "y"}, {"name": "y"}]), "'y' is requested twice"),
    ],
)
def test_decode_enforces_the_limits(body: bytes, fragment: str) -> None:
    with pytest.raises(BadRequestError, match=fragment.replace("(", r"\(")):
        decode_request(body, None, LIMITS)


def test_within_the_limits_decodes() -> None:
    request = decode_request(_doc(_tensor("a", [10, 10])), None, LIMITS)
    assert request.inputs["a"].shape == (10, 10)


def test_response_size_is_refused_before_encoding() -> None:
    request = decode_request(_doc(_tensor("a", [1])), None, LIMITS)
    small = {"y": np.zeros(10, dtype=np.float32)}
    assert encode_response("m", "1", request, small, LIMITS)[1] is None
    with pytest.raises(BadRequestError, match="--max-response-bytes"):
        encode_response("m", "1", request, {"y": np.zeros(1000, dtype=np.float64)}, LIMITS)


def test_header_length_and_deadline_parsing() -> None:
    assert parse_header_length(b"123") == 123
    for bad in (b"9" * 20, b"-1", b"", b"1e3"):
        with pytest.raises(BadRequestError):
            parse_header_length(bad)
    assert parse_deadline(None, LIMITS) == 5
    assert parse_deadline(b"250", LIMITS) == 0.25
    assert parse_deadline(b"60000", LIMITS) == 5  # the server's limit caps the client's ask
    for bad in (b"0", b"x", b"1" * 13):
        with pytest.raises(BadRequestError):
            parse_deadline(bad, LIMITS)


def test_shed_errors_carry_status_and_reason() -> None:
    full, late = queue_full(7, LIMITS), deadline_exceeded(0.5)
    assert (full.status_code, full.reason) == (503, "queue_full")
    assert (late.status_code, late.reason) == (504, "deadline")
    assert isinstance(full, ShedError)
    assert "--max-queue 256" in full.message


def test_settings_keep_the_shutdown_inside_the_grace_period() -> None:
    from roost_serving.config import ConfigError, Settings

    settings = Settings(model="m.onnx", drain_seconds=3, grace_seconds=30)
    assert settings.shutdown_budget == 25  # 30 - 3 drain - 2 margin
    with pytest.raises(ConfigError, match="leaves no time"):
        Settings(model="m.onnx", drain_seconds=29, grace_seconds=30)
    with pytest.raises(ConfigError, match="--request-timeout must be a positive"):
        Settings(model="m.onnx", request_timeout=0)
    assert Settings(model="m.onnx", max_queue=8).limits().max_queue == 8
