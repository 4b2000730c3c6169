"""Smoke test of the dev cluster: kubectl works with the written kubeconfig, and a Deployment
of the real ``roost serve`` runs as local processes on loopback pod IPs, with readiness from
real probes, restarts reported like a kubelet's and processes stopped on deletion.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from roost_devcluster.kubeapi import KubeApi, api_path
from roost_devcluster.waiting import container_status, list_pods, wait_for, wait_pods_ready

pytestmark = pytest.mark.e2e

SELECTOR = "app=smoke"
WINE_ROW = [13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050.0]


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed on PATH"
    done = subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def _deployment(namespace: str, model_uri: str) -> str:
    return textwrap.dedent(
        f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: smoke, namespace: {namespace}}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: smoke}}}}
          template:
            metadata:
              labels: {{app: smoke, roost.dev/serving: "true", roost.dev/modeldeployment: smoke}}
            spec:
              terminationGracePeriodSeconds: 5
              containers:
              - name: server
                image: ghcr.io/roost-dev/roost-serving:0.1.0
                command: ["roost", "serve"]
                env:
                - {{name: ROOST_MODEL, value: "{model_uri}"}}
                - {{name: ROOST_PORT, value: "8080"}}
                - name: ROOST_HOST
                  valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
                ports: [{{name: http, containerPort: 8080}}]
                readinessProbe:
                  httpGet: {{path: /v2/health/ready, port: http}}
                  periodSeconds: 1
                  failureThreshold: 1
        """
    )


def _infer(ip: str) -> dict[str, Any]:
    body = {"inputs": [{"name": "X", "shape": [1, 13], "datatype": "FP32", "data": WINE_ROW}]}
    resp = httpx.post(f"http://{ip}:8080/v2/models/model/infer", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _pid(pod: dict[str, Any]) -> int:
    container_id = container_status(pod)["containerID"]
    assert container_id.startswith("roost://"), container_id
    return int(container_id.removeprefix("roost://"))


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_kubectl_sees_nodes_and_applies_server_side(kubeconfig: Path, namespace: str) -> None:
    nodes = _kubectl(kubeconfig, "get", "nodes", "-o", "name").split()
    assert nodes == ["node/kwok-node-0", "node/kwok-node-1"]
    cidrs = _kubectl(kubeconfig, "get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}")
    assert all(c.startswith("127.") for c in cidrs.split())
    manifest = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: cm, namespace: {namespace}}}
data: {{a: b}}
"""
    out = _kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifest)
    assert "serverside-applied" in out
    managers = _kubectl(
        kubeconfig, "get", "configmap", "cm", "-n", namespace, "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    )  # fmt: skip
    assert managers == "kubectl"


def test_serving_deployment_runs_restarts_and_stops(
    kubeconfig: Path, kube_api: KubeApi, namespace: str, example_models: dict[str, Path]
) -> None:
    _kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=_deployment(namespace, f"file://{example_models['wine-v1'] / 'model.onnx'}"),
    )
    _kubectl(
        kubeconfig,
        "wait",
        "-n",
        namespace,
        "--for=condition=Available",
        "deployment/smoke",
        "--timeout=120s",
    )
    pods = wait_pods_ready(kube_api, namespace, SELECTOR, 2)

    ips = sorted(p["status"]["podIP"] for p in pods)
    assert len(set(ips)) == 2
    assert all(ip.startswith("127.") for ip in ips)
    for pod in pods:
        # Ready came from the server's own answer: its readiness endpoint says 200 on the pod IP.
        assert httpx.get(f"http://{pod['status']['podIP']}:8080/v2/health/ready").status_code == 200
        status = container_status(pod)
        assert status["restartCount"] == 0, status
        outputs = _infer(pod["status"]["podIP"])["outputs"]
        assert outputs, "the model answered with no outputs"

    victim = pods[0]
    name = victim["metadata"]["name"]
    old_pid = _pid(victim)
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        pod = kube_api.get(api_path("v1", "pods", namespace, name))
        status = container_status(pod)
        return pod if status.get("restartCount") == 1 and status.get("ready") else None

    pod = wait_for(restarted, 60, f"{name} to restart once and be Ready again")
    terminated = container_status(pod)["lastState"]["terminated"]
    assert terminated["exitCode"] == 137  # SIGKILL, reported as 128 + 9 like a kubelet
    assert terminated["reason"] == "Error"
    assert _pid(pod) != old_pid
    _infer(pod["status"]["podIP"])

    pids = [_pid(p) for p in list_pods(kube_api, namespace, SELECTOR)]
    _kubectl(kubeconfig, "delete", "-n", namespace, "deployment/smoke", "--wait=true")
    wait_for(lambda: not list_pods(kube_api, namespace, SELECTOR), 60, "the pods to be removed")
    wait_for(lambda: all(_process_gone(pid) for pid in pids), 30, f"processes {pids} to exit")


def test_model_that_cannot_load_crash_loops_with_its_error(
    kubeconfig: Path, kube_api: KubeApi, namespace: str, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.onnx"
    manifest = _deployment(namespace, f"file://{missing}").replace("replicas: 2", "replicas: 1")
    _kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=manifest)

    def crash_looping() -> dict[str, Any] | None:
        pods = list_pods(kube_api, namespace, SELECTOR)
        status = container_status(pods[0]) if pods else {}
        return status if status.get("restartCount", 0) >= 1 and status.get("lastState") else None

    status = wait_for(crash_looping, 90, "the server to crash and be restarted")
    assert status["ready"] is False
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 1
    assert "roost: error:" in terminated["message"]
    assert str(missing) in terminated["message"]
