"""Feedback over HTTP between two real ``roost serve`` processes on loopback: labels sent to the
pod that did not answer reach the one that did; outcomes are counted, bad bodies are 400s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from roost_devcluster.net import free_port
from roost_serving.app import DataPlane
from roost_serving.config import Settings

from .conftest import RunningServer, ServeProcess

ROWS = [[0.5, -1, 0.25, 2, 0], [2.0, 1.0, 0.0, 0.0, 0.0], [-2.0, -1.0, 0.0, 0.0, 0.0]]


def _infer(url: str, rid: str, rows: list[list[float]]) -> list[int]:
    data = [v for row in rows for v in row]
    body = {"id": rid, "inputs": [
        {"name": "X", "datatype": "FP32", "shape": [len(rows), 5], "data": data}
    ]}  # fmt: skip
    answer = httpx.post(url + "/v2/models/forest/infer", json=body, timeout=10).json()
    label = next(o for o in answer["outputs"] if o["datatype"] == "INT64")
    return [int(v) for v in label["data"]]


def _feedback(url: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(url + "/v2/models/forest/feedback", json=body, headers=headers, timeout=10)


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


TOKEN = "feedback-test-token"


def _push_peers(url: str, urls: list[str]) -> None:
    """What the operator does: PUT the runtime document with the ``peers`` section."""
    pods = [
        {"pod": f"p{i}", "revision": "r1", "role": "stable", "url": u} for i, u in enumerate(urls)
    ]
    doc = {"version": "v1", "sections": {"peers": {"pods": pods}}}
    answer = httpx.put(
        url + "/v2/roost/runtime", json=doc, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def pair(serving_models: dict[str, Path]) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Two pods of one model whose peers (both pods and a dead third) came from the runtime
    config push; neither was started knowing the other."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: forwarding must survive it
    env = {
        "ROOST_MODEL": str(serving_models["forest"]),
        "ROOST_NAME": "forest",
        "ROOST_RUNTIME_TOKEN": TOKEN,
    }
    started = [ServeProcess(env, wait_ready=False) for _ in range(2)]
    try:
        for proc in started:
            proc.wait_ready()
        urls = [p.url for p in started]
        for proc in started:
            _push_peers(proc.url, [*urls, dead])  # itself too: it is skipped
        yield started[0], started[1]
    finally:
        for proc in started:
            proc.stop()


def test_feedback_sent_to_the_other_pod_reaches_the_pod_that_answered(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = pair
    labelled, correct = (
        _metric(a.url, f"roost_{n}_predictions_total") for n in ("labelled", "correct")
    )
    predicted = _infer(a.url, "req-1", ROWS)
    single = _infer(a.url, "req-2", ROWS[:1])
    answer = _feedback(b.url, {"feedback": [
        {"id": "req-1", "truth": [*predicted[:2], predicted[2] + 1]},  # two of three right
        {"id": "req-2", "truth": single[0]},
        {"id": "never-seen", "truth": 1},
    ]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    outcomes = answer.json()["outcomes"]
    assert outcomes["joined"] == 2
    assert outcomes["unknown"] == 1
    assert outcomes["forwarded"] == 2
    assert _metric(a.url, "roost_labelled_predictions_total") == labelled + 4
    assert _metric(a.url, "roost_correct_predictions_total") == correct + 3
    assert _metric(b.url, "roost_labelled_predictions_total") == 0
    # The same labels again, now straight to the pod that answered: duplicates.
    again = _feedback(a.url, {"id": "req-2", "truth": single[0]}).json()["outcomes"]
    assert again["duplicate"] == 1
    assert again["joined"] == 0
    # Through the other pod too (the peer says duplicate, which beats "never seen").
    again = _feedback(b.url, {"id": "req-1", "truth": predicted}).json()["outcomes"]
    assert again["duplicate"] == 1


def test_forwarded_feedback_is_never_forwarded_again(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = pair
    before = _metric(a.url, "roost_labelled_predictions_total")
    _infer(a.url, "req-x", ROWS[:1])
    answer = _feedback(b.url, {"id": "req-x", "truth": 1}, **{"roost-feedback-forwarded": "1"})
    body = answer.json()
    assert body["outcomes"]["unknown"] == 1
    assert body["results"] == ["unknown"]
    assert _metric(a.url, "roost_labelled_predictions_total") == before


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"feedback": []}', "non-empty list"),
        (b'{"id": 5, "truth": 1}', "feedback[0].id"),
        (b'{"id": "a"}', "feedback[0].truth is missing"),
        (b'{"feedback": [{"id": "a", "truth": 1}, 3]}', "feedback[1] must be an object"),
    ],
)
def test_a_malformed_body_is_a_400_with_the_oip_error_body(
    pair: tuple[ServeProcess, ServeProcess], body: bytes, fragment: str
) -> None:
    a, _ = pair
    answer = httpx.post(a.url + "/v2/models/forest/feedback", content=body, timeout=10)
    assert answer.status_code == 400
    assert fragment in answer.json()["error"]


def test_unknown_model_and_wrong_method(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, _ = pair
    answer = httpx.post(a.url + "/v2/models/other/feedback", json={"id": "a", "truth": 1})
    assert answer.status_code == 404
    assert "unknown model" in answer.json()["error"]
    answer = httpx.get(a.url + "/v2/models/forest/feedback")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"


def test_static_peers_apply_until_the_runtime_config_names_them(
    serving_models: dict[str, Path],
) -> None:
    from roost_serving.config import Settings

    settings = Settings(model="m.onnx", feedback_peers=("http://127.0.0.1:1",))
    plane = DataPlane(settings, CollectorRegistry())
    assert plane.truth.peer_urls == ["http://127.0.0.1:1"]
    plane.runtime.apply({"version": "a", "sections": {"peers": {"pods": [
        {"pod": "x", "revision": "r", "role": "canary", "url": "http://127.0.0.2:8080"}, {"pod": 1},
    ]}}})  # fmt: skip
    assert plane.truth.peer_urls == ["http://127.0.0.2:8080"]
    plane.runtime.apply({"version": "b", "sections": {}})
    assert plane.truth.peer_urls == ["http://127.0.0.1:1"]


def test_each_item_reaches_the_truth_hooks_of_exactly_one_pod(
    serving_models: dict[str, Path], start_server: type[RunningServer]
) -> None:
    """The inference log's hook: the joining pod logs a joined item, the receiving pod the
    items nobody joined, so each lands in the log once."""
    settings = Settings(model=str(serving_models["forest"]), name="forest")
    a, b = start_server(settings), start_server(settings)
    a.plane.truth.peer_urls, b.plane.truth.peer_urls = [b.url], [a.url]
    heard: dict[str, list[tuple[str, object, str]]] = {"a": [], "b": []}
    a.plane.truth.feedback.on_truth.append(lambda *item: heard["a"].append(item))
    b.plane.truth.feedback.on_truth.append(lambda *item: heard["b"].append(item))
    label = _infer(a.url, "hook-1", ROWS[:1])[0]
    body = {"feedback": [{"id": "hook-1", "truth": label}, {"id": "nobody", "truth": 2}]}
    assert _feedback(b.url, body).json()["outcomes"]["joined"] == 1
    assert heard == {"a": [("hook-1", label, "joined")], "b": [("nobody", 2, "unknown")]}
