"""examples/gitops builds with kubectl's kustomize into the ModelDeployments each environment
should get."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

GITOPS = Path(__file__).resolve().parents[3] / "examples" / "gitops"


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize`"
    done = subprocess.run(
        [kubectl, "kustomize", str(GITOPS / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize(
    ("overlay", "namespace", "replicas", "model"),
    [
        ("staging", "ml-staging", 1, "s3://roost-models/wine/v2/model.onnx"),
        ("production", "ml-production", 4, "s3://roost-models/wine/v1/model.onnx"),
    ],
)
def test_overlay_builds(overlay: str, namespace: str, replicas: int, model: str) -> None:
    (md,) = kustomize(overlay)
    assert (md["apiVersion"], md["kind"]) == ("roost.dev/v1alpha1", "ModelDeployment")
    assert md["metadata"]["namespace"] == namespace
    assert md["spec"]["replicas"] == replicas
    assert md["spec"]["model"]["uri"] == model
    assert md["spec"]["model"]["profileUri"] == model.replace("model.onnx", "profile.json")
    # The base's credentials and gates survive the patches.
    assert md["spec"]["model"]["credentials"] == {"secretName": "roost-models-s3"}
    assert md["spec"]["rollout"]["analysis"]["gates"]["errorRate"] == {"margin": 0.01}


def test_production_routes_and_autoscales() -> None:
    (md,) = kustomize("production")
    assert md["spec"]["autoscaling"]["minReplicas"] == md["spec"]["replicas"]
    assert [s["weight"] for s in md["spec"]["rollout"]["steps"]] == [10, 25, 50]
    assert md["spec"]["traffic"]["httpRoute"]["name"] == "wine"


def test_argocd_and_flux_point_at_an_overlay() -> None:
    app = yaml.safe_load((GITOPS / "argocd" / "application.yaml").read_text())
    assert (GITOPS.parents[1] / app["spec"]["source"]["path"]).is_dir()
    flux = list(yaml.safe_load_all((GITOPS / "flux" / "kustomization.yaml").read_text()))
    kustomization = next(d for d in flux if d["kind"] == "Kustomization")
    assert (GITOPS.parents[1] / kustomization["spec"]["path"]).is_dir()
    assert kustomization["spec"]["healthChecks"][0]["kind"] == "ModelDeployment"
