"""Open Inference Protocol messages over gRPC <-> the data plane's decoded requests.

The gRPC counterpart of the JSON codec in :mod:`roost_serving.protocol`, and built on it: a
``ModelInferRequest`` becomes the same :class:`~roost_serving.protocol.DecodedRequest` a REST
body becomes, through the same element-count and binary decoders (``raw_input_contents`` is
byte for byte the REST binary extension's tensor data), so every limit and check of the REST
path applies to gRPC unchanged, and :func:`~roost_serving.protocol.check_inputs` /
``check_outputs`` run on the result in the data plane for both protocols.

Errors are the protocol's :class:`~roost_serving.protocol.RoostError`; the gRPC server maps
their HTTP status to a gRPC status code (:data:`GRPC_CODES`). No grpc, no onnxruntime here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from roost_serving.limits import (
    Limits,
    check_input_count,
    check_output_names,
    check_response_size,
    check_shape,
    check_total_elements,
    response_size,
)
from roost_serving.proto import open_inference_pb2 as pb
from roost_serving.protocol import (
    _LE_DTYPES,
    DEFAULT_LIMITS,
    DTYPES,
    BadRequestError,
    DecodedRequest,
    TensorSpec,
    _bytes_elements,
    _count_message,
    _decode_binary,
    datatype_of,
)

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""V2 datatype -> the ``InferTensorContents`` field carrying it (FP16 travels raw only)."""

GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""HTTP status of a :class:`RoostError` -> name of the ``grpc.StatusCode`` answering it."""


def grpc_code_name(http_status: int) -> str:
    """The gRPC status code name for an error's HTTP status (unknown 4xx: invalid argument)."""
    name = GRPC_CODES.get(http_status)
    if name is not None:
        return name
    return "INVALID_ARGUMENT" if 400 <= http_status < 500 else "INTERNAL"


def _shape(name: str, dims: Sequence[int], limits: Limits) -> list[int]:
    shape = list(dims)
    check_shape(name, shape, limits)  # the REST path's limits: dimensions, elements
    return shape


def _decode_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    """One input's typed contents, checked as the REST path checks JSON ``data``."""
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequestError(
            f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    count = math.prod(shape)  # within the limits: checked by _shape
    if len(values) != count:
        raise BadRequestError(_count_message(name, shape, count, len(values)))
    if datatype == "BYTES":
        items = [value.decode("utf-8", "replace") for value in values]
        return np.array(items, dtype=object).reshape(shape)
    target = DTYPES[datatype]
    wide = np.array(values, dtype=np.float64 if target.kind == "f" else None)
    if count and target.kind in "iu":
        info = np.iinfo(target)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise BadRequestError(
                f"input {name!r}: value out of range for {datatype} ({info.min}..{info.max})"
            )
    return wide.astype(target, copy=False).reshape(shape)


def _has_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bool:
    return tensor.HasField("contents") and tensor.contents.ByteSize() > 0


def _decode_inputs(request: pb.ModelInferRequest, limits: Limits) -> dict[str, np.ndarray]:
    check_input_count(len(request.inputs), limits)
    check_total_elements(
        sum(check_shape(t.name, list(t.shape), limits) for t in request.inputs), limits
    )
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the order of inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        if datatype not in DTYPES:
            raise BadRequestError(
                f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(DTYPES)}"
            )
        if name in inputs:
            raise BadRequestError(f"input {name!r} is given twice")
        shape = _shape(name, tensor.shape, limits)
        if raw:
            if _has_contents(tensor):
                raise BadRequestError(
                    f"input {name!r} has contents although raw_input_contents is used; "
                    "use one or the other for every input"
                )
            inputs[name] = _decode_binary(name, datatype, shape, raw[index], math.prod(shape))
        else:
            inputs[name] = _decode_contents(tensor, shape)
    return inputs


def decode_infer_request(
    request: pb.ModelInferRequest, limits: Limits = DEFAULT_LIMITS
) -> DecodedRequest:
    """Decode a ``ModelInferRequest``; raise :class:`BadRequestError` saying what to fix.

    The REST path's limits apply: shapes, element and input counts, repeated outputs."""
    if not request.inputs:
        raise BadRequestError("no inputs given")
    outputs = [out.name for out in request.outputs] if request.outputs else None
    if outputs is not None:
        check_output_names(outputs)
    return DecodedRequest(
        id=request.id or None,
        inputs=_decode_inputs(request, limits),
        outputs=outputs,
        # The typed/raw choice of the response follows the request's (see encode).
        binary_default=bool(request.raw_input_contents),
    )


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: DecodedRequest,
    outputs: Mapping[str, np.ndarray],
    limits: Limits = DEFAULT_LIMITS,
) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` for a request's outputs.

    Outputs travel in ``raw_output_contents`` when the request sent raw inputs (what Triton's
    and KServe's clients do for numpy arrays) or when an output has no typed field (FP16);
    otherwise as typed contents, which grpcurl-style clients read directly.
    """
    names = request.outputs if request.outputs is not None else list(outputs)
    types = {name: datatype_of(outputs[name]) for name in names}
    raw = request.binary_default or any(t not in CONTENTS_FIELD for t in types.values())
    check_response_size(response_size((outputs[name], True) for name in names), limits)
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    for name in names:
        array, datatype = outputs[name], types[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            if datatype == "BYTES":
                response.raw_output_contents.append(_bytes_elements(array))
            else:
                le = _LE_DTYPES[datatype]
                response.raw_output_contents.append(np.ascontiguousarray(array, le).tobytes())
        else:
            _fill_contents(tensor.contents, array, datatype)
    return response


def _fill_contents(contents: pb.InferTensorContents, array: np.ndarray, datatype: str) -> None:
    values: Any = getattr(contents, CONTENTS_FIELD[datatype])
    flat = array.ravel()
    if datatype == "BYTES":
        values.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat)
    else:
        values.extend(flat.tolist())


def tensor_metadata(
    specs: Sequence[TensorSpec],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    """The metadata form of a model's inputs or outputs."""
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
        )
        for spec in specs
    ]
