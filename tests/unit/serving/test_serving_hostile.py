"""Hostile and unlucky clients on real loopback sockets: limits, timeouts, overload, errors."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from roost_serving.config import Settings

RunningServer = Any
ROW = b'{"inputs":[{"name":"X","datatype":"FP32","shape":[1,5],"data":[0.5,-1,0.25,2,0]}]}'


def _forest(start: type[RunningServer], models: dict[str, Path], **kw: Any) -> RunningServer:
    return start(Settings(model=str(models["forest"]), name="forest", **kw))


def _connect(server: RunningServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _post_head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        f"{extra}\r\n"
    ).encode()


def test_oversized_head_gets_431_with_the_error_body(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, max_header_bytes=4096)
    with _connect(server) as conn:
        conn.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        status, headers, body = _split(_read_all(conn))
    assert (status, headers["connection"]) == (431, "close")
    assert "--max-header-bytes" in orjson.loads(body)["error"]
    # A head inside the limit is answered as usual, and body bytes never count against it.
    assert httpx.get(server.url + "/v2", headers={"X-Ok": "a" * 3000}).status_code == 200
    rows = [[0.5, -1.0, 0.25, 2.0, 0.0]] * 20_000
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [20_000, 5], "data": rows}]}
    big = httpx.post(server.url + "/v2/models/forest/infer", content=orjson.dumps(doc))
    assert big.status_code == 200, big.text


def test_slow_loris_and_silent_clients_are_cut_off(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, header_timeout=0.5, read_timeout=0.5)
    # Connects and sends nothing.
    with _connect(server) as silent:
        status, _, body = _split(_read_all(silent))
    assert status == 408
    assert "--header-timeout" in orjson.loads(body)["error"]
    # Sends the head one byte at a time, each well inside any per-read timeout.
    with _connect(server) as loris:
        head = _post_head(len(ROW))
        try:
            for byte in head:
                loris.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass  # closed by the server mid-head: what this test wants
        status, _, _ = _split(_read_all(loris))
    assert status == 408
    # Sends the head, then half the body, then nothing: the connection is closed.
    with _connect(server) as stalled:
        stalled.sendall(_post_head(len(ROW)) + ROW[:10])
        started = time.monotonic()
        assert _read_all(stalled) == b""
        assert time.monotonic() - started < 10  # closed at all, not held forever
    assert httpx.post(server.url + "/v2/models/forest/infer", content=ROW).status_code == 200


def test_each_bound_fires_at_its_own_time_on_the_shared_clock(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    """One clock per connection times the head (0.4 s) and the body silence (1.5 s)."""
    server = _forest(start_server, serving_models, header_timeout=0.4, read_timeout=1.5)
    # A body trickled in chunks 0.6 s apart (past the head bound, inside the read bound),
    # over two requests on one connection: both answered.
    with _connect(server) as slow:
        for _ in range(2):
            slow.sendall(_post_head(len(ROW)))
            for start in range(0, len(ROW), 30):
                time.sleep(0.6)
                slow.sendall(ROW[start : start + 30])
            data = b""
            while b"outputs" not in data:
                chunk = slow.recv(65536)
                assert chunk, f"closed mid-request: {data!r}"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
    # A body that stops: closed after the read bound, not the head bound.
    with _connect(server) as stalled:
        stalled.sendall(_post_head(len(ROW)) + ROW[:10])
        started = time.monotonic()
        assert _read_all(stalled) == b""
        waited = time.monotonic() - started
    assert 1.4 < waited < 3.5, waited
    # A head that stops: 408 after the head bound.
    with _connect(server) as half:
        half.sendall(b"POST /v2/models/forest/infer HTTP/1.1\r\n")
        started = time.monotonic()
        status, _, _ = _split(_read_all(half))
        waited = time.monotonic() - started
    assert status == 408
    assert 0.3 < waited < 1.2, waited  # within the head bound, not the read bound


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v2/models/forest/infer HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /v2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"GET /v2 HTTP/1.1\r\nBad Header\r\n\r\n",
    ],
)
def test_framing_errors_get_400_with_the_error_body(
    start_server: type[RunningServer], serving_models: dict[str, Path], raw: bytes
) -> None:
    server = _forest(start_server, serving_models)
    with _connect(server) as conn:
        conn.sendall(raw)
        status, headers, body = _split(_read_all(conn))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"].startswith("invalid HTTP request")


def test_405_says_allow_and_openapi_has_no_phantom_422(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models)
    response = httpx.get(server.url + "/v2/models/forest/infer")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]
    spec = httpx.get(server.url + "/openapi.json").json()
    codes = {
        code for path in spec["paths"].values() for op in path.values() for code in op["responses"]
    }
    assert "422" not in codes
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_full_queue_is_shed_at_once_with_503_and_retry_after(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, max_queue=1, revision="r1")
    with _connect(server) as held:
        # Admitted (head in), body not yet: this request occupies the only place.
        held.sendall(_post_head(len(ROW)) + ROW[:5])
        time.sleep(0.2)  # let the server parse the head (synchronisation, not an assertion)
        shed = httpx.post(server.url + "/v2/models/forest/infer", content=ROW)
        held.sendall(ROW[5:])
        status, _, _ = _split(held.recv(65536))
    assert status == 200
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert "--max-queue 1" in shed.json()["error"]
    labels = {"model": "forest", "revision": "r1"}
    assert server.metric("roost_requests_shed_total", reason="queue_full", **labels) == 1.0
    assert (
        server.metric(
            "roost_requests_total", code="503", protocol="rest", source="client", **labels
        )
        == 1.0
    )
    assert server.metric("roost_requests_shed_total", reason="deadline", **labels) == 0.0


def test_deadline_passes_504_from_the_client_header_or_the_server_limit(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, request_timeout=5.0)
    with _connect(server) as slow:
        slow.sendall(_post_head(len(ROW), "Roost-Request-Timeout-Ms: 200\r\n") + ROW[:5])
        status, _, body = _split(slow.recv(65536))
    assert status == 504
    assert "deadline of 0.2 s exceeded" in orjson.loads(body)["error"]
    bad = httpx.post(
        server.url + "/v2/models/forest/infer",
        content=ROW,
        headers={"Roost-Request-Timeout-Ms": "soon"},
    )
    assert bad.status_code == 400
    assert (
        server.metric("roost_requests_shed_total", model="forest", revision="", reason="deadline")
        == 1.0
    )
    assert (
        server.metric(
            "roost_requests_total",
            model="forest",
            revision="",
            protocol="rest",
            source="client",
            code="504",
        )
        == 1.0
    )


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([1] * 65, "at most 32 are allowed"),
        ([0, 2**62], "exceeds the limit"),
        ([4096, 4096], "at most 1000000 are allowed"),
    ],
)
def test_shapes_beyond_the_limits_get_400(
    start_server: type[RunningServer],
    serving_models: dict[str, Path],
    shape: list[int],
    fragment: str,
) -> None:
    server = _forest(start_server, serving_models, max_elements=1_000_000)
    for binary in (False, True):
        entry: dict[str, Any] = {"name": "X", "datatype": "FP32", "shape": shape}
        entry["parameters" if binary else "data"] = {"binary_data_size": 0} if binary else []
        header = orjson.dumps({"inputs": [entry]})
        headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
        response = httpx.post(
            server.url + "/v2/models/forest/infer", content=header, headers=headers
        )
        assert response.status_code == 400, response.text
        assert fragment in response.json()["error"]


def test_repeated_outputs_huge_header_length_and_response_size_get_400(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, max_response_bytes=2048)
    url = server.url + "/v2/models/forest/infer"
    doc = orjson.loads(ROW)
    doc["outputs"] = [{"name": "label"}] * 3
    repeated = httpx.post(url, content=orjson.dumps(doc))
    assert repeated.status_code == 400
    assert "output 'label' is requested twice" in repeated.json()["error"]
    digits = httpx.post(url, content=ROW, headers={"Inference-Header-Content-Length": "9" * 5000})
    assert digits.status_code == 400
    assert "at most 19 digits" in digits.json()["error"]
    rows = [[0.5, -1.0, 0.25, 2.0, 0.0]] * 200
    big = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [200, 5], "data": rows}]}
    too_big = httpx.post(url, content=orjson.dumps(big))
    assert too_big.status_code == 400
    assert "--max-response-bytes" in too_big.json()["error"]


def test_connections_beyond_the_limit_get_503(
    start_server: type[RunningServer], serving_models: dict[str, Path]
) -> None:
    server = _forest(start_server, serving_models, max_connections=2)
    with _connect(server) as first, _connect(server) as second:
        time.sleep(0.1)
        with _connect(server) as third:
            status, _, body = _split(_read_all(third))
        assert status == 503
        assert "--max-connections 2" in orjson.loads(body)["error"]
        first.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(4096).startswith(b"HTTP/1.1 200")
        del second
