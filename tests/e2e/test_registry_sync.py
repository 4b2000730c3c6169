"""`RegistrySync` (resolve, poll, write back) against a real MLflow server; no cluster needed."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer
from roost_operator import provenance
from roost_operator.planner import ModelDeploymentObject
from roost_operator.registry_sync import RegistrySync

pytestmark = pytest.mark.e2e
NOW = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def _register(client: MlflowClient, exp: str, directory: Path, tag: bool = True) -> str:
    run = client.create_run(exp)
    for name in ("model.onnx", "profile.json"):
        client.log_artifact(run.info.run_id, str(directory / name), "model")
    digest = hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest()
    tags = {"roost.sha256": digest} if tag else {}
    mv = client.create_model_version(
        "wine", f"{run.info.artifact_uri}/model", run.info.run_id, tags
    )
    return str(mv.version)


def _md(
    url: str, status: dict[str, Any] | None = None, uri: str = "models:/wine@champion"
) -> ModelDeploymentObject:
    spec = {"model": {"uri": uri, "registry": {"trackingUri": url, "pollInterval": "1s"}}}
    return ModelDeploymentObject("wine", "ns", "uid", 1, spec, status or {})


def test_resolve_poll_fail_over_and_write_back(
    tmp_path: Path, example_models: dict[str, Path]
) -> None:
    with MlflowServer(tmp_path / "mlflow") as server:
        client = MlflowClient(server.url)
        client.create_registered_model("wine")
        exp = client.create_experiment("wine")
        v1 = _register(client, exp, example_models["wine-v1"], tag=False)  # hashed by roost
        client.set_registered_model_alias("wine", "champion", v1)

        async def scenario() -> None:
            sync = RegistrySync(applier=None)  # type: ignore[arg-type]  # no Secrets here
            try:
                first = await sync.prepare(_md(server.url), NOW)
                assert first.plan is None
                assert first.resolution is not None
                want = hashlib.sha256((example_models["wine-v1"] / "model.onnx").read_bytes())
                assert first.resolution.sha256 == want.hexdigest()  # no tag: hashed over HTTP
                assert first.md.spec["model"]["uri"] == first.resolution.model_uri
                status = {"model": first.resolution.to_status()}

                v2 = _register(client, exp, example_models["wine-v2"])
                client.set_registered_model_alias("wine", "champion", v2)
                await asyncio.sleep(1.1)  # the poll interval
                moved = await sync.prepare(_md(server.url, status), NOW)
                if moved.resolution and moved.resolution.version == v1:
                    # The poll ran in the background; its answer is there once it is done.
                    await asyncio.sleep(1.0)
                    moved = await sync.prepare(_md(server.url, status), NOW)
                assert moved.resolution is not None
                assert moved.resolution.version == v2
                assert moved.condition is not None
                assert moved.condition.reason == "Resolved"

                # Write-back of a verdict recorded in history.
                entry = {
                    "revision": "r2",
                    "outcome": "Promoted",
                    "reason": "passed",
                    "startedAt": "t",
                    "finishedAt": "2026-12-01T07:01:00Z",
                    "version": v2,
                    "reference": "models:/wine@champion",
                    "registryWriteBack": "pending",
                }
                plan_status = await sync._write_back(
                    _md(server.url, status), {"history": [entry]}, []
                )
                assert plan_status["history"][0]["registryWriteBack"] == "done"
                mv = client.get_model_version("wine", v2)
                assert mv.tags["roost/ns/wine/outcome"] == "Promoted"
                assert "roost-ns-wine-stable" in mv.aliases

                missing = await sync.prepare(_md(server.url, uri="models:/wine@nobody"), NOW)
                assert missing.plan is not None
                stalled = provenance.conditions.find(missing.plan.status["conditions"], "Stalled")
                assert stalled is not None
                assert stalled["reason"] == "ModelReferenceUnresolvable"

                server.stop()
                status = {"model": moved.resolution.to_status()}
                await asyncio.sleep(1.1)
                down = await sync.prepare(_md(server.url, status), NOW)
                if down.condition is not None and down.condition.reason == "Resolved":
                    await asyncio.sleep(1.0)
                    down = await sync.prepare(_md(server.url, status), NOW)
                assert down.resolution == moved.resolution  # the last version keeps serving
                assert down.condition is not None
                assert down.condition.reason == "RegistryUnreachable"
                fresh = await sync.prepare(replace(_md(server.url), name="other"), NOW)
                assert fresh.plan is not None  # nothing resolved before: nothing to serve
                assert "RegistryUnreachable" in str(fresh.plan.status["conditions"])
            finally:
                await sync.close()

        asyncio.run(scenario())


def test_webhook_makes_the_alias_move_visible_before_the_poll(
    tmp_path: Path, example_models: dict[str, Path]
) -> None:
    from e2e.operator_fixtures import free_port
    from roost_operator import registry_webhook

    # MLflow delivers only to public https URLs unless told; loopback is all tests may target.
    env = {
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    }
    with MlflowServer(tmp_path / "mlflow", env) as server:
        client = MlflowClient(server.url)
        client.create_registered_model("wine")
        exp = client.create_experiment("wine")
        port = free_port()
        # Before any alias event: the server caches the list of webhooks per event for a while.
        client.create_webhook(
            "roost", f"http://127.0.0.1:{port}/mlflow", ["model_version_alias.created"],
            secret="s3cret",
        )  # fmt: skip
        v1 = _register(client, exp, example_models["wine-v1"])
        client.set_registered_model_alias("wine", "champion", v1)

        async def scenario() -> float:
            sync = RegistrySync(applier=None)  # type: ignore[arg-type]
            woken: list[tuple[str, str]] = []
            sync.wake = lambda ns, name: woken.append((ns, name))
            runner = await registry_webhook.serve(sync, port, "127.0.0.1", "s3cret")
            try:
                md = _md(server.url)
                md = replace(md, spec={**md.spec, "model": {**md.spec["model"], "registry": {
                    "trackingUri": server.url, "pollInterval": "1h"}}})  # fmt: skip
                first = await sync.prepare(md, NOW)
                assert first.resolution is not None
                status = {"model": first.resolution.to_status()}
                v2 = await asyncio.to_thread(_register, client, exp, example_models["wine-v2"])
                moved = time.monotonic()
                await asyncio.to_thread(client.set_registered_model_alias, "wine", "champion", v2)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    got = await sync.prepare(replace(md, status=status), NOW)
                    if got.resolution is not None and got.resolution.version == v2:
                        return time.monotonic() - moved
                    await asyncio.sleep(0.2)
                raise AssertionError(f"the webhook never led to version {v2}; woken {woken}")
            finally:
                await runner.cleanup()
                await sync.close()

        took = asyncio.run(scenario())
        print(f"webhook: alias move seen by the operator after {took:.2f} s (poll interval 1h)")
