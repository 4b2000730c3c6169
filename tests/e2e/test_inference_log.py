"""The inference log and ``s3://`` models end to end, against the real S3 server (versitygw).

One short rollout: wine-v1 (stable) then wine-v2 (canary, promoted), both read by the serving
pods from ``s3://`` with the endpoint and keys from a Secret (``spec.model.credentials``), and
``spec.logging`` writing every request to another bucket. Every request the traffic got a 200
for is in the log, under the pod that answered it and that pod's revision; the old stable's
pods, deleted at promotion, flushed theirs on SIGTERM.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from e2e.operator_fixtures import operator_process
from e2e.test_canary_scenarios import ANALYSIS, Rollout, rollout
from roost_devcluster import modeldeployments as mds
from roost_devcluster.kubeapi import api_path
from roost_devcluster.s3server import S3Server
from roost_serving.log_reader import read_log

__all__ = ["operator_process", "rollout"]

pytestmark = pytest.mark.e2e


def _upload(s3: S3Server, bucket: str, models: dict[str, Path], names: list[str]) -> None:
    fs = s3.filesystem()
    for name in names:
        for file in ("model.onnx", "profile.json"):
            fs.put(str(models[name] / file), f"{bucket}/{name}/{file}")


def test_rollout_from_s3_logs_every_answer_with_its_pod_and_revision(
    rollout: Rollout, s3_server: S3Server
) -> None:
    ns = rollout.namespace
    models_bucket, logs_bucket = f"models-{ns}"[:63], f"logs-{ns}"[:63]
    s3_server.make_bucket(models_bucket)
    s3_server.make_bucket(logs_bucket)
    _upload(s3_server, models_bucket, rollout.models, ["wine-v1", "wine-v2"])
    rollout.api.create(
        api_path("v1", "secrets", ns),
        {"metadata": {"name": "s3"}, "stringData": s3_server.env()},
    )
    log_uri = f"s3://{logs_bucket}/inference"

    def apply(name: str, steps: list[dict[str, str | int]]) -> None:
        uri = f"s3://{models_bucket}/{name}"
        spec = {
            "model": {
                "uri": f"{uri}/model.onnx",
                "profileUri": f"{uri}/profile.json",
                "credentials": {"secretName": "s3"},
            },
            "logging": {"uri": log_uri, "format": "parquet", "sampleRate": 1.0},
            # Files every second, so the stable's records are there without a shutdown.
            "server": {"env": [{"name": "ROOST_LOG_ROTATE_SECONDS", "value": "1"}]},
        }
        analysis = {**ANALYSIS, "gates": {"errorRate": {"margin": 0.05}}}
        body = mds.manifest(ns, rollout.models[name], "wine", 2, steps, analysis, **spec)
        mds.apply(rollout.api, body)

    apply("wine-v1", [{"weight": 50, "pause": "4s"}])
    stable = rollout.wait(lambda: (rollout.status().get("stable") or {}).get("revision"), "stable")
    rollout.wait(lambda: rollout.ready_pods(stable, 2), f"2 Ready pods of {stable} (from s3)")
    revision_of = {p["metadata"]["name"]: stable for p in rollout.pods(stable)}
    with rollout.traffic(seconds=120) as traffic:
        apply("wine-v2", [{"weight": 50, "pause": "6s"}])
        canary = rollout.new_canary(stable)
        rollout.wait(lambda: rollout.ready_pods(canary, 1), "a Ready canary")
        revision_of.update({p["metadata"]["name"]: canary for p in rollout.pods(canary)})
        rollout.verdict("Promoted", "inference-log")
        rollout.wait(lambda: rollout.ready_pods(canary, 2), "the promoted revision at 2 pods")
        revision_of.update({p["metadata"]["name"]: canary for p in rollout.pods(canary)})
        traffic.stop()
    answered = Counter({pod: n - traffic.failed_by_pod[pod] for pod, n in traffic.by_pod.items()})
    assert {revision_of[pod] for pod in answered} == {stable, canary}, answered

    def logged() -> Counter[str] | None:
        frame = read_log(log_uri, **s3_server.storage_options)
        counts = Counter(frame[frame["status"] == 200]["pod"])
        return counts if counts == +answered else None

    rollout.wait(logged, f"every answered request in {log_uri}: {dict(answered)}", timeout=60)
    frame = read_log(log_uri, **s3_server.storage_options)
    pairs = set(zip(frame["pod"], frame["revision"], strict=True))
    assert pairs == {(pod, revision_of[pod]) for pod in +answered}
    assert set(frame["model"]) == {"wine"}
    assert all(len(row["X"]) == 1 and len(row["X"][0]) == 13 for row in frame["inputs"])
    assert all(len(out["label"]) == 1 for out in frame["outputs"])
