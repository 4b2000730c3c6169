"""The shadow tee between two real servers on loopback: copies, pairing, metrics, drops."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from roost_serving.config import Settings
from roost_serving.shadow import compared_output, disagreements, parse_section

RunningServer = Any  # tests/unit/serving/conftest.py; its fixtures type it
TOKEN = "shadow-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def wine(
    start_server: type[RunningServer],
    example_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    monkeypatch.setenv("ROOST_RUNTIME_TOKEN", TOKEN)

    def start(model: str, revision: str) -> RunningServer:
        path = example_models[model] / "model.onnx"
        return start_server(Settings(model=str(path), name="wine", revision=revision))

    return start


def _rows(example_models: dict[str, Path]) -> list[list[float]]:
    rows: list[list[float]] = json.loads((example_models["wine-v1"] / "sample.json").read_text())[
        "rows"
    ]
    return rows


def _shadow(stable: RunningServer, targets: list[str], **extra: Any) -> None:
    section = {"stable": "s", "canary": "c", "targets": targets, "share": 1.0, **extra}
    doc = {"version": "v1", "sections": {"shadow": section}}
    r = httpx.put(stable.url + "/v2/roost/runtime", json=doc, headers=AUTH)
    assert r.status_code == 200, r.text


def _infer(url: str, rows: list[list[float]], n: int, **body: Any) -> list[int]:
    codes = []
    with httpx.Client(base_url=url) as client:
        for i in range(n):
            row = rows[i % len(rows)]
            payload = {
                "inputs": [{"name": "X", "shape": [1, 13], "datatype": "FP32", "data": row}],
                **body,
            }
            codes.append(client.post("/v2/models/wine/infer", json=payload).status_code)
    return codes


def _wait(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _value(server: RunningServer, name: str, **labels: str) -> float:
    base = {"model": "wine", "revision": "s", "canary": "c"}
    return server.metric(name, **{**base, **labels}) or 0.0


def test_a_one_class_canary_disagrees_and_serves_no_user_request(
    wine: Any, example_models: dict[str, Path]
) -> None:
    stable, canary = wine("wine-v1", "s"), wine("wine-constant", "c")
    _shadow(stable, [canary.url])
    rows = _rows(example_models)
    assert _infer(stable.url, rows, 60) == [200] * 60
    _wait(lambda: _value(stable, "roost_shadow_requests_total", outcome="compared") == 60)
    assert _value(stable, "roost_shadow_rows_total") == 60
    wrong = _value(stable, "roost_shadow_disagreements_total", kind="prediction")
    assert 10 < wrong < 60  # class 2 is right for some rows, wrong for most

    # The canary answered 60 copies and no client request at all.
    def requests(server: RunningServer, revision: str, source: str, code: str = "200") -> Any:
        labels = {"protocol": "rest", "source": source, "code": code}
        return server.metric("roost_requests_total", model="wine", revision=revision, **labels)

    assert requests(canary, "c", "shadow") == 60
    for code in ("200", "400", "500"):
        assert requests(canary, "c", "client", code) == 0
    assert requests(stable, "s", "client") == 60
    assert (
        stable.metric(
            "roost_shadow_canary_duration_seconds_count", model="wine", revision="s", canary="c"
        )
        == 60
    )


def test_an_identical_canary_agrees_and_copies_pair_by_request_id(
    wine: Any, example_models: dict[str, Path]
) -> None:
    stable, canary = wine("wine-v1", "s"), wine("wine-v1", "c")
    _shadow(stable, [canary.url])
    rows = _rows(example_models)
    _infer(stable.url, rows, 20, id="client-id")
    _infer(stable.url, rows, 20)
    _wait(lambda: _value(stable, "roost_shadow_requests_total", outcome="compared") == 40)
    assert _value(stable, "roost_shadow_disagreements_total", kind="prediction") == 0
    assert _value(stable, "roost_shadow_disagreements_total", kind="error") == 0


def test_the_canary_failing_never_reaches_the_client(
    wine: Any, example_models: dict[str, Path]
) -> None:
    stable = wine("wine-v1", "s")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every copy fails to connect
    _shadow(stable, [f"http://127.0.0.1:{port}"], timeoutSeconds=0.5)
    assert _infer(stable.url, _rows(example_models), 20) == [200] * 20
    _wait(lambda: _value(stable, "roost_shadow_requests_total", outcome="error") == 20)
    assert _value(stable, "roost_shadow_canary_errors_total", reason="connection") == 20
    assert _value(stable, "roost_shadow_disagreements_total", kind="error") == 20


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers (a hung canary)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_a_hung_canary_fills_the_queue_and_copies_are_dropped_not_waited_for(
    wine: Any, example_models: dict[str, Path], silent_server: str
) -> None:
    stable = wine("wine-v1", "s")
    _shadow(stable, [silent_server], timeoutSeconds=30)
    codes = _infer(stable.url, _rows(example_models), 560)
    assert codes == [200] * 560
    dropped = stable.metric(
        "roost_shadow_dropped_total", model="wine", revision="s", reason="queue_full"
    )
    # 512 wait in the queue, 8 are in flight: the rest are dropped.
    assert dropped == 560 - 512 - 8


def test_binary_requests_are_copied_as_json_and_compared(
    wine: Any, example_models: dict[str, Path]
) -> None:
    stable, canary = wine("wine-v1", "s"), wine("wine-constant", "c")
    _shadow(stable, [canary.url])
    row = np.asarray(_rows(example_models)[0], dtype=np.float32)
    tensor = {"name": "X", "shape": [1, 13], "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": 52}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    r = httpx.post(
        stable.url + "/v2/models/wine/infer",
        content=header + row.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200
    _wait(lambda: _value(stable, "roost_shadow_requests_total", outcome="compared") == 1)
    assert _value(stable, "roost_shadow_rows_total") == 1


def test_grpc_requests_are_copied_and_compared(
    start_server: type[RunningServer],
    wine: Any,
    example_models: dict[str, Path],
) -> None:
    """A stable pod's gRPC clients are shadowed like its REST clients (copies sent as REST)."""
    path = example_models["wine-v1"] / "model.onnx"
    stable = start_server(Settings(model=str(path), name="wine", revision="s", grpc_port=0))
    canary = wine("wine-constant", "c")
    _shadow(stable, [canary.url])
    rows = _rows(example_models)[:30]
    client = triton.InferenceServerClient(f"127.0.0.1:{stable.plane.grpc_port}")
    try:
        for i, row in enumerate(rows):
            tensor = triton.InferInput("X", [1, 13], "FP32")
            tensor.set_data_from_numpy(np.asarray([row], dtype=np.float32))
            client.infer("wine", [tensor], request_id=f"grpc-{i}")
    finally:
        client.close()
    _wait(lambda: _value(stable, "roost_shadow_requests_total", outcome="compared") == 30)
    assert _value(stable, "roost_shadow_rows_total") == 30
    x = np.asarray(rows, dtype=np.float32)
    plane_v1, plane_c = stable.plane.model, canary.plane.model
    assert plane_v1 is not None
    assert plane_c is not None
    expected = int((plane_v1.run({"X": x})["label"] != plane_c.run({"X": x})["label"]).sum())
    assert _value(stable, "roost_shadow_disagreements_total", kind="prediction") == expected
    # The canary answered the copies over REST as shadow traffic, never a client.
    labels = {"model": "wine", "revision": "c", "protocol": "rest", "source": "shadow"}
    assert (canary.metric("roost_requests_total", code="200", **labels) or 0) > 0
    grpc_labels = {"model": "wine", "revision": "s", "protocol": "grpc", "source": "client"}
    assert stable.metric("roost_requests_total", code="200", **grpc_labels) == 30


def test_copies_alike_share_one_request_and_pair_back_in_order(
    wine: Any, example_models: dict[str, Path]
) -> None:
    """Copies queued faster than the canary answers go together; every one is compared."""
    stable, canary = wine("wine-v1", "s"), wine("wine-constant", "c")
    _shadow(stable, [canary.url])
    rows = _rows(example_models)
    n = 400

    def client(start: int) -> None:
        _infer(stable.url, rows[start:] + rows[:start], n // 8)

    threads = [threading.Thread(target=client, args=(i * 7,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait(lambda: _value(stable, "roost_shadow_requests_total", outcome="compared") == n)
    # Exactly as many disagreements as the two models' labels differ on these rows.
    plane_v1, plane_c = stable.plane.model, canary.plane.model
    assert plane_v1 is not None
    assert plane_c is not None
    sent = [rows[(i * 7 + k) % len(rows)] for i in range(8) for k in range(n // 8)]
    x = np.asarray(sent, dtype=np.float32)
    expected = int((plane_v1.run({"X": x})["label"] != plane_c.run({"X": x})["label"]).sum())
    assert _value(stable, "roost_shadow_disagreements_total", kind="prediction") == expected
    assert _value(stable, "roost_shadow_disagreements_total", kind="error") == 0
    # Fewer requests reached the canary than copies were compared: copies were batched.
    labels = {"model": "wine", "revision": "c", "protocol": "rest", "source": "shadow"}
    served = canary.metric("roost_requests_total", code="200", **labels)
    assert served is not None
    assert 0 < served <= n


def test_a_section_for_another_revision_leaves_the_pod_alone() -> None:
    section = {"stable": "s", "canary": "c", "targets": ["http://x:1/"], "share": 7}
    target = parse_section(section, "s")
    assert target is not None
    assert target.share == 1.0  # clamped
    assert target.targets == ("http://x:1",)
    assert parse_section(section, "c") is None
    assert parse_section({**section, "targets": []}, "s") is None
    assert parse_section(None, "s") is None


def test_labels_are_compared_exactly_and_numbers_within_the_tolerance() -> None:
    outputs = {"probabilities": np.zeros((3, 2), np.float32), "label": np.asarray([0, 1, 2])}
    assert compared_output(outputs, None) == "label"
    assert compared_output(outputs, ["probabilities"]) == "probabilities"
    assert disagreements(np.asarray([0, 1, 2]), np.asarray([0, 2, 2]), 0.0)[0] == 1
    own = np.asarray([[1.0], [2.0], [3.0]])
    count, diff = disagreements(own, np.asarray([1.0, 2.05, 3.5]), 0.1)
    assert count == 1
    assert np.allclose(diff, [0.0, 0.05, 0.5])
    assert disagreements(np.asarray(["a", "b"]), np.asarray(["a", "c"]), 0.0)[0] == 1
