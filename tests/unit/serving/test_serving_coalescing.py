"""One send per response: the connection's transport holds a response head for its body."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from roost_serving.cli import server_config
from roost_serving.config import Settings
from roost_serving.connection import CoalescingTransport
from unit.serving.test_serving_hostile import ROW, RunningServer, _connect, _forest, _post_head

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


class Recorder(asyncio.Transport):
    """A transport that records each call that would reach the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[bytes, ...]]] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(("write", (bytes(data),)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", tuple(bytes(d) for d in list_of_data)))

    def close(self) -> None:
        self.calls.append(("close", ()))
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def test_a_head_goes_out_with_its_body_in_one_call() -> None:
    real = Recorder()
    transport = CoalescingTransport(real)
    transport.write(HEAD)
    assert real.calls == []
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"{}")
    assert real.calls == [("writelines", (HEAD, b"{}"))]
    # Streamed chunks after the first go out as they come.
    transport.write(b"more")
    assert real.calls[-1] == ("write", (b"more",))


def test_a_head_without_body_is_written_on_flush_or_close() -> None:
    real = Recorder()
    transport = CoalescingTransport(real)
    transport.write(HEAD)
    transport.flush()  # the response completed without body bytes (HEAD)
    assert real.calls == [("write", (HEAD,))]
    transport.flush()
    assert len(real.calls) == 1
    transport.write(HEAD)
    transport.close()
    assert real.calls[1:] == [("write", (HEAD,)), ("close", ())]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",  # the client waits for it before sending the body
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",  # a whole response
        b"0\r\n\r\n",  # the last chunk of a chunked body
        bytearray(b"HTTP/1.1 200 OK\r\n\r\n"),  # only uvicorn's own bytes heads are held
    ],
)
def test_anything_but_a_final_head_is_written_at_once(data: bytes) -> None:
    real = Recorder()
    CoalescingTransport(real).write(data)
    assert real.calls == [("write", (bytes(data),))]


def _read_response(conn: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One response by its Content-Length: (head, body, bytes read past it)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed mid-head after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    length = next(int(ln.split(": ")[1]) for ln in lines if ln.startswith("content-length"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return head, rest[:length], rest[length:]


def test_pipelined_requests_are_answered_in_order_on_a_real_socket(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        conn.sendall(
            b"".join(_post_head(len(ROW), f"X-Request-Id: r{i}\r\n") + ROW for i in range(5))
        )
        left = b""
        for i in range(5):
            head, body, left = _read_response(conn, left)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert orjson.loads(body)["id"] == f"r{i}"
        assert left == b""


def test_a_head_request_gets_its_head_and_keeps_the_connection(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        # HEAD on the infer route: 405 with Allow, and no body bytes (uvicorn writes none).
        conn.sendall(b"HEAD /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, "HEAD got no answer"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405")
        assert b"allow: POST" in head
        assert rest == b""
        # The same connection then serves an inference.
        conn.sendall(_post_head(len(ROW)) + ROW)
        head, body, _ = _read_response(conn)
        assert head.startswith(b"HTTP/1.1 200")
        assert "outputs" in orjson.loads(body)


def test_expect_100_continue_is_not_held_back(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        conn.sendall(_post_head(len(ROW), "Expect: 100-continue\r\n"))
        conn.settimeout(5)
        interim = conn.recv(65536)  # the body is sent only once this arrives
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(ROW)
        head, body, _ = _read_response(conn)
        assert head.startswith(b"HTTP/1.1 200")
        assert "outputs" in orjson.loads(body)


def test_a_streamed_response_is_not_held_back(serving_models: dict[str, Path]) -> None:
    """The head goes out with the first chunk; later chunks go out as they are sent."""
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        # The test's thread releases the rest once it has read the first chunk.
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await send({"type": "http.response.body", "body": b"second"})

    settings = Settings(model=str(serving_models["forest"]), name="forest")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, settings, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(sock.getsockname(), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"first" not in data:
                chunk = conn.recv(65536)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            assert b"transfer-encoding: chunked" in data
            release.set()
            while not data.endswith(b"0\r\n\r\n"):
                chunk = conn.recv(65536)
                assert chunk, data
                data += chunk
            assert b"second" in data
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


def test_errors_and_other_routes_arrive_whole(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with httpx.Client(base_url=server.url) as client:
        bad = client.post("/v2/models/forest/infer", content=b"{")
        assert bad.status_code == 400
        assert "not valid JSON" in bad.json()["error"]
        assert client.get("/v2/health/ready").json() == {"ready": True}
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "roost_requests_total" in metrics.text
