"""Canary rollouts driven by the operator with real serving pods and bounded live traffic.

wine-v2 walks every step and is promoted (its pods keep running); wine-constant, a model that
predicts one class, is rolled back on the divergence gate and the stable revision keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crd_install import install_crd
from e2e.operator_fixtures import OperatorProcess, operator_process
from kubernetes import client
from roost_devcluster.kubeapi import KubeApi, api_path
from roost_devcluster.traffic import Traffic
from roost_devcluster.waiting import wait_for, wait_pods_ready

__all__ = ["operator_process"]

pytestmark = pytest.mark.e2e

MD = "/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments"


def manifest(namespace: str, model: Path) -> dict[str, Any]:
    return {
        "apiVersion": "roost.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "wine", "namespace": namespace},
        "spec": {
            "model": {
                "uri": (model / "model.onnx").as_uri(),
                "profileUri": (model / "profile.json").as_uri(),
            },
            "replicas": 2,
            "rollout": {
                "steps": [{"weight": 50, "pause": "4s"}],
                "analysis": {
                    "interval": "2s",
                    "minRequests": 10,
                    "failureLimit": 2,
                    "gates": {"errorRate": {"margin": 0.05}, "divergence": {"margin": 0.1}},
                },
            },
        },
    }


def status(api: KubeApi, ns: str) -> dict[str, Any]:
    return dict(api.get(f"{MD.format(ns=ns)}/wine").get("status") or {})


def test_good_model_promoted_constant_model_rolled_back(
    kube: client.ApiClient,
    kube_api: KubeApi,
    namespace: str,
    example_models: dict[str, Path],
    operator_process: Callable[[str], OperatorProcess],
) -> None:
    install_crd(kube)
    op = operator_process(namespace)
    path = MD.format(ns=namespace)
    kube_api.apply(f"{path}/wine", manifest(namespace, example_models["wine-v1"]), manager="test")
    wait_pods_ready(kube_api, namespace, "roost.dev/modeldeployment=wine", 2, timeout=120)
    v1 = wait_for(lambda: (status(kube_api, namespace).get("stable") or {}).get("revision"), 60)
    rows = json.loads((example_models["wine-v1"] / "sample.json").read_text())["rows"]

    with Traffic(kube_api, namespace, "wine", rows, rate=40, duration=240):
        kube_api.apply(
            f"{path}/wine", manifest(namespace, example_models["wine-v2"]), manager="test"
        )
        canary = wait_for(
            lambda: (status(kube_api, namespace).get("canary") or {}).get("revision"),
            60,
            what="a canary",
        )
        assert canary != v1
        promoted = wait_for(
            lambda: (status(kube_api, namespace).get("stable") or {}).get("revision") == canary,
            120,
            what="promotion of wine-v2",
        )
        assert promoted, op.log()[-3000:]
        st = status(kube_api, namespace)
        assert st["history"][-1]["outcome"] == "Promoted"
        assert not st.get("canary")
        wait_for(
            lambda: (
                [
                    d["metadata"]["name"]
                    for d in kube_api.get(
                        api_path("apps/v1", "deployments", namespace),
                        labelSelector="roost.dev/modeldeployment=wine",
                    )["items"]
                ]
                == [f"wine-{canary}"]
            ),
            60,
            what="the old stable Deployment removed",
        )
        assert op.metric("roost_operator_rollouts_total", {"outcome": "Promoted"}) == 1

        kube_api.apply(
            f"{path}/wine", manifest(namespace, example_models["wine-constant"]), manager="test"
        )

        def rolled_back() -> dict[str, Any] | None:
            st = status(kube_api, namespace)
            history = st.get("history") or []
            return st if history and history[-1]["outcome"] == "RolledBack" else None

        st = wait_for(rolled_back, 150, what="rollback of wine-constant")
    assert "divergence" in st["history"][-1]["reason"]
    assert st["stable"]["revision"] == canary
    assert st["failedRevision"]
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    assert stalled["reason"] == "CanaryRolledBack"
    # One failing analysis suffices: the sequential gate is worse than its margin with
    # confidence, so no failureLimit applies on top.
    assert op.metric("roost_operator_analysis_total", {"verdict": "fail"}) >= 1
