"""Per-connection bounds on top of uvicorn's httptools protocol.

uvicorn (0.54, httptools) accepts request heads of any size, waits forever for a client that
connects and sends nothing (or one byte every few seconds), and answers framing errors with a
plain-text body. :func:`guarded_protocol` returns a protocol class that adds, per connection:

- a request-head size limit (``--max-header-bytes``): 431 and close;
- a request-head deadline from the first byte (or from connect) (``--header-timeout``): 408;
- a body read timeout, the longest silence while a body is read (``--read-timeout``): close,
  which the application sees as a disconnect;
- a connection limit (``--max-connections``): 503 for connections beyond it;
- the Open Inference Protocol error body ``{"error": ...}`` on every answer it gives itself;
- a graceful shutdown that lets a connection accepted just before the listener closed send its
  request (answered with ``Connection: close``) instead of dropping it unanswered;
- one send per response: uvicorn writes a response's head and its body separately, each a
  system call and a TCP segment of its own; :class:`CoalescingTransport` sends them together;
- inference requests answered from the parser's callbacks, without ASGI, when their head and
  body arrive in one read (:mod:`roost_serving.direct`; a :class:`_DirectCycle` holds the
  connection's place meanwhile, so pipelined requests keep their order).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from roost_serving.config import Settings
from roost_serving.direct import DirectInfer, Headers
from roost_serving.protocol import error_body

log = logging.getLogger("roost.connection")

FRESH_CONNECTION_GRACE_S = 1.0
"""At shutdown, how long a connection that has not sent a byte yet may still send a request."""

LINGER_S = 1.0
"""After an answer the connection gives itself (431, 400, 408, 503), how long it keeps reading
and dropping what the client still sends before it closes. Closing a socket with unread bytes
makes the kernel send a reset, which can destroy the answer before the client has read it;
the answer is followed by a half-close instead, so the client reads it and then the end."""


def raw_response(status: int, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response with the JSON error body that closes the connection."""
    body = error_body(message)
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


def _is_final_head(data: bytes | bytearray | memoryview) -> bool:
    """A response head (status line and headers, no body yet) that is not a 1xx."""
    return (
        isinstance(data, bytes)
        and data.startswith(b"HTTP/1.1 ")
        and data[9:10] != b"1"  # 100 Continue must reach the client now: it waits for it
        and data.endswith(b"\r\n\r\n")
    )


class CoalescingTransport(asyncio.Transport):
    """A transport that holds a response head back until the first body bytes follow it.

    uvicorn writes a response's head and body with two ``write`` calls, so every response cost
    two send system calls and two TCP segments (on loopback, each send also runs the
    receiver's side of the stack), about as much again as a small model's run. Here the head
    waits, and goes out with the body in one ``writelines`` (one ``writev``). Nothing waits
    for a later turn of the loop: a head is written when the body follows, when the response
    completes without a body (HEAD, via :meth:`flush`), or when the connection closes; the
    first chunk of a streamed response carries its head. Everything else is the wrapped
    transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        """Wrap ``transport``."""
        super().__init__()
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold a response head; write anything else (with a held head before it)."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif _is_final_head(data):
            self._head = bytes(data)
        else:
            self._transport.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write each item as :meth:`write` would, the held head first."""
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write a held head now."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        """Write a held head, then close."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once; a held head is dropped with the rest of the buffer."""
        self._head = None
        self._transport.abort()

    def write_eof(self) -> None:
        """Write a held head, then half-close."""
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        """The wrapped transport's."""
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        """The wrapped transport's."""
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The wrapped transport's."""
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """The wrapped transport's."""
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The wrapped transport's."""
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        """The wrapped transport's."""
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        """The wrapped transport's."""
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        """The wrapped transport's."""
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The wrapped transport's."""
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        """The wrapped transport's, plus a held head."""
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The wrapped transport's."""
        return self._transport.get_write_buffer_limits()


class _NoEvent:
    """What uvicorn sets on a disconnect; nothing waits on a direct request's messages."""

    def set(self) -> None:
        """Nothing to wake."""


_NO_EVENT = _NoEvent()


class _DirectCycle:
    """Stands in for uvicorn's request-response cycle while a request goes the direct way.

    It answers what uvicorn and :class:`GuardedProtocol` ask of the connection's current
    cycle (is its response complete, may the connection be kept alive, did the client go), so
    a pipelined request behind it waits for its answer as it would behind any other.
    """

    __slots__ = ("body", "disconnected", "keep_alive", "response_complete", "target")

    message_event = _NO_EVENT
    response_started = False  # an answer is written whole, in one call

    def __init__(self, target: tuple[str, str | None], keep_alive: bool) -> None:
        self.target = target
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.disconnected = False
        self.response_complete = False


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head, time and connection bounds."""

    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    read_timeout = 30.0
    max_connections = 1024
    direct: DirectInfer | None = None
    """Takes inference requests without ASGI (None: every request goes through ASGI)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as uvicorn's protocol."""
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._reading_body = False
        self._head_done_in_feed = False
        self._seen_bytes = False
        self._draining = False
        self._lingering = False  # answered and half-closed: drop what still arrives
        # One clock per connection for both bounds: the phase being timed ("head" or "body",
        # None when neither) and its deadline. Starting or ending a phase only stores a time;
        # the one timer wakes at most every `_tick` seconds to compare, instead of a timer
        # armed and cancelled per phase and per body chunk (about 2 us each, four per request).
        self._phase: str | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tick = min(self.header_timeout, self.read_timeout)

    # --- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse connections beyond the limit; start the head clock."""
        super().connection_made(transport)
        # uvicorn's flow control keeps the real transport; every write goes through this one.
        self.transport = CoalescingTransport(transport)
        if len(self.connections) > self.max_connections:
            self._reject(503, f"too many connections (--max-connections {self.max_connections})")
            return
        self._start("head", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timers with the connection."""
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; answer framing errors and oversized heads with a JSON body."""
        if self._lingering:
            return
        self._unset_keepalive_if_required()
        self._seen_bytes = True
        if not self._reading_body and self._phase is None:
            self._start("head", self.header_timeout)
        # Only bytes that arrive while a head is being read count against its limit: a chunk
        # that ends a body (or starts one) carries body bytes.
        was_head = not self._reading_body
        self._head_done_in_feed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._reject(400, f"invalid HTTP request: {exc}")
            return
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
            return
        cycle = self.cycle
        if isinstance(cycle, _DirectCycle) and self._reading_body:
            # The body did not come with its head: the request goes through ASGI, whose
            # deadline and admission then apply from now, as for any request.
            self._to_asgi(cycle, complete=False)
        if was_head and not self._reading_body and not self._head_done_in_feed:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._reject(
                    431,
                    f"request line and headers exceed {self.max_header_bytes} bytes "
                    "(--max-header-bytes)",
                )

    # --- parser callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        """The head is in: stop its clock, start the body's."""
        self._head_done_in_feed = True
        self._head_bytes = 0
        self._phase = None
        self._reading_body = True
        target = self._direct_target()
        if target is not None:
            keep_alive = self.parser.should_keep_alive() and not self._draining
            self.cycle = _DirectCycle(target, keep_alive)  # type: ignore[assignment]
        else:
            super().on_headers_complete()
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False
        self._start("body", self.read_timeout)

    def on_body(self, body: bytes) -> None:
        """Every body chunk restarts the read timeout."""
        self._deadline = self.loop.time() + self.read_timeout
        cycle = self.cycle
        if isinstance(cycle, _DirectCycle):
            cycle.body.append(body)
            return
        super().on_body(body)

    def on_response_complete(self) -> None:
        """A response without body bytes (HEAD) still has its head held: send it now."""
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        super().on_response_complete()

    def on_message_complete(self) -> None:
        """The whole request is in."""
        self._reading_body = False
        self._phase = None
        cycle = self.cycle
        if isinstance(cycle, _DirectCycle):
            body = b"".join(cycle.body)
            direct = self.direct
            assert direct is not None  # a direct cycle exists only with a direct path
            try:
                taken = direct.take(cycle.target, self.headers, body, partial(self._reply, cycle))
            except Exception:  # a bug must cost this request a 500, not the parser a 400
                log.exception("direct inference failed")
                body = error_body("internal error")
                length = str(len(body)).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", length)]
                self._reply(cycle, 500, headers, body, True)
                return
            if not taken:
                self._to_asgi(cycle, complete=True)
            return
        super().on_message_complete()

    # --- the direct path ----------------------------------------------------------------------

    def _direct_target(self) -> tuple[str, str | None] | None:
        """Where a request whose head just completed may go the direct way, else None."""
        direct = self.direct
        if direct is None or self.expect_100_continue or self.flow.write_paused:
            return None
        if self.transport.is_closing():
            return None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return None  # pipelined behind an unanswered request: it waits in uvicorn's queue
        parser = self.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
            return None
        length: int | None = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"transfer-encoding" or name == b"upgrade":
                return None
        return direct.route(self.url, length)

    def _to_asgi(self, cycle: _DirectCycle, complete: bool) -> None:
        """Hand a request the direct path did not answer to uvicorn's cycle and the ASGI app,
        with the body bytes received so far."""
        self.cycle = None  # type: ignore[assignment]
        HttpToolsProtocol.on_headers_complete(self)
        self.cycle.keep_alive = self.cycle.keep_alive and cycle.keep_alive
        self.cycle.body = bytearray().join(cycle.body)
        if complete:
            self.cycle.more_body = False
        self.cycle.message_event.set()

    def _reply(
        self, cycle: _DirectCycle, status: int, headers: Headers, body: bytes, close: bool
    ) -> None:
        """Write a direct request's answer, then go on as uvicorn does after a response."""
        if cycle.response_complete:
            return
        cycle.response_complete = True
        transport = self.transport
        if cycle.disconnected or transport.is_closing():
            return
        keep_alive = cycle.keep_alive and not close
        parts = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            parts += (name, b": ", value, b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        transport.write(b"".join(parts))
        if not keep_alive:
            transport.close()
        self.on_response_complete()

    # --- shutdown -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close idle connections; let fresh or half-received ones finish their one request."""
        self._draining = True
        if self.cycle is None and not self._seen_bytes:
            # Accepted just before the listener closed: its request may be on the way.
            self.loop.call_later(FRESH_CONNECTION_GRACE_S, self._close_if_unused)
            return
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self._head_bytes > 0 and not self._reading_body:
            return  # mid-head: it gets its answer (with Connection: close) or the head timeout
        super().shutdown()

    def _close_if_unused(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    # --- helpers ------------------------------------------------------------------------------

    def _reject(self, status: int, message: str) -> None:
        self._cancel_timers()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(raw_response(status, message))
        elif not cycle.response_started:
            # Broken mid-body: answer for the application, which then sees a disconnect.
            self.transport.write(raw_response(status, message))
            cycle.disconnected = True
            cycle.message_event.set()
        log.info("closing connection from %s: %s", self.client, message)
        self._linger()

    def _linger(self) -> None:
        """Half-close after an answer, drop what still arrives, close within LINGER_S."""
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        self.loop.call_later(LINGER_S, self._close_lingering)

    def _close_lingering(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _start(self, phase: str, seconds: float) -> None:
        """Time ``phase`` from now; the clock wakes within `_tick` (no later than any deadline,
        since every bound is at least `_tick` long)."""
        now = self.loop.time()
        self._phase, self._deadline = phase, now + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(now + self._tick, self._on_clock)

    def _on_clock(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None:
            return  # nothing timed: the next phase starts the clock again
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(min(self._deadline, now + self._tick), self._on_clock)
            return
        self._phase = None
        if phase == "head":
            self._head_timed_out()
        else:
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request is being answered; its own deadline applies
        if self._seen_bytes or not self._draining:
            self._reject(
                408,
                f"request head not received within {self.header_timeout:g} s (--header-timeout)",
            )

    def _body_timed_out(self) -> None:
        if self._reading_body and not self.transport.is_closing():
            log.info(
                "closing connection from %s: no body data for %g s (--read-timeout)",
                self.client,
                self.read_timeout,
            )
            self.transport.close()

    def _cancel_timers(self) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guarded_protocol(
    settings: Settings, direct: DirectInfer | None = None
) -> type[GuardedProtocol]:
    """The protocol class for uvicorn's ``http=`` option, with ``settings``' bounds; ``direct``
    answers the inference requests it can take without ASGI."""
    return type(
        "RoostHttpProtocol",
        (GuardedProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout": settings.header_timeout,
            "read_timeout": settings.read_timeout,
            "max_connections": settings.max_connections,
            "direct": direct,
        },
    )
