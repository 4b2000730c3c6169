"""Every limit a client can hit, in one place: shapes, sizes, headers, outputs, deadlines.

:class:`Limits` holds the numbers (built from the server's settings); the ``check_*`` and
``parse_*`` functions raise the :class:`~roost_serving.protocol.RoostError` subclass the client
sees (400, 413, 503, 504), with a message that names the limit and how to stay inside it. The
REST decoder calls them, and so can any other front end (gRPC), so every transport enforces the
same rules with the same words. No onnxruntime, no HTTP framework.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from roost_serving.errors import BadRequestError, RoostError

MAX_DIMS = 32
"""Most dimensions a tensor may have (numpy's hard limit is 64; no tabular model needs 32)."""

MAX_HEADER_LENGTH_DIGITS = 19
"""``Inference-Header-Content-Length`` is a byte count: more digits than int64 has is an attack."""

DEADLINE_HEADER = b"roost-request-timeout-ms"
"""Client deadline header (milliseconds): the server gives up and answers 504 when it passes."""

RETRY_AFTER_SECONDS = 1
"""``Retry-After`` on a shed request: one second lets a queue of a few hundred requests drain."""


class ShedError(RoostError):
    """Overload: the queue is full (503 + ``Retry-After``) or the deadline passed (504)."""

    status_code = 503

    def __init__(self, message: str, reason: str, status_code: int = 503) -> None:
        """``reason`` labels ``roost_requests_shed_total`` (``queue_full``, ``deadline``, ...)."""
        super().__init__(message)
        self.reason = reason
        self.status_code = status_code


@dataclass(frozen=True)
class Limits:
    """Per-request and per-process bounds; defaults are the server's defaults."""

    max_elements: int = 16 * 1024 * 1024
    """Most tensor elements in one request, all inputs together (and largest single dimension)."""
    max_inputs: int = 1024
    """Most input tensors in one request."""
    max_response_bytes: int = 128 * 1024 * 1024
    """Largest response body the server will build; larger ones get 400 before encoding."""
    max_queue: int = 256
    """Most requests waiting for the model; beyond it, 503 with ``Retry-After`` at once."""
    request_timeout_s: float = 30.0
    """Longest a request may take inside the server (clients may ask for less); then 504."""


def check_shape(name: str, shape: Sequence[int], limits: Limits) -> int:
    """Validate a tensor shape from a request; return its element count."""
    if len(shape) > MAX_DIMS:
        raise BadRequestError(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed"
        )
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadRequestError(f"input {name!r}: shape {list(shape)} has a negative dimension")
        if dim > limits.max_elements:
            # Also catches zero-size tensors like [0, 2**62] that numpy cannot lay out.
            raise BadRequestError(
                f"input {name!r}: dimension {dim} exceeds the limit of {limits.max_elements} "
                "elements per request (--max-elements)"
            )
        count *= dim
    if count > limits.max_elements:
        raise BadRequestError(
            f"input {name!r}: shape {list(shape)} has {count} elements; at most "
            f"{limits.max_elements} are allowed per request (--max-elements)"
        )
    return count


def check_total_elements(total: int, limits: Limits) -> None:
    """All inputs of one request together stay within ``max_elements``."""
    if total > limits.max_elements:
        raise BadRequestError(
            f"the request's inputs have {total} elements together; at most "
            f"{limits.max_elements} are allowed per request (--max-elements)"
        )


def check_input_count(count: int, limits: Limits) -> None:
    """Bound the number of input tensors before decoding any of them."""
    if count > limits.max_inputs:
        raise BadRequestError(
            f"the request has {count} inputs; at most {limits.max_inputs} are allowed"
        )


def check_output_names(names: Sequence[str]) -> None:
    """Each output may be asked for once: repeats would multiply the response."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadRequestError(f"output {name!r} is requested twice; ask for each output once")
        seen.add(name)


# Upper bounds of one element's JSON text by item size (a float64 prints up to 24 characters).
_JSON_WIDTH = {1: 6, 2: 9, 4: 16, 8: 25}


def response_size(outputs: Iterable[tuple[np.ndarray, bool]]) -> int:
    """Bytes a response with these ``(array, as_binary)`` outputs takes, estimated from above."""
    total = 256
    for array, binary in outputs:
        if array.dtype.kind in "OUS":
            # BYTES: 4-byte length prefixes (binary) or quotes, commas and escapes (JSON).
            text = sum(len(str(item)) for item in array.ravel())
            total += text + 4 * array.size if binary else 6 * text + 3 * array.size
        else:
            width = array.dtype.itemsize if binary else _JSON_WIDTH.get(array.dtype.itemsize, 25)
            total += array.size * width + 64
    return total


def check_response_size(estimate: int, limits: Limits) -> None:
    """Refuse to build a response larger than ``max_response_bytes``."""
    if estimate > limits.max_response_bytes:
        raise BadRequestError(
            f"the response would be about {estimate} bytes, over the limit of "
            f"{limits.max_response_bytes} (--max-response-bytes); send fewer rows per request, "
            "ask for fewer outputs, or ask for binary outputs"
        )


def parse_header_length(value: bytes) -> int:
    """Parse ``Inference-Header-Content-Length``: a non-negative integer of bounded length."""
    if not value.isdigit() or len(value) > MAX_HEADER_LENGTH_DIGITS:
        raise BadRequestError(
            "Inference-Header-Content-Length must be a non-negative integer of at most "
            f"{MAX_HEADER_LENGTH_DIGITS} digits"
        )
    return int(value)


def parse_deadline(value: bytes | None, limits: Limits) -> float:
    """Seconds the request may take: the client's deadline header, capped by the server's."""
    if value is None:
        return limits.request_timeout_s
    if not value.isdigit() or len(value) > 12:
        raise BadRequestError(
            "Roost-Request-Timeout-Ms must be a positive integer number of milliseconds"
        )
    millis = int(value)
    if millis == 0:
        raise BadRequestError("Roost-Request-Timeout-Ms must be at least 1")
    return min(millis / 1000.0, limits.request_timeout_s)


def queue_full(queued: int, limits: Limits) -> ShedError:
    """The 503 answered when ``queued`` requests already wait for the model."""
    return ShedError(
        f"server overloaded: {queued} requests already wait for the model (--max-queue "
        f"{limits.max_queue}); retry after {RETRY_AFTER_SECONDS} s or add replicas",
        "queue_full",
    )


def deadline_exceeded(seconds: float) -> ShedError:
    """The 504 answered when a request's deadline passes before its result is ready."""
    return ShedError(
        f"deadline of {seconds:g} s exceeded before the model could answer "
        "(--request-timeout or Roost-Request-Timeout-Ms)",
        "deadline",
        status_code=504,
    )
