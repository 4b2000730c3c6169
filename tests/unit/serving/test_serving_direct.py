"""Inference requests answered from the connection's parser callbacks (roost_serving.direct).

Every test runs a real server on a loopback socket and checks the answer a client gets, and
whether it came the direct way (``DirectInfer.taken``) or through ASGI.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from roost_serving.batching import Batcher
from roost_serving.protocol import RoostError
from unit.serving.test_serving_coalescing import _read_response
from unit.serving.test_serving_hostile import ROW, RunningServer, _connect, _forest, _post_head

READY = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"


def _whole(body: bytes = ROW, extra: str = "") -> bytes:
    return _post_head(len(body), extra) + body


def _ask(conn: socket.socket, wire: bytes) -> tuple[bytes, bytes]:
    """Send a request, read its answer: (head, body)."""
    conn.sendall(wire)
    head, body, _ = _read_response(conn)
    return head, body


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b": ")
        if key.lower() == name:
            return value
    return None


def test_a_request_sent_whole_is_answered_directly_as_asgi_answers_it(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    direct = server.app.direct
    with _connect(server) as conn:
        head, body = _ask(conn, _whole(extra="X-Request-Id: whole-1\r\n"))
        assert direct.taken == 1
        # The same request with its body in a later read goes through ASGI.
        conn.sendall(_post_head(len(ROW), "X-Request-Id: split-1\r\n"))
        time.sleep(0.2)  # let the head arrive alone (synchronisation, not an assertion)
        conn.sendall(ROW)
        asgi_head, asgi_body, _ = _read_response(conn)
    assert direct.taken == 1
    assert _status(head) == _status(asgi_head) == 200
    for name in (b"content-type", b"date"):
        assert (_header(head, name) is None) == (_header(asgi_head, name) is None)
    assert _header(head, b"content-type") == b"application/json"
    assert _header(head, b"x-request-id") == b"whole-1"
    assert _header(asgi_head, b"x-request-id") == b"split-1"
    ours, theirs = orjson.loads(body), orjson.loads(asgi_body)
    assert ours["id"] == "whole-1"
    assert ours["outputs"] == theirs["outputs"]
    labels = {"model": "forest", "revision": "", "protocol": "rest", "source": "client"}
    assert server.metric("roost_requests_total", code="200", **labels) == 2.0


def test_pipelined_requests_are_answered_in_order_whichever_way_they_go(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    bad = b'{"inputs":[{"name":"X","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
    chunked = (
        b"POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"X-Request-Id: chunked\r\n\r\n" + f"{len(ROW):x}\r\n".encode() + ROW + b"\r\n0\r\n\r\n"
    )
    burst = (
        _whole(bad, "X-Request-Id: refused\r\n")  # refused at once, the direct way
        + _whole(extra="X-Request-Id: first\r\n")  # direct: waits for the end of the turn
        + READY  # behind an unanswered request: these wait in uvicorn's queue
        + chunked
        + _whole(extra="X-Request-Id: last\r\n")
    )
    with _connect(server) as conn:
        conn.sendall(burst)
        answers = []
        rest = b""
        for _ in range(5):
            head, body, rest = _read_response(conn, rest)
            answers.append((_status(head), _header(head, b"x-request-id"), body))
    assert [status for status, _, _ in answers] == [400, 200, 200, 200, 200]
    assert [rid for _, rid, _ in answers] == [b"refused", b"first", None, b"chunked", b"last"]
    assert "shape" in orjson.loads(answers[0][2])["error"]
    assert orjson.loads(answers[2][2]) == {"ready": True}
    assert server.app.direct.taken == 2


def test_requests_from_many_connections_at_once_are_each_answered(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, max_batch_size=8)
    conns = [_connect(server) for _ in range(16)]
    try:
        wire = [_whole(extra=f"X-Request-Id: c{i}\r\n") for i in range(16)]
        for conn, data in zip(conns, wire, strict=True):
            conn.sendall(data)
        ids = []
        for conn in conns:
            head, body, _ = _read_response(conn)
            assert _status(head) == 200
            ids.append(orjson.loads(body)["id"])
    finally:
        for conn in conns:
            conn.close()
    assert ids == [f"c{i}" for i in range(16)]
    assert server.app.direct.taken == 16


def test_a_busy_batcher_takes_direct_requests_through_its_queue(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    batcher = server.plane.batcher
    batcher.free = lambda: False  # as while a batch runs on the worker thread
    with _connect(server) as one, _connect(server) as two:
        one.sendall(_whole(extra="X-Request-Id: q1\r\n"))
        two.sendall(_whole(extra="X-Request-Id: q2\r\n"))
        answers = [_read_response(conn) for conn in (one, two)]
    assert [_status(head) for head, _, _ in answers] == [200, 200]
    assert [orjson.loads(body)["id"] for _, body, _ in answers] == ["q1", "q2"]
    assert server.app.direct.taken == 2


def test_slow_models_and_validation_requests_go_through_asgi(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        head, _ = _ask(conn, _whole(extra="Roost-Source: validation\r\n"))
        assert _status(head) == 200
        assert server.app.direct.taken == 0
        server.plane.batcher._run_seconds = 1.0  # as the running average of a slow model
        head, _ = _ask(conn, _whole())
    assert _status(head) == 200
    assert server.app.direct.taken == 0


def test_refusals_carry_the_error_body_the_request_id_and_retry_after(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, max_queue=1)
    with _connect(server) as conn:
        head, body = _ask(conn, _whole(b'{"inputs": 3}', "X-Request-Id: bad-1\r\n"))
        assert (_status(head), _header(head, b"x-request-id")) == (400, b"bad-1")
        assert "inputs" in orjson.loads(body)["error"]
        head, body = _ask(conn, _post_head(len(ROW)).replace(b"forest", b"nope") + ROW)
        assert _status(head) == 404
        assert "unknown model 'nope'" in orjson.loads(body)["error"]
        server.plane.inflight = 1  # the only place is taken
        try:
            head, body = _ask(conn, _whole())
        finally:
            server.plane.inflight = 0
    assert (_status(head), _header(head, b"retry-after")) == (503, b"1")
    assert "--max-queue 1" in orjson.loads(body)["error"]
    assert server.app.direct.taken == 3


def test_while_draining_a_direct_answer_closes_the_connection(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        server.plane.shutting_down = True
        try:
            conn.sendall(_whole())
            head, _, rest = _read_response(conn)
            assert conn.recv(65536) == rest == b""  # closed after the answer
        finally:
            server.plane.shutting_down = False
    assert (_status(head), _header(head, b"connection")) == (200, b"close")


def test_a_client_that_leaves_before_its_answer_loses_nothing_else(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    for _ in range(20):
        conn = _connect(server)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.sendall(_whole())
        conn.close()  # reset at once: the answer finds the connection gone
    with _connect(server) as conn:
        head, _ = _ask(conn, _whole())
    assert _status(head) == 200
    assert server.plane.inflight == 0


def _batcher(seen: list[int], max_batch_size: int = 4) -> Batcher:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["X"]
        seen.append(x.shape[0])
        if (x < 0).any():
            raise RoostError("negative input")
        return {"Y": x * 2}

    return Batcher(
        run,
        max_batch_size=max_batch_size,
        max_delay_s=0.0,
        enabled=True,
        on_batch=lambda *_: None,
        on_dequeue=lambda _: None,
        arriving=lambda: 0,
    )


def test_run_together_batches_compatible_requests_and_keeps_errors_to_their_own() -> None:
    seen: list[int] = []
    batcher = _batcher(seen)
    rows = [np.full((1, 3), i, np.float32) for i in range(5)]
    wide = np.ones((1, 7), np.float32)  # other trailing shape: its own batch
    big = np.ones((4, 3), np.float32)  # fills a batch alone
    bad = np.full((1, 3), -1, np.float32)
    results = batcher.run_together(
        [{"X": r} for r in rows[:3]] + [{"X": wide}, {"X": big}, {"X": bad}, {"X": rows[3]}]
    )
    assert [r["Y"].tolist() for r in results[:3]] == [[[0.0] * 3], [[2.0] * 3], [[4.0] * 3]]
    assert results[3]["Y"].shape == (1, 7)
    assert results[4]["Y"].shape == (4, 3)
    assert isinstance(results[5], Exception)
    assert "negative" in str(results[5])
    assert results[6]["Y"].tolist() == [[6.0] * 3]
    # The first four one-row requests of 3 features made one run; it failed on the negative
    # one and was rerun request by request, so only that request got the error.
    assert 4 in seen
    assert sorted(seen).count(1) >= 3


def test_a_direct_request_keeps_its_connection_for_the_next_one(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        for i in range(50):
            head, body = _ask(conn, _whole(extra=f"X-Request-Id: k{i}\r\n"))
            assert _status(head) == 200
            assert orjson.loads(body)["id"] == f"k{i}"
    assert server.app.direct.taken == 50


@pytest.mark.parametrize("url", [b"/v2/models/forest/infer?x=1", b"/v2/models/fo%72est/infer"])
def test_query_strings_and_escaped_paths_go_through_asgi(
    start_server: type[RunningServer], serving_models: dict[str, Path], url: bytes
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        head, _ = _ask(conn, _whole().replace(b"/v2/models/forest/infer", url, 1))
    assert _status(head) == 200
    assert server.app.direct.taken == 0


def test_a_failure_inside_the_direct_path_is_a_500_not_a_parser_400(
    start_server: type[RunningServer], serving_models: dict[str, Path], monkeypatch: Any
) -> None:
    server = _forest(start_server, serving_models)

    def broken(*_: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.plane.batcher, "run_together", broken)
    with _connect(server) as conn:
        head, body = _ask(conn, _whole(extra="X-Request-Id: ran\r\n"))
        assert (_status(head), _header(head, b"x-request-id")) == (500, b"ran")
        assert orjson.loads(body) == {"error": "internal error: RuntimeError"}
        monkeypatch.setattr(server.app.direct, "take", broken)
        head, body = _ask(conn, _whole())
    assert _status(head) == 500
    assert orjson.loads(body) == {"error": "internal error"}
    assert server.plane.inflight == 0
