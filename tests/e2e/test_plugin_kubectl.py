"""`kubectl roost` as a subprocess against the real apiserver: requests, pause, status, history.

The operator's reaction to the requests is tested with the operator; here the plugin's own
effect on the object (annotations, spec.paused) and its reading of a real status are checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from crd_install import install_crd
from kubernetes import client
from roost_operator.gates import RevisionWindow, evaluate
from roost_operator.spec import parse_spec

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "roost.dev", "v1alpha1", "modeldeployments"
BIN = Path(sys.executable).parent


def _roost(kubeconfig: Path, namespace: str, *args: str, check: bool = True) -> str:
    """Run `kubectl roost ...` the way a user does: kubectl finds kubectl-roost on PATH."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed on PATH"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [kubectl, "roost", "--kubeconfig", str(kubeconfig), "-n", namespace, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def _get(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "iris"
    )
    return cast(dict[str, Any], obj)


@pytest.fixture
def md(kube: client.ApiClient, namespace: str) -> None:
    install_crd(kube)
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "iris"},
            "spec": {
                "model": {"uri": "file:///models/iris/model.onnx"},
                "replicas": 4,
                "rollout": {"steps": [{"weight": 25, "pause": "30s"}]},
            },
        },
    )


@pytest.mark.usefixtures("md")
@pytest.mark.parametrize("verb", ["promote", "abort", "retry"])
def test_requests_set_a_fresh_timestamp_annotation(
    kube: client.ApiClient, namespace: str, kubeconfig: Path, verb: str
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    out = _roost(kubeconfig, namespace, verb, "iris")
    assert f'{verb} requested for modeldeployment "iris"' in out
    token = _get(kube, namespace)["metadata"]["annotations"][f"roost.dev/{verb}"]
    assert datetime.fromisoformat(token.replace("Z", "+00:00")) >= before
    # A second request is a new token, so the operator acts on it again.
    _roost(kubeconfig, namespace, verb, "iris")
    assert _get(kube, namespace)["metadata"]["annotations"][f"roost.dev/{verb}"] != token


@pytest.mark.usefixtures("md")
def test_pause_and_resume_patch_spec(
    kube: client.ApiClient, namespace: str, kubeconfig: Path
) -> None:
    generation = _get(kube, namespace)["metadata"]["generation"]
    assert 'modeldeployment "iris" paused' in _roost(kubeconfig, namespace, "pause", "iris")
    md = _get(kube, namespace)
    assert md["spec"]["paused"] is True
    assert md["metadata"]["generation"] == generation + 1
    assert md["spec"]["replicas"] == 4  # a merge patch leaves the rest of the spec alone
    _roost(kubeconfig, namespace, "resume", "iris")
    assert _get(kube, namespace)["spec"]["paused"] is False


@pytest.mark.usefixtures("md")
def test_status_and_history_read_a_real_status(
    kube: client.ApiClient, namespace: str, kubeconfig: Path, tmp_path: Path
) -> None:
    assert "No revision serves yet." in _roost(kubeconfig, namespace, "status", "iris")
    # The status as the operator writes it, through the status subresource and its schema.
    gates = {"errorRate": {"margin": 0.05}, "latency": {"maxP99Seconds": 0.5}}
    spec = parse_spec(
        {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": {"gates": gates}}}
    )
    evidence = None
    for _ in range(6):  # the sequential tests judge after 6 intervals (sequential.MIN_INTERVALS)
        analysis = evaluate(
            RevisionWindow(requests={"200": 800, "500": 200}, p99_seconds=0.01),
            RevisionWindow(requests={"200": 3000}, p99_seconds=0.01),
            spec.rollout.analysis,
            datetime(2026, 3, 1, 12, 0, 50, tzinfo=UTC),
            (),
            evidence,
        )
        evidence = analysis.evidence
    status = {
        "observedGeneration": 1,
        "replicas": 4,
        "readyReplicas": 4,
        "selector": "roost.dev/modeldeployment=iris",
        "stable": {"revision": "5f2c1a9b0d", "modelUri": "file:///v1.onnx", "readyReplicas": 3},
        "canary": {
            "revision": "a1b2c3d4e5",
            "modelUri": "file:///models/iris/model.onnx",
            "step": 0,
            "weight": 25,
            "stepStartedAt": "2026-03-01T12:00:30Z",
            "readyReplicas": 1,
            "consecutiveFailures": 1,
            "analysisCount": 3,
            "lastAnalysis": analysis.to_status(),
            "evidence": analysis.evidence,
        },
        "history": [
            {
                "revision": "5f2c1a9b0d",
                "modelUri": "file:///v1.onnx",
                "outcome": "Promoted",
                "reason": "all steps passed",
                "startedAt": "2026-03-01T11:00:00Z",
                "finishedAt": "2026-03-01T11:02:00Z",
            }
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "StableServing",
                "message": "stable revision serves",
                "lastTransitionTime": "2026-03-01T11:02:00Z",
            }
        ],
    }
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "iris",
        {"status": status},
        _content_type="application/merge-patch+json",
    )
    # Nothing of the analysis was pruned by the schema.
    stored = _get(kube, namespace)["status"]["canary"]
    assert stored["lastAnalysis"] == analysis.to_status()
    assert stored["evidence"] == analysis.evidence

    out = _roost(kubeconfig, namespace, "status", "iris")
    assert "a1b2c3d4e5  canary  25%" in out
    assert "5f2c1a9b0d  stable  75%" in out
    assert "Last analysis 2026-03-01T12:00:50Z: fail (5xx +20.00 pp" in out
    assert "errorRate (enforce): 5xx +20.00 pp [" in out
    assert "margin +5.00 pp: worse than margin" in out

    plot = tmp_path / "history.png"
    out = _roost(kubeconfig, namespace, "history", "iris", "--plot", str(plot))
    assert "5f2c1a9b0d  Promoted" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_unknown_modeldeployment_is_a_readable_error(
    kube: client.ApiClient, namespace: str, kubeconfig: Path
) -> None:
    install_crd(kube)
    out = _roost(kubeconfig, namespace, "promote", "nope", check=False)
    assert f'error: modeldeployment "nope" not found in namespace "{namespace}"' in out
