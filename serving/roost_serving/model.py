"""Loading an ONNX model (fsspec, sha256 pin) into an onnxruntime session, and running it.

Only ONNX is ever loaded: the bytes go straight to onnxruntime, which parses a protobuf and
nothing else, so a model URI can never execute code (unlike pickle/joblib files).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import onnxruntime as ort

from roost_serving.fetch import FetchError, FetchPolicy, fetch_bytes
from roost_serving.protocol import (
    PLATFORM,
    InputIndex,
    RoostError,
    TensorSpec,
    index_inputs,
)
from roost_serving.redact import redact_uri

log = logging.getLogger("roost.model")

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class ModelLoadError(RoostError):
    """The model cannot be fetched, does not match its pin, or is not a loadable ONNX graph."""

    status_code = 500


class InferenceError(RoostError):
    """onnxruntime rejected the inputs (400) or failed while running (500)."""


def read_uri(uri: str, policy: FetchPolicy | None = None) -> bytes:
    """Read a whole file from a path or URI, with timeouts and retries (see fetch.py)."""
    try:
        return fetch_bytes(uri, policy or FetchPolicy(), "model")
    except FetchError as exc:
        raise ModelLoadError(exc.message) from None


def _dims(shape: Any) -> tuple[int, ...]:
    # Symbolic (str) and unknown (None) dimensions are dynamic: -1 in the protocol.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (shape or []))


def _spec(arg: Any, role: str) -> TensorSpec | None:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        if role == "input":
            raise ModelLoadError(
                f"model input {arg.name!r} has type {arg.type}, which the Open Inference "
                "Protocol cannot carry; export the model with tensor inputs"
            )
        return None
    return TensorSpec(name=arg.name, datatype=datatype, shape=_dims(arg.shape))


@dataclass(frozen=True)
class LoadedModel:
    """An onnxruntime session plus what the protocol needs to know about it."""

    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    """Tensor outputs only: sequence/map outputs (e.g. skl2onnx ZipMap) have no V2 form."""
    sha256: str
    uri: str
    """Where the model came from, redacted: safe for logs and metric labels."""
    load_seconds: float
    platform: str = PLATFORM

    @cached_property
    def input_index(self) -> InputIndex:
        """:attr:`inputs` by name with their dtypes, which every request is checked against."""
        return index_inputs(self.inputs)

    @cached_property
    def output_names(self) -> list[str]:
        """Names of :attr:`outputs`, in order: what every run asks onnxruntime for."""
        return [spec.name for spec in self.outputs]

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic first (batch) dimension."""
        specs = self.inputs + self.outputs
        return all(spec.shape and spec.shape[0] == -1 for spec in specs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; onnxruntime's complaints about the inputs become a 400."""
        names = self.output_names
        try:
            results = self.session.run(names, dict(inputs))
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError) as exc:
            error = InferenceError(f"the model rejected the inputs: {_short(exc)}")
            error.status_code = 400
            raise error from None
        except Exception as exc:  # onnxruntime's runtime failures carry no common base type
            raise InferenceError(f"the model failed while running: {_short(exc)}") from None
        return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}


def _short(exc: BaseException) -> str:
    # onnxruntime messages start with "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ";
    # the part after that is what a client can act on.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit(" : ", 1)[-1][:500]


def load_model(
    uri: str, sha256: str | None = None, threads: int = 1, policy: FetchPolicy | None = None
) -> LoadedModel:
    """Fetch, verify and load an ONNX model; raise :class:`ModelLoadError` saying why not.

    ``uri`` is only ever shown redacted (no userinfo, no signed-URL query values).
    """
    started = time.perf_counter()
    data = read_uri(uri, policy)
    shown = redact_uri(uri)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ModelLoadError(
            f"sha256 of {shown} is {digest} but {sha256} was pinned; refusing to serve a model "
            "that is not the one pinned (update the pin or the model)"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One graph runs at a time (the batcher serialises runs), so inter-op threads only
    # compete with the event loop for the CPU.
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad graph
        raise ModelLoadError(f"{shown} is not a loadable ONNX model: {_short(exc)}") from None
    inputs = tuple(s for s in (_spec(a, "input") for a in session.get_inputs()) if s)
    outputs = tuple(s for s in (_spec(a, "output") for a in session.get_outputs()) if s)
    skipped = [a.name for a in session.get_outputs() if a.type not in _ORT_TYPES]
    if skipped:
        log.warning("not serving non-tensor outputs %s (no V2 representation)", skipped)
    if not outputs:
        raise ModelLoadError(f"{shown} has no tensor outputs to serve")
    return LoadedModel(
        session=session,
        inputs=inputs,
        outputs=outputs,
        sha256=digest,
        uri=shown,
        load_seconds=time.perf_counter() - started,
    )
