"""Runtime configuration: the serving endpoint and the operator's push, over real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from roost_devcluster.net import free_port
from roost_operator.builders import Owner
from roost_operator.pods import PodTarget, RevisionPods
from roost_operator.rollout import RevisionRef, RolloutState
from roost_operator.runtime_push import (
    RuntimeContext,
    RuntimePusher,
    build_document,
    peers_section,
    secret_manifest,
)
from roost_operator.spec import parse_spec
from roost_serving.config import Settings

RunningServer = Any  # tests/unit/serving/conftest.py; its fixtures type it

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "/v2/roost/runtime"


@pytest.fixture
def server(
    start_server: type[RunningServer],
    serving_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> RunningServer:
    monkeypatch.setenv("ROOST_RUNTIME_TOKEN", TOKEN)
    return start_server(Settings(model=str(serving_models["forest"]), name="forest", revision="r1"))


def test_put_needs_the_bearer_token(server: RunningServer) -> None:
    doc = {"version": "v1", "sections": {}}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.put(server.url + URL, json=doc, headers=headers)
        assert r.status_code == 401, r.text
        assert "Bearer" in r.json()["error"]
    assert httpx.get(server.url + URL).status_code == 401
    assert server.plane.runtime.version is None


def test_without_a_token_the_endpoint_is_off(
    start_server: type[RunningServer],
    serving_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROOST_RUNTIME_TOKEN", raising=False)
    server = start_server(Settings(model=str(serving_models["forest"]), name="forest"))
    r = httpx.put(server.url + URL, json={"version": "v1"}, headers=AUTH)
    assert r.status_code == 403
    assert "ROOST_RUNTIME_TOKEN" in r.json()["error"]


def test_a_pushed_document_is_held_exposed_and_announced(server: RunningServer) -> None:
    seen: list[object] = []
    server.plane.runtime.subscribe("peers", seen.append)
    doc = {"version": "abc", "sections": {"peers": {"pods": [{"pod": "p"}]}, "other": {}}}
    r = httpx.put(server.url + URL, json=doc, headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {"version": "abc"}
    assert httpx.get(server.url + URL, headers=AUTH).json() == doc
    assert server.metric("roost_runtime_config_info", model="forest", revision="r1", version="abc")
    assert server.plane.runtime.section("peers") == {"pods": [{"pod": "p"}]}
    # The same section again is no change; removing it is one.
    httpx.put(server.url + URL, json={**doc, "version": "abd"}, headers=AUTH)
    httpx.put(server.url + URL, json={"version": "abe", "sections": {}}, headers=AUTH)
    assert seen == [None, {"pods": [{"pod": "p"}]}, None]
    assert (
        server.metric("roost_runtime_config_info", model="forest", revision="r1", version="abc")
        is None
    )
    assert server.metric("roost_runtime_config_info", model="forest", revision="r1", version="abe")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be an object"),
        (b'{"sections": {}}', "version must be a string"),
        (b'{"version": "v", "sections": []}', "sections must be an object"),
        (b'{"version": "v", "sections": {"a": 1}}', "section 'a' must be an object"),
        (b'{"version": "' + b"x" * 200 + b'"}', "version must be a string"),
    ],
)
def test_bad_documents_are_refused_and_change_nothing(
    server: RunningServer, body: bytes, fragment: str
) -> None:
    r = httpx.put(server.url + URL, content=body, headers=AUTH)
    assert r.status_code == 400
    assert fragment in r.json()["error"]
    assert server.plane.runtime.version is None


def test_an_oversized_document_is_refused(server: RunningServer) -> None:
    body = b'{"version": "v", "sections": {"a": {"x": "' + b"y" * (2 << 20) + b'"}}}'
    r = httpx.put(server.url + URL, content=body, headers=AUTH)
    assert r.status_code == 413


# --- the operator side -------------------------------------------------------------------------

SPEC = {"model": {"uri": "file:///m.onnx"}, "replicas": 2}
OWNER = Owner("md", "ns", "uid-1")


def _pod(server_url: str, name: str) -> PodTarget:
    host, port = server_url.removeprefix("http://").split(":")
    return PodTarget(name=name, uid=f"uid-{name}", ip=host, port=int(port))


def _context(pods: dict[str, RevisionPods]) -> RuntimeContext:
    state = RolloutState(RevisionRef("r1", "m"), None, None, (), {})
    return RuntimeContext(OWNER, parse_spec(SPEC), state, pods)


def test_peers_list_the_stable_and_canary_pods_and_the_version_follows_them() -> None:
    a, b = PodTarget("a", "ua", "127.0.0.2", 8080), PodTarget("b", "ub", "127.0.0.3", 9000)
    ctx = _context({"r1": RevisionPods(1, 1, (a,)), "old": RevisionPods(1, 1, (b,))})
    assert peers_section(ctx) == {
        "pods": [{"pod": "a", "revision": "r1", "role": "stable", "url": "http://127.0.0.2:8080"}]
    }
    first = build_document(ctx)
    assert first == build_document(ctx)
    moved = build_document(_context({"r1": RevisionPods(2, 2, (a, b))}))
    assert moved["version"] != first["version"]


def test_the_secret_holds_the_token_base64_and_is_owned() -> None:
    secret = secret_manifest(OWNER, "tok")
    assert secret["metadata"]["name"] == "md-runtime"
    assert secret["data"] == {"token": "dG9r"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_the_pusher_brings_pods_to_the_version_and_survives_an_unreachable_one(
    server: RunningServer,
) -> None:
    live = _pod(server.url, "live")
    dead = PodTarget("dead", "uid-dead", "127.0.0.1", free_port())
    ctx = _context({"r1": RevisionPods(2, 2, (live, dead))})
    pusher = RuntimePusher(applier=None)  # type: ignore[arg-type]  # no Secrets read here

    async def run() -> tuple[list[str], list[str], list[str], list[str]]:
        try:
            first = await pusher.push(ctx, TOKEN)
            pusher._confirmed.clear()  # as after RECHECK_SECONDS: ask the pod again
            second = await pusher.push(ctx, TOKEN)
            return first.pushed, list(first.failed), second.current, second.pushed
        finally:
            await pusher.close()

    pushed, failed, current, pushed_again = asyncio.run(run())
    assert (pushed, failed, current, pushed_again) == (["live"], ["dead"], ["live"], [])
    document = build_document(ctx)
    assert server.plane.runtime.version == document["version"]
    assert server.plane.runtime.section("peers") == document["sections"]["peers"]


def test_a_wrong_token_is_reported_not_raised(server: RunningServer) -> None:
    ctx = _context({"r1": RevisionPods(1, 1, (_pod(server.url, "live"),))})
    pusher = RuntimePusher(applier=None)  # type: ignore[arg-type]

    async def run() -> dict[str, str]:
        try:
            return (await pusher.push(ctx, "wrong")).failed
        finally:
            await pusher.close()

    assert "401" in asyncio.run(run())["live"]
    assert server.plane.runtime.version is None
