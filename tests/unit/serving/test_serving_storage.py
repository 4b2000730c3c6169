"""Slow and broken storage, credentials in URIs, and profiles that do not fit the model."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from roost_serving.config import Settings
from roost_serving.redact import redact_uri, scrub

ServeProcess = Any
RunningServer = Any


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An origin that accepts connections and never answers (a hung object store)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/model.onnx"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


def _fails(proc: ServeProcess) -> str:
    _, stderr = proc.proc.communicate(timeout=60)
    assert proc.proc.returncode == 1, stderr
    last: str = stderr.strip().splitlines()[-1]
    assert last.startswith("roost: error: "), stderr
    return last


def test_a_fetch_that_never_answers_times_out_retries_and_exits(
    serve_process: type[ServeProcess], black_hole: str
) -> None:
    started = time.monotonic()
    proc = serve_process(
        {
            "ROOST_MODEL": black_hole,
            "ROOST_FETCH_READ_TIMEOUT": "0.3",
            "ROOST_FETCH_ATTEMPTS": "2",
            "ROOST_LOG_LEVEL": "info",
        },
        wait_ready=False,
    )
    # Live but not ready while it waits.
    for _ in range(100):
        try:
            live = httpx.get(proc.url + "/v2/health/live", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    assert live.status_code == 200
    assert httpx.get(proc.url + "/v2/health/ready", timeout=1).status_code == 503
    last = _fails(proc)
    assert "timed out" in last, last
    assert "after 2 attempts" in last, last
    assert time.monotonic() - started < 30


def test_a_fetch_that_trickles_is_bounded_by_the_total_fetch_timeout(
    serve_process: type[ServeProcess], black_hole: str
) -> None:
    # The read timeout alone would allow 4 x 30 s; the total bound ends it first.
    proc = serve_process({"ROOST_MODEL": black_hole, "ROOST_FETCH_TIMEOUT": "1"}, wait_ready=False)
    assert "did not finish within --fetch-timeout 1 s" in _fails(proc)


def test_refused_is_not_reported_as_no_such_file(serve_process: type[ServeProcess]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"ROOST_MODEL": f"http://127.0.0.1:{port}/m.onnx", "ROOST_FETCH_ATTEMPTS": "2"}
    last = _fails(serve_process(env, wait_ready=False))
    assert f"connection refused by 127.0.0.1:{port}" in last
    assert "no such file" not in last


class _ModelHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        if type(self).calls == 1:  # one transient failure first: it is retried
            self.send_error(503)
            return
        if "/missing" in self.path:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def model_origin(serving_models: dict[str, Path]) -> Iterator[str]:
    handler = type("Origin", (_ModelHandler,), {"payload": serving_models["forest"].read_bytes()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


SECRET_URI = "http://alice:hunter2-secret@{host}/forest.onnx?X-Amz-Signature=deadbeefcafe&x=1"


def test_credentials_never_reach_metrics_or_logs(
    start_server: type[RunningServer], model_origin: str, caplog: pytest.LogCaptureFixture
) -> None:
    uri = SECRET_URI.format(host=model_origin)
    server = start_server(Settings(model=uri, name="forest", fetch_attempts=3))
    text = httpx.get(server.url + "/metrics").text
    assert f'uri="http://***@{model_origin}/forest.onnx?X-Amz-Signature=***&x=***"' in text
    logs = caplog.text + text
    for secret in ("hunter2", "alice", "deadbeefcafe"):
        assert secret not in logs
    assert "retrying" in caplog.text  # the 503 was retried


def test_a_missing_file_says_so_without_credentials(
    serve_process: type[ServeProcess], model_origin: str
) -> None:
    uri = SECRET_URI.format(host=model_origin).replace("forest.onnx", "missing.onnx")
    last = _fails(serve_process({"ROOST_MODEL": uri}, wait_ready=False))
    assert "not found (HTTP 404)" in last
    assert "hunter2" not in last
    assert "deadbeefcafe" not in last


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://bucket/m.onnx", "s3://bucket/m.onnx"),
        ("/models/m.onnx", "/models/m.onnx"),
        ("https://u:p@h:9/m?sig=abc&se=2026", "https://***@h:9/m?sig=***&se=***"),
        ("gs://b/m.onnx?X-Goog-Signature=x", "gs://b/m.onnx?X-Goog-Signature=***"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert scrub(f"failed on {uri} (password {uri.split('@')[0]})", uri).count("p@h") == 0


def _profile(path: Path, features: list[dict[str, Any]], output: str) -> str:
    doc = {
        "version": 1,
        "rows": 10,
        "features": features,
        "prediction": {
            "output": output,
            "kind": "classification",
            "classes": ["0", "1", "2"],
            "frequencies": [0.3, 0.3, 0.4],
        },
    }
    path.write_text(json.dumps(doc))
    return str(path)


def _numeric(name: str, inp: str, column: int) -> dict[str, Any]:
    return {
        "name": name,
        "input": inp,
        "column": column,
        "kind": "numeric",
        "edges": [0.0],
        "frequencies": [0.5, 0.5],
    }


def test_a_profile_for_another_model_is_refused_with_the_exact_difference(
    start_server: type[RunningServer], serving_models: dict[str, Path], tmp_path: Path
) -> None:
    features = [_numeric(f"f{i}", "X", i) for i in range(7)] + [_numeric("z", "Z", 0)]
    profile = _profile(tmp_path / "p.json", features, "lbl")
    with pytest.raises(RuntimeError) as failure:
        start_server(Settings(model=str(serving_models["forest"]), profile=profile))
    message = str(failure.value)
    assert "does not match the model" in message
    assert "feature 'f5' reads column 5 of input 'X', which has 5 columns" in message
    assert "feature 'z' reads input 'Z', which the model does not have (inputs: 'X')" in message
    assert "prediction output 'lbl' is not an output of the model" in message
    fewer = _profile(tmp_path / "q.json", [_numeric(f"f{i}", "X", i) for i in range(3)], "label")
    with pytest.raises(RuntimeError, match=r"has 5 columns but the profile describes 3 \(missing"):
        start_server(Settings(model=str(serving_models["forest"]), profile=fewer))
    fits = _profile(tmp_path / "r.json", [_numeric(f"f{i}", "X", i) for i in range(5)], "label")
    assert start_server(Settings(model=str(serving_models["forest"]), profile=fits)).plane.ready
