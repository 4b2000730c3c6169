"""The infer route's fast path: a thin ASGI layer in front of FastAPI (roost_serving.app).

``POST /v2/models/{name}[/versions/{v}]/infer`` carries all the traffic, and FastAPI's routing,
dependency injection and response classes cost several times a small model's run, so this layer
answers it straight from the data plane: admission control (``--max-queue``), the request
deadline, the body limit, the OIP error body for every failure, the request metrics, and
``Connection: close`` while the server drains. Everything else goes on to FastAPI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from roost_serving.feedback import FORWARDED_HEADER
from roost_serving.limits import (
    DEADLINE_HEADER,
    RETRY_AFTER_SECONDS,
    ShedError,
    deadline_exceeded,
    parse_deadline,
    parse_header_length,
)
from roost_serving.protocol import (
    HEADER_LENGTH,
    BadRequestError,
    PayloadTooLargeError,
    RoostError,
    error_body,
)
from roost_serving.requestid import HEADER_BYTES, SOURCE_HEADER, from_header, new_id, source_of

if TYPE_CHECKING:  # app imports this module: the type only, no import cycle at run time
    from roost_serving.app import DataPlane
    from roost_serving.metrics import ServingMetrics

log = logging.getLogger("roost.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
HEADER_LENGTH_BYTES = HEADER_LENGTH.encode()
_CLOSE = (b"connection", b"close")


async def _method_not_allowed(send: Send, method: str, what: str = "infer") -> None:
    """405 for an infer route asked with another method, with ``Allow`` and the OIP body."""
    body = error_body(f"method {method} is not allowed here; {what} requests use POST")
    headers = [
        (b"content-type", JSON_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"allow", b"POST"),
    ]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def parse_infer_path(path: str) -> tuple[str, str | None] | None:
    """The model name and version in an infer route's path (None: not an infer route)."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path.split("/")
    # "", "v2", "models", name, "infer"  |  ..., name, "versions", v, "infer"
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


class InferenceFastPath:
    """ASGI layer answering ``POST /v2/models/.../infer`` straight from the data plane."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        """Wrap ``app`` (FastAPI's stack), which answers everything else."""
        self.app = app
        self.plane = plane
        self.max_body = plane.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection scope."""
        if scope["type"] == "http" and self.plane.shutting_down:
            send = _closing(send)
        if scope["type"] == "http":
            path: str = scope["path"]
            target = parse_infer_path(path)
            if target is not None:
                if scope["method"] == "POST":
                    await self._infer(scope, receive, send, *target)
                else:
                    await _method_not_allowed(send, scope["method"])
                return
            if path.startswith("/v2/models/") and path.endswith("/feedback"):
                parts = path.split("/")
                if len(parts) == 5:
                    if scope["method"] == "POST":
                        await self._feedback(scope, receive, send, parts[3])
                    else:
                        await _method_not_allowed(send, scope["method"], "feedback")
                    return
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        plane, metrics = self.plane, self.plane.metrics
        started = time.perf_counter()
        content_type = JSON_TYPE
        extra: list[tuple[bytes, bytes]] = []
        admitted = False
        headers = request_headers(scope["headers"])
        source = source_of(headers.source)
        # The id an error answer carries: the header's when it is valid, else a fresh one.
        request_id = ""
        try:
            header_id = from_header(headers.request_id) if headers.request_id else None
            request_id = header_id or ""
            plane.admit()
            admitted = True
            plane.inflight += 1
            header_length = (
                parse_header_length(headers.length) if headers.length is not None else None
            )
            seconds = parse_deadline(headers.deadline, plane.limits)
            try:
                async with asyncio.timeout(seconds):
                    body = await self._read_body(scope, receive)
                    payload, out_length, request_id = await plane.infer(
                        name, version, body, header_length, header_id, source
                    )
            except TimeoutError:
                raise deadline_exceeded(seconds) from None
            status = 200
            if out_length is not None:
                content_type = BINARY_TYPE
                extra.append((HEADER_LENGTH_BYTES, str(out_length).encode()))
        except Exception as exc:  # RoostError's own answer; anything else a logged 500
            status, payload, request_id = error_answer(exc, metrics, request_id, extra)
        finally:
            if admitted:
                plane.inflight -= 1
        response_headers = answer_headers(status, payload, request_id, source, content_type, extra)
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        metrics.count_request(status, source=source)
        metrics.observe_duration(time.perf_counter() - started, source=source)

    async def _feedback(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """Ground truth for earlier predictions (roost_serving.feedback): same body limit and
        deadline as inference, the OIP error body on bad input."""
        plane = self.plane
        forwarded = any(k == FORWARDED_HEADER for k, _ in scope["headers"])
        try:
            plane.loaded_model(name, None)
            seconds = parse_deadline(request_headers(scope["headers"]).deadline, plane.limits)
            try:
                async with asyncio.timeout(seconds):
                    body = await self._read_body(scope, receive)
                    payload = await plane.truth.feedback.handle(body, forwarded)
            except TimeoutError:
                raise deadline_exceeded(seconds) from None
            status = 200
        except RoostError as exc:
            status, payload = exc.status_code, error_body(exc.message)
        except Exception as exc:  # never a stack trace in the body, always a logged one
            log.exception("feedback failed")
            status, payload = 500, error_body(f"internal error: {type(exc).__name__}")
        headers = [(b"content-type", JSON_TYPE), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise PayloadTooLargeError(_too_large(int(value), self.max_body))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequestError("client disconnected before sending the whole body")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(_too_large(size, self.max_body))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes exceeds the limit of {limit} bytes; send fewer rows "
        "per request or raise --max-body-bytes / ROOST_MAX_BODY_BYTES"
    )


class _Headers:
    """The request headers the infer route reads, raw (parsed where they are used)."""

    __slots__ = ("deadline", "length", "request_id", "source")

    def __init__(self) -> None:
        self.length: bytes | None = None
        self.deadline: bytes | None = None
        self.request_id: bytes | None = None
        self.source: bytes | None = None


def request_headers(headers: Iterable[tuple[bytes, bytes]]) -> _Headers:
    """``Inference-Header-Content-Length``, the deadline, ``X-Request-Id``, ``Roost-Source``."""
    found = _Headers()
    for key, value in headers:
        if key == HEADER_LENGTH_BYTES:
            found.length = value
        elif key == DEADLINE_HEADER:
            found.deadline = value
        elif key == HEADER_BYTES:
            found.request_id = value
        elif key == SOURCE_HEADER:
            found.source = value
    return found


def error_answer(
    exc: Exception, metrics: ServingMetrics, request_id: str, extra: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, str]:
    """The status, OIP error body and request id that answer ``exc``; ``extra`` gets the
    headers it adds (``Retry-After`` on a 503 shed). Anything not a RoostError is a 500
    whose body never carries a stack trace, and whose log line always does."""
    if isinstance(exc, RoostError):
        if isinstance(exc, ShedError):
            metrics.count_shed(exc.reason)
            if exc.status_code == 503:
                extra.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
        return exc.status_code, error_body(exc.message), request_id
    request_id = request_id or new_id()
    log.error("inference failed (request id %s)", request_id, exc_info=exc)
    return 500, error_body(f"internal error: {type(exc).__name__}"), request_id


def answer_headers(
    status: int,
    payload: bytes,
    request_id: str,
    source: str,
    content_type: bytes = JSON_TYPE,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> list[tuple[bytes, bytes]]:
    """An infer answer's headers; the request id is a fresh one when none is known yet."""
    request_id = request_id or new_id()
    if log.isEnabledFor(logging.DEBUG):  # one line per request: off unless asked for
        log.debug("inference %s (%s) answered %d", request_id, source, status)
    return [
        (b"content-type", content_type),
        (b"content-length", str(len(payload)).encode()),
        (HEADER_BYTES, request_id.encode()),
        *extra,
    ]


def _closing(send: Send) -> Send:
    """``send`` that adds ``Connection: close`` to the response: the server is draining."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await send(message)

    return closing_send
