"""Install the ModelDeployment CRD on a test cluster (server-side apply, wait until served)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes import client

CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "modeldeployment.yaml"


def install_crd(kube: client.ApiClient) -> None:
    """Server-side apply the CRD and wait (bounded) until the API serves it."""
    body = yaml.safe_load(CRD_PATH.read_text())
    api = client.ApiextensionsV1Api(kube)
    api.patch_custom_resource_definition(
        body["metadata"]["name"],
        body,
        field_manager="roost-tests",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    conditions: dict[str, str] = {}
    for _ in range(300):
        crd = api.read_custom_resource_definition(body["metadata"]["name"])
        found = crd.status.conditions if crd.status else None
        conditions = {c.type: c.status for c in found or []}
        if conditions.get("Established") == "True":
            return
        time.sleep(0.1)
    raise AssertionError(f"CRD never established: {conditions}")
