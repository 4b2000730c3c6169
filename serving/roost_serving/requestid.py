"""Request ids: every inference has one, whichever protocol carried it.

The id is, in order: the Open Inference Protocol request's ``id`` field, else the
``X-Request-Id`` header (gRPC: the ``x-request-id`` metadata key), else a generated uuid4 hex.
It comes back in the response body's ``id`` and the ``X-Request-Id`` response header (gRPC: the
response message's ``id`` and trailing metadata), is written into the server's log lines about
the request, and is handed to code that runs after the model (:class:`Inference`), so shadow
comparisons, the inference log and feedback can join on it.

Ids come from clients and go back out in a header, so they are bounded: at most
:data:`MAX_LENGTH` characters of printable ASCII without surrounding blanks. Anything else is a
400 with a message that says so, never a header the server cannot send or a log line a client
can forge (no control characters, no newlines).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roost_serving.protocol import BadRequestError

if TYPE_CHECKING:
    import numpy as np

    from roost_serving.protocol import DecodedRequest

HEADER = "x-request-id"
"""The request and response header (lower case, as ASGI and gRPC metadata carry it)."""
HEADER_BYTES = HEADER.encode()
MAX_LENGTH = 128
"""Longest id accepted from a client; a uuid4 hex is 32 characters."""

SOURCE_HEADER = b"roost-source"
"""``Roost-Source: validation`` marks the operator's own validation and warm-up requests."""
SOURCES = ("client", "validation")
"""The ``source`` label's values: anything else a client sends counts as ``client``."""


def new_id() -> str:
    """A fresh id: 32 lower-case hex digits of a random uuid4."""
    return uuid.uuid4().hex


def problem(value: str) -> str | None:
    """Why ``value`` cannot be a request id, or None when it can."""
    if not value:
        return "is empty"
    if len(value) > MAX_LENGTH:
        return f"has {len(value)} characters; at most {MAX_LENGTH} are accepted"
    if not value.isascii() or not value.isprintable():
        return "must be printable ASCII"
    if value != value.strip():
        return "must not start or end with a blank"
    return None


def check(value: str, where: str) -> str:
    """``value`` if it is a valid id; else the 400 naming ``where`` it came from."""
    reason = problem(value)
    if reason is not None:
        raise BadRequestError(f"request id in {where} {reason}")
    return value


def from_header(raw: bytes) -> str | None:
    """The id from an ``X-Request-Id`` header value (None when blank); 400 when invalid."""
    if len(raw) > MAX_LENGTH:  # before decoding anything large
        raise BadRequestError(
            f"request id in the X-Request-Id header has {len(raw)} characters; at most "
            f"{MAX_LENGTH} are accepted"
        )
    text = raw.decode("latin-1").strip()
    return check(text, "the X-Request-Id header") if text else None


def resolve(body_id: str | None, header_id: str | None) -> str:
    """The request's id: the body's, else the header's, else a fresh one (body id checked)."""
    if body_id:
        return check(body_id, "the request body")
    return header_id or new_id()


def source_of(raw: bytes | None) -> str:
    """The ``source`` label for a ``Roost-Source`` header value (absent or unknown: client)."""
    if raw is not None and raw.strip().lower() == b"validation":
        return "validation"
    return "client"


@dataclass
class Inference:
    """One inference after the model ran: what code downstream of the model sees.

    ``request_id`` is always set (see :func:`resolve`); ``source`` is ``client`` for user
    traffic and ``validation`` for the operator's validation and warm-up requests, which
    monitors and analysis leave out.
    """

    request_id: str
    request: DecodedRequest
    outputs: dict[str, np.ndarray]
    source: str = "client"
