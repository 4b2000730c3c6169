"""Open Inference Protocol (KServe V2) shapes and the tensor codec; no onnxruntime, no HTTP.

The pydantic models mirror KServe's ``v2_datamodels`` and describe the API (OpenAPI, docs,
error messages). The inference hot path does not validate through them: :func:`decode_request`
checks the few fields it needs by hand, because a pydantic round trip per request costs more
than the model run for small tabular models; when the hand check fails, the same document is
validated with pydantic so the client gets a precise message.

Tensors travel as JSON (``data`` flat or nested, row-major) or, with the binary tensor data
extension, as raw little-endian bytes after a JSON header whose length is given by the
``Inference-Header-Content-Length`` HTTP header. BYTES elements in binary form are each
prefixed by a 4-byte little-endian length.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from roost_serving import limits as checks
from roost_serving.errors import BadRequestError as BadRequestError
from roost_serving.errors import NotFoundError as NotFoundError
from roost_serving.errors import NotReadyError as NotReadyError
from roost_serving.errors import PayloadTooLargeError as PayloadTooLargeError
from roost_serving.errors import RoostError as RoostError
from roost_serving.limits import Limits

DEFAULT_LIMITS = Limits()

PLATFORM = "onnx_onnxv1"
HEADER_LENGTH = "inference-header-content-length"
"""HTTP header (lower-case, as ASGI delivers it) giving the JSON header's length in bytes."""

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""V2 datatype -> numpy dtype of the array handed to the model (BYTES: object array of str)."""

_LE_DTYPES = {name: dt.newbyteorder("<") for name, dt in DTYPES.items() if name != "BYTES"}
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


# --- KServe v2 data models ------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class RequestInput(_Model):
    """One input tensor of an inference request."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Model):
    """One requested output (and whether it should come back as binary data)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Model):
    """``POST /v2/models/{name}[/versions/{v}]/infer`` body (JSON part)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Model):
    """One output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Model):
    """Inference response (JSON part)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Model):
    """Name, datatype and shape (``-1`` for dynamic dimensions) of a model input or output."""

    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(_Model):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(_Model):
    """``GET /v2/models/{name}[/versions/{v}]``."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ErrorResponse(_Model):
    """Body of every error response."""

    error: str


# --- decoded forms used by the data plane ---------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol sees it: ``-1`` marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> MetadataTensor:
        """The V2 metadata form of this tensor."""
        return MetadataTensor(name=self.name, datatype=self.datatype, shape=list(self.shape))


@dataclass
class DecodedRequest:
    """An inference request with its tensors decoded into numpy arrays."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    """Names of the outputs asked for, in order; ``None`` means all."""
    binary_outputs: set[str] = field(default_factory=set)
    """Outputs to return as binary data."""
    binary_default: bool = False
    """Return every output as binary data unless it says otherwise."""


def _validation_message(obj: Any) -> str:
    """Validate ``obj`` with pydantic to explain why the fast check rejected it."""
    try:
        InferenceRequest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return f"invalid inference request: {where}: {first['msg']}"
    return "invalid inference request"


def _flag(params: Any, key: str) -> bool:
    return isinstance(params, dict) and params.get(key) is True


def _binary_size(params: Any, name: str) -> int | None:
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size < 0:
        raise BadRequestError(f"input {name!r}: binary_data_size must be a non-negative integer")
    return size


def _decode_json_data(
    name: str, datatype: str, shape: list[int], data: Any, count: int
) -> np.ndarray:
    """Turn JSON ``data`` (flat or nested, row-major) into an array of the given shape."""
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).ravel() if data else np.empty(0, dtype=object)
        if flat.size != count:
            raise BadRequestError(_count_message(name, shape, count, flat.size))
        for i, item in enumerate(flat):
            if isinstance(item, bytes):
                flat[i] = item.decode("utf-8", "replace")
            elif not isinstance(item, str):
                raise BadRequestError(f"input {name!r}: BYTES data must be strings, got {item!r}")
        return flat.reshape(shape)
    target = DTYPES[datatype]
    try:
        raw = _as_array(data)
    except ValueError:
        raise BadRequestError(
            f"input {name!r}: data is ragged; nested lists must all have the same length"
        ) from None
    if raw.size != count:
        raise BadRequestError(_count_message(name, shape, count, raw.size))
    kind = raw.dtype.kind
    if raw.size == 0:
        return np.empty(shape, dtype=target)
    if target.kind == "b":
        if kind != "b":
            raise BadRequestError(f"input {name!r}: BOOL data must be true/false")
    elif target.kind in "iu":
        if kind not in "iu":
            # Integers beyond int64 (uint64's upper half) make numpy fall back to float64 or
            # object; only exact Python ints are accepted, converted without rounding.
            return _exact_integers(name, datatype, shape, np.array(data, dtype=object).ravel())
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequestError(
                f"input {name!r}: value out of range for {datatype} ({info.min}..{info.max})"
            )
    elif kind not in "iuf":
        raise BadRequestError(f"input {name!r}: {datatype} data must be numbers")
    return raw.astype(target, copy=False).reshape(shape)


_SLICE = 2048


def _as_array(data: list[Any]) -> np.ndarray:
    """``np.asarray(data)``, a slice of rows at a time for long lists.

    Converting a list of millions of numbers is one C call that holds the GIL for hundreds of
    milliseconds; slices give the event loop (health probes) a turn in between.
    """
    if len(data) <= _SLICE:
        return np.asarray(data)
    parts = [np.asarray(data[i : i + _SLICE]) for i in range(0, len(data), _SLICE)]
    if len({part.shape[1:] for part in parts}) != 1:
        raise ValueError("ragged")
    return np.concatenate(parts)


def _exact_integers(name: str, datatype: str, shape: list[int], flat: np.ndarray) -> np.ndarray:
    if not all(type(item) is int for item in flat):
        raise BadRequestError(f"input {name!r}: {datatype} data must be integers")
    try:
        return np.array(flat.tolist(), dtype=DTYPES[datatype]).reshape(shape)
    except OverflowError:
        info = np.iinfo(DTYPES[datatype])
        raise BadRequestError(
            f"input {name!r}: value out of range for {datatype} ({info.min}..{info.max})"
        ) from None


def _count_message(name: str, shape: list[int], want: int, got: int) -> str:
    return (
        f"input {name!r}: shape {shape} needs {want} elements but data has {got}; "
        "make the shape match the data"
    )


def _decode_binary(
    name: str, datatype: str, shape: list[int], chunk: bytes, count: int
) -> np.ndarray:
    """Decode one input's raw little-endian bytes."""
    if datatype == "BYTES":
        items: list[str] = []
        offset = 0
        while offset < len(chunk):
            if offset + 4 > len(chunk):
                raise BadRequestError(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", chunk, offset)
            offset += 4
            if offset + length > len(chunk):
                raise BadRequestError(f"input {name!r}: BYTES element runs past binary_data_size")
            items.append(chunk[offset : offset + length].decode("utf-8", "replace"))
            offset += length
        if len(items) != count:
            raise BadRequestError(_count_message(name, shape, count, len(items)))
        return np.array(items, dtype=object).reshape(shape)
    dtype = _LE_DTYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise BadRequestError(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes "
            f"but binary_data_size is {len(chunk)}"
        )
    array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise BadRequestError(f"input {name!r}: binary BOOL elements must be 0 or 1")
    # Native byte order (a no-op on little-endian hosts) and writable for onnxruntime.
    return array.astype(DTYPES[datatype])


def decode_request(
    body: bytes, header_length: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> DecodedRequest:
    """Decode an inference request body; raise :class:`BadRequestError` saying what to fix.

    ``header_length`` is the ``Inference-Header-Content-Length`` value when the binary
    extension is used: the first ``header_length`` bytes are JSON, the rest tensor data.
    Shapes, element counts, input counts and repeated outputs are checked against ``limits``.
    """
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length} does not fit a body of "
                f"{len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        obj = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequestError(_validation_message(obj))
    inputs_obj = obj.get("inputs")
    if not isinstance(inputs_obj, list) or not inputs_obj:
        raise BadRequestError(
            _validation_message(obj) if not isinstance(inputs_obj, list) else "no inputs given"
        )
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError(_validation_message(obj))
    params = obj.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequestError(_validation_message(obj))
    checks.check_input_count(len(inputs_obj), limits)
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    total = 0
    for item in inputs_obj:
        if not isinstance(item, dict):
            raise BadRequestError(_validation_message(obj))
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        if (
            not isinstance(name, str)
            or not isinstance(shape, list)
            or not all(type(d) is int for d in shape)
            or not isinstance(datatype, str)
        ):
            raise BadRequestError(_validation_message(obj))
        if datatype not in DTYPES:
            raise BadRequestError(
                f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(DTYPES)}"
            )
        if name in inputs:
            raise BadRequestError(f"input {name!r} is given twice")
        count = checks.check_shape(name, shape, limits)
        total += count
        checks.check_total_elements(total, limits)
        size = _binary_size(item.get("parameters"), name)
        if size is not None:
            if offset + size > len(binary):
                raise BadRequestError(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body"
                )
            inputs[name] = _decode_binary(
                name, datatype, shape, bytes(binary[offset : offset + size]), count
            )
            offset += size
        elif "data" not in item:
            raise BadRequestError(f"input {name!r} has neither data nor binary_data_size")
        else:
            inputs[name] = _decode_json_data(name, datatype, shape, item["data"], count)
    if offset != len(binary):
        raise BadRequestError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input's "
            "binary_data_size"
        )
    decoded = DecodedRequest(
        id=request_id,
        inputs=inputs,
        outputs=None,
        binary_default=_flag(params, "binary_data_output"),
    )
    outputs_obj = obj.get("outputs")
    if outputs_obj is not None:
        if not isinstance(outputs_obj, list):
            raise BadRequestError(_validation_message(obj))
        names: list[str] = []
        for out in outputs_obj:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequestError(_validation_message(obj))
            names.append(out["name"])
            out_params = out.get("parameters")
            if isinstance(out_params, dict) and "binary_data" in out_params:
                if out_params["binary_data"] is True:
                    decoded.binary_outputs.add(out["name"])
            elif decoded.binary_default:
                decoded.binary_outputs.add(out["name"])
        checks.check_output_names(names)
        decoded.outputs = names
    return decoded


InputIndex = Mapping[str, tuple[TensorSpec, np.dtype[Any]]]
"""A model's inputs by name, each with its numpy dtype: what :func:`check_inputs` reads."""


def index_inputs(signature: Sequence[TensorSpec]) -> InputIndex:
    """The :data:`InputIndex` of a model's inputs (built once, when the model loads)."""
    return {spec.name: (spec, DTYPES[spec.datatype]) for spec in signature}


def check_inputs(request: DecodedRequest, known: InputIndex) -> None:
    """Check decoded inputs against the model's inputs (:func:`index_inputs`): names,
    datatypes, ranks, fixed dims."""
    for name, array in request.inputs.items():
        entry = known.get(name)
        if entry is None:
            raise BadRequestError(
                f"unknown input {name!r}; the model's inputs are {', '.join(map(repr, known))}"
            )
        spec, expected = entry
        if array.dtype != expected and not (expected.kind == "O" and array.dtype.kind == "O"):
            given = next(k for k, v in DTYPES.items() if v == array.dtype)
            raise BadRequestError(
                f"input {name!r} has datatype {given} but the model expects {spec.datatype}"
            )
        if array.ndim != len(spec.shape) or not _dims_fit(spec.shape, array.shape):
            raise BadRequestError(
                f"input {name!r} has shape {list(array.shape)} but the model expects "
                f"{list(spec.shape)} (-1 is any size)"
            )
    if len(request.inputs) == len(known):
        return  # every given name is known (checked above), so none is missing
    missing = [name for name in known if name not in request.inputs]
    if missing:
        raise BadRequestError(
            f"missing input(s) {', '.join(map(repr, missing))}; the model needs all of them"
        )


def _dims_fit(want: tuple[int, ...], got: tuple[int, ...]) -> bool:
    # A loop, not all(<generator>): the generator costs more than the check on every request.
    for w, g in zip(want, got, strict=True):  # noqa: SIM110
        if w != -1 and w != g:
            return False
    return True


def check_outputs(request: DecodedRequest, signature: Sequence[TensorSpec]) -> None:
    """Reject requested outputs the model does not have."""
    if request.outputs is None:
        return
    known = {spec.name for spec in signature}
    for name in request.outputs:
        if name not in known:
            raise BadRequestError(
                f"unknown output {name!r}; the model's outputs are {', '.join(map(repr, known))}"
            )


_DATATYPES = {dtype: name for name, dtype in DTYPES.items() if name != "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (object and unicode arrays are BYTES)."""
    name = _DATATYPES.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in "OUS":
        return "BYTES"
    raise RoostError(f"output datatype {array.dtype} has no Open Inference Protocol equivalent")


def _bytes_elements(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _json_data(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in array.ravel()
        ]
    # orjson serialises contiguous numpy arrays natively, far faster than tolist().
    return np.ascontiguousarray(array).ravel()


def encode_response(
    model_name: str,
    model_version: str | None,
    request: DecodedRequest,
    outputs: Mapping[str, np.ndarray],
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON header length when binary data follows.

    A response larger than ``limits.max_response_bytes`` is refused (400) before it is built.
    """
    names = request.outputs if request.outputs is not None else list(outputs)
    binary_default = request.binary_default and request.outputs is None
    planned = [(outputs[n], binary_default or n in request.binary_outputs) for n in names]
    checks.check_response_size(checks.response_size(planned), limits)
    json_outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in names:
        array = outputs[name]
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary_default or name in request.binary_outputs:
            if datatype == "BYTES":
                chunk = _bytes_elements(array)
            else:
                chunk = np.ascontiguousarray(array, dtype=_LE_DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _json_data(array, datatype)
        json_outputs.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = json_outputs
    header = orjson.dumps(document, option=_ORJSON_OPTS)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def error_body(message: str) -> bytes:
    """The JSON body of an error response."""
    return orjson.dumps({"error": message})
