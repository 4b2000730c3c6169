"""The operator against the real control plane with real serving pods (pod runner).

A ModelDeployment becomes a Deployment + Service whose pods run `roost serve`; it turns Ready
(`kubectl wait`), shows its printer columns, scales through the scale subresource without a new
revision, reports a model that cannot load as Stalled with the pod's reason, writes nothing when
restarted over unchanged objects, and its children are garbage-collected when it is deleted.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crd_install import install_crd
from e2e.operator_fixtures import OperatorProcess, operator_process
from kubernetes import client
from roost_devcluster import modeldeployments as mds
from roost_devcluster.kubeapi import KubeApi, api_path
from roost_devcluster.waiting import wait_for, wait_gone, wait_pods_ready

__all__ = ["operator_process"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.e2e


def kubectl(kubeconfig: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def manifest(namespace: str, name: str, model: Path, replicas: int = 1) -> dict[str, Any]:
    return mds.manifest(namespace, model, name, replicas)


def get_md(api: KubeApi, ns: str, name: str) -> dict[str, Any]:
    return api.get(mds.path(ns, name))


cond = mds.condition


def children(api: KubeApi, ns: str, name: str) -> dict[str, str]:
    """kind/name -> resourceVersion of every child (and the ModelDeployment itself)."""
    selector = f"roost.dev/modeldeployment={name}"
    out = {"ModelDeployment/" + name: get_md(api, ns, name)["metadata"]["resourceVersion"]}
    for version, plural in [
        ("apps/v1", "deployments"),
        ("v1", "services"),
        ("policy/v1", "poddisruptionbudgets"),
        ("autoscaling/v2", "horizontalpodautoscalers"),
    ]:
        items = api.get(api_path(version, plural, ns), labelSelector=selector)["items"]
        for item in items:
            out[f"{plural}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def test_modeldeployment_lifecycle(
    kube: client.ApiClient,
    kube_api: KubeApi,
    kubeconfig: Path,
    namespace: str,
    example_models: dict[str, Path],
    operator_process: Callable[[str], OperatorProcess],
) -> None:
    install_crd(kube)
    op = operator_process(namespace)
    kube_api.create(mds.path(namespace), manifest(namespace, "wine", example_models["wine-v1"], 2))

    # Deployment and Service appear with the contract's fields.
    selector = "roost.dev/modeldeployment=wine"
    deps = wait_for(
        lambda: kube_api.get(api_path("apps/v1", "deployments", namespace), labelSelector=selector)[
            "items"
        ],
        timeout=60,
        what="the revision's Deployment",
    )
    (dep,) = deps
    rev = dep["metadata"]["labels"]["roost.dev/revision"]
    assert dep["metadata"]["name"] == f"wine-{rev}"
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ROOST_MODEL"] == (example_models["wine-v1"] / "model.onnx").as_uri()
    assert env["ROOST_REVISION"] == rev
    assert env["ROOST_NAME"] == "wine"
    # The operator applies the children one after another: the Deployment can be seen first.
    svc = wait_for(
        lambda: kube_api.find(api_path("v1", "services", namespace, "wine")),
        timeout=30,
        what="the Service",
    )
    assert svc["spec"]["selector"]["roost.dev/modeldeployment"] == "wine"
    wait_for(
        lambda: kube_api.find(api_path("policy/v1", "poddisruptionbudgets", namespace, "wine")),
        timeout=30,
        what="the PodDisruptionBudget",
    )

    # Real serving pods become Ready, and so does the ModelDeployment.
    wait_pods_ready(kube_api, namespace, selector, 2, timeout=120)
    waited = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "wait",
        "--for=condition=Ready",
        "modeldeployment/wine",
        "--timeout=90s",
    )
    assert waited.returncode == 0, waited.stderr + op.log()[-3000:]
    md = get_md(kube_api, namespace, "wine")
    assert md["status"]["stable"]["revision"] == rev
    assert md["status"]["readyReplicas"] == 2
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    table = kubectl(kubeconfig, "-n", namespace, "get", "md")
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "READY", "STABLE", "CANARY", "WEIGHT"]
    assert row.split()[:3] == ["wine", "True", rev]

    # kubectl scale goes through the scale subresource; the revision stays.
    scaled = kubectl(kubeconfig, "-n", namespace, "scale", "modeldeployment/wine", "--replicas=3")
    assert scaled.returncode == 0, scaled.stderr
    wait_pods_ready(kube_api, namespace, selector, 3, timeout=120)
    wait_for(
        lambda: (
            get_md(kube_api, namespace, "wine")["status"].get("readyReplicas") == 3
            and cond(get_md(kube_api, namespace, "wine"), "Ready").get("status") == "True"
        ),
        timeout=60,
        what="3 ready replicas in status",
    )
    deps = kube_api.get(api_path("apps/v1", "deployments", namespace), labelSelector=selector)
    assert [d["metadata"]["name"] for d in deps["items"]] == [f"wine-{rev}"]
    assert deps["items"][0]["spec"]["replicas"] == 3

    # A restarted operator over unchanged objects writes nothing.
    before = children(kube_api, namespace, "wine")
    op.restart()
    wait_for(
        lambda: op.metric("roost_operator_reconciliations_total", {"result": "success"}) >= 1,
        timeout=60,
        what="a reconciliation by the restarted operator",
    )
    time.sleep(3)  # let any (wrong) write land
    assert children(kube_api, namespace, "wine") == before

    # Deleting the ModelDeployment garbage-collects every child.
    kube_api.delete(f"{mds.path(namespace)}/wine")
    wait_gone(kube_api, f"{mds.path(namespace)}/wine", timeout=60)
    for path in [
        api_path("apps/v1", "deployments", namespace, f"wine-{rev}"),
        api_path("v1", "services", namespace, "wine"),
        api_path("policy/v1", "poddisruptionbudgets", namespace, "wine"),
    ]:
        wait_gone(kube_api, path, timeout=90)


def test_bad_model_uri_stalls_with_the_reason(
    kube: client.ApiClient,
    kube_api: KubeApi,
    namespace: str,
    tmp_path: Path,
    operator_process: Callable[[str], OperatorProcess],
) -> None:
    install_crd(kube)
    op = operator_process(namespace)
    missing = tmp_path / "missing"
    body = manifest(namespace, "broken", missing)
    del body["spec"]["model"]["profileUri"]
    kube_api.create(mds.path(namespace), body)

    def stalled() -> dict[str, Any] | None:
        c = cond(get_md(kube_api, namespace, "broken"), "Stalled")
        return c if c.get("status") == "True" else None

    found = wait_for(stalled, timeout=120, what="Stalled=True")
    assert found["reason"] == "PodsFailing", op.log()[-2000:]
    assert "roost: error:" in found["message"]
    assert "missing" in found["message"]
    md = get_md(kube_api, namespace, "broken")
    assert cond(md, "Ready")["status"] == "False"
