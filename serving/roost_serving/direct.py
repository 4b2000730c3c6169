"""The infer route answered from the connection's own parser callbacks, without ASGI.

A one-row request through ASGI costs a task, a scope, a ``receive`` and two ``send``
coroutines, a deadline context and a turn of the loop in the batcher: together more than the
model's run. When a request's head and whole body arrive in one read (what every client that
writes a small request at once does) and the model runs on the event loop, the connection
(:mod:`roost_serving.connection`) hands it here instead:

1. :meth:`DirectInfer.take` parses the headers, admits it (``--max-queue``), decodes and
   checks it at once, and answers any refusal at once;
2. a decoded request waits for the end of the loop's current turn, so requests that arrived
   together on several connections run as one batch (:meth:`Batcher.run_together`); one
   ``call_soon`` per turn replaces a task, a future and a loop turn per request;
3. the answer is encoded and written, with the same headers, error bodies, metrics, inference
   log, shadow copy and deadline as the ASGI route (:mod:`roost_serving.fastpath`).

Everything else (slow models, large or chunked bodies, bodies that trickle in, validation
requests, pipelined requests behind an unanswered one) goes through ASGI as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from roost_serving.batching import INLINE_MAX_ELEMENTS, Tensors
from roost_serving.fastpath import (
    BINARY_TYPE,
    HEADER_LENGTH_BYTES,
    JSON_TYPE,
    answer_headers,
    error_answer,
    parse_infer_path,
    request_headers,
)
from roost_serving.limits import deadline_exceeded, parse_deadline, parse_header_length
from roost_serving.protocol import DecodedRequest, NotReadyError, RoostError, decode_request
from roost_serving.requestid import from_header, source_of

if TYPE_CHECKING:  # app imports this module: the type only, no import cycle at run time
    from roost_serving.app import DataPlane

log = logging.getLogger("roost.server")

Headers = list[tuple[bytes, bytes]]
Reply = Callable[[int, Headers, bytes, bool], None]
"""``reply(status, headers, body, close)`` writes one answer on the request's connection."""


@dataclass(slots=True)
class _Waiting:
    """A decoded request waiting for the end of the loop's turn to run."""

    request: DecodedRequest
    request_id: str
    name: str
    body: bytes
    header_length: int | None
    source: str
    started: float
    seconds: float
    held: list[DecodedRequest] | None  # a sampled request's inference-log holder
    reply: Reply
    timer: asyncio.TimerHandle | None = None  # its deadline while it waits in the queue


class DirectInfer:
    """Inference requests taken straight from a connection's parser (see the module doc)."""

    def __init__(self, plane: DataPlane, max_body_bytes: int) -> None:
        """Answer for ``plane``; bodies above ``max_body_bytes`` go through ASGI."""
        self.plane = plane
        self.max_body = max_body_bytes
        self.taken = 0
        """Requests taken so far (answered here rather than through ASGI)."""
        self._waiting: list[_Waiting] = []

    def route(self, url: bytes, length: int | None) -> tuple[str, str | None] | None:
        """The model name and version for a ``POST`` to ``url`` this path may answer, else None
        (a query string, an escaped path, no ``Content-Length`` or a large body)."""
        if length is None or length > self.max_body or b"%" in url:
            return None
        try:
            return parse_infer_path(url.decode("ascii"))
        except UnicodeDecodeError:
            return None

    def take(
        self, target: tuple[str, str | None], headers: Headers, body: bytes, reply: Reply
    ) -> bool:
        """Take one whole request; False leaves it to ASGI (nothing was done with it).

        A refusal (bad headers, a full queue, a bad body) is answered before this returns; a
        decoded request is answered at the end of the loop's turn.
        """
        plane = self.plane
        batcher = plane.batcher
        if batcher is not None and not batcher.inline:
            return False  # a slow model runs on the worker thread: the ASGI route awaits it
        found = request_headers(headers)
        source = source_of(found.source)
        if source == "validation":
            return False  # validation runs beside the batcher, on the codec thread
        self.taken += 1
        started = time.perf_counter()
        inference_log = plane.inference_log
        sampled = inference_log is not None and source == "client" and inference_log.sampled()
        held: list[DecodedRequest] | None = [] if sampled else None
        request_id = ""
        try:
            header_id = from_header(found.request_id) if found.request_id else None
            request_id = header_id or ""
            plane.admit()
            header_length = parse_header_length(found.length) if found.length is not None else None
            seconds = parse_deadline(found.deadline, plane.limits)
            model = plane.serving_model(*target)
            request = decode_request(body, header_length, plane.limits)
            request_id = plane.check(model, request, header_id, held)
        except Exception as exc:
            if held is not None and inference_log is not None and isinstance(exc, RoostError):
                inference_log.settle("rest", started, held, None, exc)
            self._refuse(reply, source, started, exc, request_id)
            return True
        plane.inflight += 1
        waiting = self._waiting
        item = _Waiting(
            request, request_id, target[0], body, header_length, source, started, seconds,
            held, reply,
        )  # fmt: skip
        waiting.append(item)
        if len(waiting) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        """Run everything decoded during the last turn: together on the loop when the batcher
        is free, else through its queue (a run on the worker thread is in progress)."""
        waiting, self._waiting = self._waiting, []
        batcher = self.plane.batcher
        if batcher is None:
            error = NotReadyError("the model is not loaded")
            for item in waiting:
                self._finish(item, error)
            return
        inputs = [item.request.inputs for item in waiting]
        elements = sum(a.size for each in inputs for a in each.values())
        if batcher.free() and batcher.inline and elements <= INLINE_MAX_ELEMENTS:
            results: list[Tensors | BaseException]
            try:
                results = batcher.run_together(inputs)
            except Exception as exc:  # every request of the turn is still answered (a 500)
                results = [exc] * len(waiting)
            for item, result in zip(waiting, results, strict=True):
                self._finish(item, result)
            return
        loop = asyncio.get_running_loop()
        for item, each in zip(waiting, inputs, strict=True):
            future = batcher.enqueue(each)
            # As on the ASGI route, a request whose deadline passes in the queue is answered
            # 504 then, and the batcher never runs it (its future is done).
            left = item.seconds - (time.perf_counter() - item.started)
            item.timer = loop.call_later(max(left, 0.0), future.cancel)
            future.add_done_callback(partial(self._ran, item))

    def _ran(self, item: _Waiting, future: asyncio.Future[Tensors]) -> None:
        if item.timer is not None:
            item.timer.cancel()
        if future.cancelled():
            self._finish(item, deadline_exceeded(item.seconds))
            return
        exc = future.exception()
        self._finish(item, exc if exc is not None else future.result())

    def _finish(self, item: _Waiting, result: Tensors | BaseException) -> None:
        """Answer one request that ran (or failed); never raises, so one request's failure
        cannot leave the others of its turn unanswered."""
        try:
            self._settle(item, result)
        except Exception:  # the answer itself failed (the connection): log, go on
            log.exception("answering request %s failed", item.request_id)

    def _settle(self, item: _Waiting, result: Tensors | BaseException) -> None:
        plane = self.plane
        plane.inflight -= 1
        request = item.request
        inference_log = plane.inference_log if item.held is not None else None
        try:
            if isinstance(result, BaseException):
                raise result
            if time.perf_counter() - item.started > item.seconds:
                raise deadline_exceeded(item.seconds)
            done = plane.answered(item.request_id, request, result, item.source)
            if inference_log is not None:
                inference_log.settle("rest", item.started, item.held or [], done)
            plane.tee(done, item.body, item.header_length)
            payload, out_length = plane.encode(item.name, request, result)
        except Exception as exc:
            if inference_log is not None and isinstance(exc, RoostError):
                inference_log.settle("rest", item.started, item.held or [], None, exc)
            self._refuse(item.reply, item.source, item.started, exc, item.request_id)
            return
        content_type, extra = JSON_TYPE, []
        if out_length is not None:
            content_type = BINARY_TYPE
            extra.append((HEADER_LENGTH_BYTES, str(out_length).encode()))
        answer = (200, payload, item.request_id, content_type, extra)
        self._answer(item.reply, item.source, item.started, *answer)

    def _refuse(
        self, reply: Reply, source: str, started: float, exc: Exception, request_id: str
    ) -> None:
        extra: Headers = []
        status, payload, request_id = error_answer(exc, self.plane.metrics, request_id, extra)
        self._answer(reply, source, started, status, payload, request_id, JSON_TYPE, extra)

    def _answer(
        self,
        reply: Reply,
        source: str,
        started: float,
        status: int,
        payload: bytes,
        request_id: str,
        content_type: bytes,
        extra: Sequence[tuple[bytes, bytes]],
    ) -> None:
        plane = self.plane
        headers = answer_headers(status, payload, request_id, source, content_type, extra)
        reply(status, headers, payload, plane.shutting_down)
        plane.metrics.count_request(status, source=source)
        plane.metrics.observe_duration(time.perf_counter() - started, source=source)
