"""The V2 codec without a server: decoding, signature checks, encoding, settings."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from roost_serving.config import ConfigError, parse_settings
from roost_serving.protocol import (
    BadRequestError,
    DecodedRequest,
    TensorSpec,
    check_inputs,
    decode_request,
    encode_response,
    index_inputs,
)


def _body(*inputs: dict[str, object], **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def test_nested_and_flat_data_decode_to_the_same_row_major_array() -> None:
    flat = decode_request(
        _body({"name": "X", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]})
    )
    nested = decode_request(
        _body({"name": "X", "datatype": "INT32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]})
    )
    assert flat.inputs["X"].dtype == np.int32
    np.testing.assert_array_equal(flat.inputs["X"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(nested.inputs["X"], flat.inputs["X"])


def test_several_inputs_id_parameters_and_outputs() -> None:
    request = decode_request(
        _body(
            {"name": "age", "datatype": "FP64", "shape": [2, 1], "data": [30, 41.5]},
            {"name": "city", "datatype": "BYTES", "shape": [2, 1], "data": ["Oslo", "Lima"]},
            id="abc",
            parameters={"anything": [1, 2]},
            outputs=[{"name": "label"}, {"name": "p", "parameters": {"binary_data": True}}],
        )
    )
    assert request.id == "abc"
    assert request.inputs["age"].tolist() == [[30.0], [41.5]]
    assert request.inputs["city"].tolist() == [["Oslo"], ["Lima"]]
    assert request.outputs == ["label", "p"]
    assert request.binary_outputs == {"p"}


def test_binary_inputs_are_split_by_binary_data_size() -> None:
    floats = np.array([1.5, -2.0], dtype="<f4").tobytes()
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b""))
    header = _body(
        {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
        {
            "name": "s",
            "datatype": "BYTES",
            "shape": [2],
            "parameters": {"binary_data_size": len(strings)},
        },
    )
    request = decode_request(header + floats + strings, len(header))
    assert request.inputs["a"].tolist() == [1.5, -2.0]
    assert request.inputs["s"].tolist() == ["ab", ""]


@pytest.mark.parametrize(
    ("body", "header_length", "fragment"),
    [
        (b"[1]", None, "invalid inference request"),
        (
            _body({"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}),
            None,
            "out of range for INT8",
        ),
        (
            _body({"name": "x", "datatype": "INT8", "shape": [1], "data": [1.5]}),
            None,
            "must be integers",
        ),
        (_body({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}), None, "true/false"),
        (
            _body({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}),
            None,
            "must be strings",
        ),
        (_body({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}), None, "negative"),
        (_body({"name": "x", "datatype": "FP32", "shape": [1]}), None, "neither data nor"),
        (
            _body(
                {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
            ),
            None,
            "given twice",
        ),
        (
            _body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}),
            10_000,
            "does not fit",
        ),
        (
            _body(
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 4},
                }
            )
            + b"\0" * 4,
            None,
            "not valid JSON",
        ),
    ],
)
def test_malformed_requests_say_what_is_wrong(
    body: bytes, header_length: int | None, fragment: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        decode_request(body, header_length)
    assert fragment in caught.value.message


def test_binary_size_that_does_not_match_the_shape() -> None:
    header = _body(
        {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}
    )
    with pytest.raises(BadRequestError, match="needs 8 bytes but binary_data_size is 4"):
        decode_request(header + b"\0" * 4, len(header))
    exact = _body(
        {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
    )
    with pytest.raises(BadRequestError, match="4 bytes of binary data are not claimed"):
        decode_request(exact + b"\0" * 12, len(exact))


def test_check_inputs_against_the_signature() -> None:
    signature = index_inputs([TensorSpec("X", "FP32", (-1, 3)), TensorSpec("k", "BYTES", (-1,))])
    good = DecodedRequest(
        id=None,
        inputs={"X": np.zeros((4, 3), np.float32), "k": np.array(["a"] * 4, dtype=object)},
        outputs=None,
    )
    check_inputs(good, signature)
    wide = DecodedRequest(
        id=None, inputs={"X": np.zeros((4, 4), np.float32), "k": good.inputs["k"]}, outputs=None
    )
    with pytest.raises(BadRequestError, match=r"shape \[4, 4\] but the model expects \[-1, 3\]"):
        check_inputs(wide, signature)
    missing = DecodedRequest(id=None, inputs={"X": good.inputs["X"]}, outputs=None)
    with pytest.raises(BadRequestError, match="missing input"):
        check_inputs(missing, signature)


def test_encode_json_and_binary_outputs() -> None:
    request = DecodedRequest(id="7", inputs={}, outputs=["y", "s"], binary_outputs={"y"})
    outputs = {"y": np.array([[1.0, 2.0]], dtype=np.float16), "s": np.array(["é"], dtype=object)}
    body, length = encode_response("m", "1", request, outputs)
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["id"] == "7"
    y, s = header["outputs"]
    assert y == {
        "name": "y",
        "datatype": "FP16",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 4},
    }
    assert s == {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["é"]}
    assert np.frombuffer(body[length:], dtype="<f2").tolist() == [1.0, 2.0]


def test_settings_from_flags_and_environment() -> None:
    env = {
        "ROOST_MODEL": "m.onnx",
        "ROOST_PORT": "9000",
        "ROOST_MAX_DELAY_MS": "0.5",
        "ROOST_SHA256": "AB" * 32,
    }
    settings = parse_settings(["--port", "9100", "--name", "wine"], env)
    assert (settings.model, settings.port, settings.name, settings.max_delay_ms) == (
        "m.onnx",
        9100,
        "wine",
        0.5,
    )
    assert settings.sha256 == "ab" * 32
    assert (settings.host, settings.max_batch_size, settings.drift_window) == (
        "127.0.0.1",
        32,
        2000,
    )
    assert settings.max_body_bytes == 16777216
    with pytest.raises(ConfigError, match="required"):
        parse_settings([], {})
    with pytest.raises(ConfigError, match="--max-batch-size must be at least 1"):
        parse_settings(["--model", "m", "--max-batch-size", "0"], {})
