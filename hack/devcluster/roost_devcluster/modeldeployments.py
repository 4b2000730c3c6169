"""ModelDeployment manifests and reads, shared by the demo and the e2e tests.

One builder (`manifest`) and one set of readers (`status`, `condition`) instead of a copy in
the demo and in each e2e file; the wait loops are `roost_devcluster.waiting.wait_for`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from roost_devcluster.kubeapi import KubeApi
from roost_devcluster.waiting import find_condition as condition

__all__ = ["API_VERSION", "apply", "condition", "manifest", "path", "status"]

API_VERSION = "roost.dev/v1alpha1"
COLLECTION = "/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments"

Obj = dict[str, Any]


def path(namespace: str, name: str | None = None) -> str:
    """REST path of the ModelDeployment collection in `namespace`, or of one object."""
    base = COLLECTION.format(ns=namespace)
    return f"{base}/{name}" if name else base


def manifest(
    namespace: str,
    model_dir: Path,
    name: str = "wine",
    replicas: int = 2,
    steps: list[Obj] | None = None,
    analysis: Obj | None = None,
    **spec: Any,
) -> Obj:
    """A ModelDeployment serving `model_dir`'s model.onnx and profile.json.

    `steps` and `analysis` make `spec.rollout` (left out when both are None); anything else in
    `spec` is merged into the spec as it is.
    """
    body: Obj = {
        "model": {
            "uri": (model_dir / "model.onnx").as_uri(),
            "profileUri": (model_dir / "profile.json").as_uri(),
        },
        "replicas": replicas,
    }
    if steps is not None or analysis is not None:
        body["rollout"] = {"steps": steps or [], "analysis": analysis or {}}
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**body, **spec},
    }


def apply(api: KubeApi, body: Mapping[str, Any], manager: str = "test") -> Obj:
    """Server-side apply a ModelDeployment as `manager`."""
    meta = body["metadata"]
    return api.apply(path(meta["namespace"], meta["name"]), dict(body), manager=manager)


def status(api: KubeApi, namespace: str, name: str = "wine") -> Obj:
    """The object's status (empty before the first reconcile)."""
    return dict(api.get(path(namespace, name)).get("status") or {})
