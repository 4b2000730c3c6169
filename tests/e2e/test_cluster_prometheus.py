"""Prometheus discovers serving pods through the apiserver and scrapes them by pod IP, and the
traffic helper splits requests across Ready pods in proportion to replicas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from roost_devcluster.kubeapi import KubeApi, api_path
from roost_devcluster.prometheus import Prometheus
from roost_devcluster.traffic import Traffic
from roost_devcluster.waiting import wait_for, wait_pods_ready

pytestmark = pytest.mark.e2e


def _deployment(name: str, replicas: int, model: Path) -> dict[str, Any]:
    labels = {
        "app": name,
        "roost.dev/serving": "true",
        "roost.dev/modeldeployment": "wine",
        "roost.dev/revision": name,
    }
    container = {
        "name": "server",
        "image": "ghcr.io/roost-dev/roost-serving:0.1.0",
        "command": ["roost", "serve"],
        "env": [
            {"name": "ROOST_MODEL", "value": f"file://{model}"},
            {"name": "ROOST_NAME", "value": "wine"},
            {"name": "ROOST_REVISION", "value": name},
            {"name": "ROOST_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 1,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]},
            },
        },
    }


def test_traffic_splits_by_replicas_and_prometheus_scrapes_pods(
    kube_api: KubeApi, namespace: str, example_models: dict[str, Path], prometheus: Prometheus
) -> None:
    for name, replicas in (("stable", 3), ("canary", 1)):
        kube_api.create(
            api_path("apps/v1", "deployments", namespace),
            _deployment(name, replicas, example_models["wine-v1"] / "model.onnx"),
        )
    wait_pods_ready(kube_api, namespace, "roost.dev/modeldeployment=wine", 4, timeout=120)

    rows = json.loads((example_models["wine-v1"] / "sample.json").read_text())["rows"]
    with Traffic(kube_api, namespace, "wine", rows, rate=100, duration=30, count=200) as traffic:
        traffic.wait()
    assert traffic.sent == 200
    assert traffic.codes == {200: 200}
    # Round-robin over 4 Ready pods: 3 of 4 requests go to the stable revision.
    assert traffic.by_revision == {("stable", 200): 150, ("canary", 200): 50}
    assert sorted(traffic.by_pod.values()) == [50, 50, 50, 50]

    query = f'sum by (pod, revision) (roost_requests_total{{namespace="{namespace}", code="200"}})'

    def scraped_all() -> list[dict[str, Any]] | None:
        result = prometheus.query(query)
        total = sum(float(r["value"][1]) for r in result)
        return result if len(result) == 4 and total == 200 else None

    result = wait_for(scraped_all, 90, "Prometheus to scrape 200 requests from 4 pods")
    per_revision: dict[str, float] = {}
    for series in result:
        assert series["metric"]["pod"].startswith(series["metric"]["revision"])
        revision = series["metric"]["revision"]
        per_revision[revision] = per_revision.get(revision, 0) + float(series["value"][1])
    assert per_revision == {"stable": 150.0, "canary": 50.0}


def test_traffic_refuses_nothing_and_stops_when_no_pods(kube_api: KubeApi, namespace: str) -> None:
    # No pods at all: the run ends at its duration having sent nothing.
    with Traffic(kube_api, namespace, "absent", [[0.0] * 13], rate=10, duration=1) as traffic:
        traffic.wait()
    assert traffic.sent == 0
    assert traffic.no_target_waits > 0
