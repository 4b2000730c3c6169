"""The real kube-apiserver enforces the ModelDeployment schema: CEL messages and defaults.

Uses the devcluster fixtures `kube` (kubernetes.client.ApiClient), `namespace` and
`kubeconfig`.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from crd_install import install_crd
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "roost.dev", "v1alpha1", "modeldeployments"
SHA = "0123456789abcdef" * 4


@pytest.fixture
def crd(kube: client.ApiClient) -> None:
    install_crd(kube)


def _manifest(name: str = "iris", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "file:///models/iris/model.onnx"}},
    }
    merged = copy.deepcopy(base)
    merged["spec"].update(spec)
    return merged


def _create(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return cast(dict[str, Any], created)


REJECTED = [
    pytest.param(
        _manifest(rollout={"steps": [{"weight": 20}, {"weight": 150}]}),
        "spec.rollout.steps[*].weight must be between 1 and 100",
        id="weight-150",
    ),
    pytest.param(
        _manifest(rollout={"steps": [{"weight": 50}, {"weight": 20}]}),
        "spec.rollout.steps weights must be strictly increasing",
        id="decreasing-weights",
    ),
    pytest.param(
        _manifest(rollout={"steps": [{"weight": 20}, {"weight": 20}]}),
        "spec.rollout.steps weights must be strictly increasing",
        id="repeated-weight",
    ),
    pytest.param(
        _manifest(rollout={"steps": [{"weight": 20}, {"shadow": 100}]}),
        "shadow steps come before the weighted steps",
        id="shadow-after-weight",
    ),
    pytest.param(
        _manifest(rollout={"steps": [{"shadow": 100, "weight": 20}]}),
        "has either a weight (client traffic) or a shadow share",
        id="shadow-and-weight",
    ),
    pytest.param(
        _manifest(rollout={"steps": [{"shadow": 150}]}),
        "spec.rollout.steps[0].shadow",
        id="shadow-150",
    ),
    pytest.param(
        _manifest(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas",
        id="min-above-max",
    ),
    pytest.param(
        _manifest(model={"uri": "ftp://models.example/iris.onnx"}),
        "spec.model.uri must start with one of the schemes file://, http://, https://, s3://",
        id="ftp-scheme",
    ),
    pytest.param(
        _manifest(model={"uri": "s3://b/m.onnx", "profileUri": "/local/profile.json"}),
        "spec.model.profileUri must start with one of the schemes",
        id="profile-without-scheme",
    ),
    pytest.param(
        _manifest(model={"uri": "s3://b/m.onnx", "sha256": SHA.upper()}),
        "spec.model.sha256 must be 64 lowercase hexadecimal characters",
        id="uppercase-sha256",
    ),
    pytest.param(
        _manifest(model={"uri": "s3://b/m.onnx", "sha256": "abc123"}),
        "spec.model.sha256 must be 64 lowercase hexadecimal characters",
        id="short-sha256",
    ),
    pytest.param(
        _manifest(rollout={"analysis": {"source": "prometheus"}}),
        "spec.rollout.analysis.prometheusUrl is required when source is prometheus",
        id="prometheus-without-url",
    ),
    pytest.param(
        _manifest(rollout={"steps": [{"weight": 20, "pause": "30 seconds"}]}),
        "spec.rollout.steps[*].pause must be a duration such as 30s, 2m or 1h30m",
        id="bad-pause",
    ),
    pytest.param(
        _manifest(rollout={"analysis": {"interval": "10"}}),
        "spec.rollout.analysis.interval must be a duration such as 10s or 1m",
        id="bad-interval",
    ),
    pytest.param(
        _manifest(server={"port": 9000, "grpcPort": 9000}),
        "spec.server.grpcPort and spec.server.port must be different ports",
        id="same-grpc-port",
    ),
    pytest.param(
        _manifest(rollout={"analysis": {"progressDeadline": "ten minutes"}}),
        "spec.rollout.analysis.progressDeadline must be a duration such as 10m",
        id="bad-progress-deadline",
    ),
    pytest.param(
        _manifest(rollout={"analysis": {"gates": {"errorRate": {"mode": "observe"}}}}),
        "spec.rollout.analysis.gates.errorRate needs margin",
        id="error-gate-without-margin",
    ),
    pytest.param(
        _manifest(name="m" * 53),
        "metadata.name must be at most 52 characters",
        id="long-name",
    ),
]


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize(("body", "message"), REJECTED)
def test_malformed_manifest_is_rejected_with_the_cel_message(
    kube: client.ApiClient, namespace: str, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as caught:
        _create(kube, namespace, body)
    assert caught.value.status == 422
    assert message in (caught.value.body or "")


@pytest.mark.usefixtures("crd")
def test_shadow_steps_before_weighted_ones_are_accepted(
    kube: client.ApiClient, namespace: str
) -> None:
    steps = [{"shadow": 100, "pause": "5m"}, {"weight": 20}, {"weight": 50}]
    gates = {"shadowDisagreement": {"maxRate": 0.02}}
    body = _manifest(name="shadowed", rollout={"steps": steps, "analysis": {"gates": gates}})
    created = _create(kube, namespace, body)
    assert created["spec"]["rollout"]["steps"] == steps
    shadow = created["spec"]["rollout"]["analysis"]["gates"]["shadowDisagreement"]
    assert shadow == {"maxRate": 0.02, "mode": "enforce"}


@pytest.mark.usefixtures("crd")
def test_good_manifest_is_accepted_with_defaults(kube: client.ApiClient, namespace: str) -> None:
    created = _create(
        kube,
        namespace,
        _manifest(
            model={"uri": "file:///models/iris/model.onnx", "sha256": SHA},
            resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": 1}},
            server={"env": [{"name": "OMP_NUM_THREADS", "value": "1"}]},
            autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetInflightRequests": 8},
            rollout={
                "steps": [{"weight": 20, "pause": "30s"}, {"weight": 50, "pause": "1m30s"}],
                "analysis": {"gates": {"errorRate": {"max": 0.05}}},
            },
            traffic={"httpRoute": {"name": "iris", "parentRefs": [{"name": "gw"}]}},
        ),
    )
    spec = created["spec"]
    assert spec["replicas"] == 1
    assert spec["paused"] is False
    assert spec["server"] == {
        "port": 8080,
        "grpcPort": 8081,
        "maxBatchSize": 32,
        "maxDelayMs": 2,
        "threads": 1,
        "driftWindow": 2000,
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
    }
    assert spec["rollout"]["analysis"] == {
        "source": "pods",
        "interval": "10s",
        "minRequests": 50,
        "failureLimit": 2,
        "alpha": 0.05,
        "progressDeadline": "10m",
        "onInconclusive": "rollback",
        "gates": {"errorRate": {"max": 0.05, "mode": "enforce"}},
    }
    assert spec["resources"]["limits"] == {"cpu": 1}


@pytest.mark.usefixtures("crd")
def test_minimal_manifest_gets_every_default(kube: client.ApiClient, namespace: str) -> None:
    spec = _create(kube, namespace, _manifest())["spec"]
    assert spec["server"]["port"] == 8080
    assert spec["rollout"] == {
        "analysis": {
            "source": "pods",
            "interval": "10s",
            "minRequests": 50,
            "failureLimit": 2,
            "alpha": 0.05,
            "progressDeadline": "10m",
            "onInconclusive": "rollback",
        }
    }


@pytest.mark.usefixtures("crd")
def test_scale_subresource_and_printer_columns(
    kube: client.ApiClient, namespace: str, kubeconfig: Path
) -> None:
    _create(kube, namespace, _manifest())
    api = client.CustomObjectsApi(kube)
    api.patch_namespaced_custom_object_scale(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "iris",
        {"spec": {"replicas": 3}},
        _content_type="application/merge-patch+json",
    )
    md = cast(
        dict[str, Any], api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris")
    )
    assert md["spec"]["replicas"] == 3
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed on PATH"
    header = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "md", "iris"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()[0]
    assert header.split() == [
        "NAME",
        "READY",
        "STABLE",
        "CANARY",
        "WEIGHT",
        "REPLICAS",
        "AVAILABLE",
        "AGE",
    ]


@pytest.mark.usefixtures("crd")
def test_readme_example_is_accepted(kube: client.ApiClient, namespace: str) -> None:
    """The manifest the README shows (examples/modeldeployment.yaml) passes the real schema."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    body = yaml.safe_load((root / "examples" / "modeldeployment.yaml").read_text())
    readme = (root / "README.md").read_text()
    assert "uri: s3://models/wine/v2/model.onnx" in readme
    created = _create(kube, namespace, body)
    gates = created["spec"]["rollout"]["analysis"]["gates"]
    assert gates["drift"] == {"margin": 0.1, "mode": "enforce"}
    assert created["spec"]["rollout"]["analysis"]["alpha"] == 0.01
    assert created["spec"]["server"]["port"] == 8080
