"""The applier and the kopf handlers against a real etcd + kube-apiserver, no controllers.

What the operator sends and what it skips, read back from the API server itself: a child is
written once and not again (including quantities the server canonicalises, `1000m` -> `1`), a
field someone else changed is written back, old revisions are scaled through the scale
subresource, pruning a child that is gone is no error, a status patch is sent only for what
changed, and the operator's handlers leave no annotation on the ModelDeployment (no kopf
`last-handled-configuration`) while they report an unservable spec as Stalled/InvalidSpec.
Starts in seconds: no controller manager, scheduler, kwok or pod runner.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crd_install import install_crd
from e2e.operator_fixtures import OperatorProcess, api_client
from kubernetes import client
from roost_devcluster import controlplane
from roost_devcluster.kubeapi import KubeApi, api_path
from roost_devcluster.waiting import wait_for
from roost_operator.applier import FIELD_MANAGER, Applier
from roost_operator.builders import Owner, build_deployment, build_service
from roost_operator.planner import ChildKey, Plan
from roost_operator.spec import parse_spec

pytestmark = pytest.mark.e2e

IMAGE = "ghcr.io/roost-dev/roost-serving:test"
RESOURCES = {
    "requests": {"cpu": "1000m", "memory": "0.5Gi"},
    "limits": {"cpu": 2, "memory": "1024Mi"},
}


@pytest.fixture(scope="module")
def kube(apiserver: controlplane.Cluster) -> Iterator[client.ApiClient]:
    with api_client(apiserver.kubeconfig) as api:
        install_crd(api)
        yield api


@pytest.fixture(scope="module")
def rest(apiserver: controlplane.Cluster) -> Iterator[KubeApi]:
    api = apiserver.api()
    yield api
    api.close()


@pytest.fixture
def ns(rest: KubeApi) -> str:
    """A fresh namespace (never deleted: no namespace controller runs to finish it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    rest.create(api_path("v1", "namespaces", None), {"metadata": {"name": name}})
    return name


def _spec(**extra: Any) -> dict[str, Any]:
    return {"model": {"uri": "file:///models/wine/model.onnx"}, "resources": RESOURCES, **extra}


def _deployment(ns: str, name: str = "wine", rev: str = "abc123") -> dict[str, Any]:
    owner = Owner(name, ns, "00000000-0000-0000-0000-000000000001")
    return build_deployment(owner, parse_spec(_spec(replicas=2)), rev, 2, IMAGE)


def _live(rest: KubeApi, ns: str, name: str) -> dict[str, Any]:
    return rest.get(api_path("apps/v1", "deployments", ns, name))


async def test_apply_writes_once_and_skips_canonicalised_quantities(
    kube: client.ApiClient, rest: KubeApi, ns: str
) -> None:
    applier = Applier(kube)
    manifest = _deployment(ns)
    assert await applier.apply(manifest, None)
    live = _live(rest, ns, "wine-abc123")
    resources = live["spec"]["template"]["spec"]["containers"][0]["resources"]
    # The server stores its canonical form, not what roost sent...
    assert resources["requests"] == {"cpu": "1", "memory": "512Mi"}
    assert resources["limits"] == {"cpu": "2", "memory": "1Gi"}
    managers = {(m["manager"], m["operation"]) for m in live["metadata"]["managedFields"]}
    assert (FIELD_MANAGER, "Apply") in managers
    # ...and the applier still sees nothing to do: a restarted operator writes nothing.
    assert not await applier.apply(manifest, live)
    assert (
        _live(rest, ns, "wine-abc123")["metadata"]["resourceVersion"]
        == (live["metadata"]["resourceVersion"])
    )
    assert applier.writes == 1


async def test_a_field_changed_by_someone_else_is_written_back(
    kube: client.ApiClient, rest: KubeApi, ns: str
) -> None:
    applier = Applier(kube)
    manifest = _deployment(ns)
    await applier.apply(manifest, None)
    path = api_path("apps/v1", "deployments", ns, "wine-abc123")
    edit = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "x:1"}]}}}}
    rest.patch(path, edit)
    assert await applier.apply(manifest, rest.get(path))
    assert rest.get(path)["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE


async def test_execute_scales_old_revisions_and_prunes(
    kube: client.ApiClient, rest: KubeApi, ns: str
) -> None:
    applier = Applier(kube)
    old, new = _deployment(ns, rev="old111"), _deployment(ns, rev="new222")
    owner = Owner("wine", ns, "00000000-0000-0000-0000-000000000001")
    await applier.apply(old, None)
    plan = Plan(apply=(new, build_service(owner)), scale=(("wine-old111", 1),))
    observed = {ChildKey("apps/v1", "Deployment", "wine-old111"): _live(rest, ns, "wine-old111")}
    assert await applier.execute(ns, plan, observed) == 3
    assert _live(rest, ns, "wine-old111")["spec"]["replicas"] == 1
    # The same plan over what is there now: nothing to send.
    now = {
        ChildKey("apps/v1", "Deployment", n): _live(rest, ns, n)
        for n in ("wine-old111", "wine-new222")
    }
    now[ChildKey("v1", "Service", "wine")] = rest.get(api_path("v1", "services", ns, "wine"))
    assert await applier.execute(ns, plan, now) == 0
    gone = Plan(delete=(ChildKey("apps/v1", "Deployment", "wine-old111"),))
    assert await applier.execute(ns, gone, now) == 1
    assert rest.find(api_path("apps/v1", "deployments", ns, "wine-old111")) is None
    assert await applier.execute(ns, gone, {}) == 0  # already gone: not an error, no write


async def test_status_patch_only_when_something_changed(
    kube: client.ApiClient, rest: KubeApi, ns: str
) -> None:
    md = {"apiVersion": "roost.dev/v1alpha1", "kind": "ModelDeployment"}
    md["metadata"] = {"name": "wine", "namespace": ns}
    md["spec"] = _spec()
    rest.create(f"/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments", md)
    applier = Applier(kube)
    status = {"observedGeneration": 1, "replicas": 0, "canary": None}
    written = await applier.patch_status(ns, "wine", {}, status)
    assert written is not None
    assert written["status"] == {"observedGeneration": 1, "replicas": 0}
    assert await applier.patch_status(ns, "wine", written["status"], status) is None
    assert applier.writes == 1


def _children(rest: KubeApi, ns: str) -> dict[str, str]:
    """kind/name -> resourceVersion of every object the operator writes, the MDs included."""
    mds = rest.get(f"/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments")["items"]
    out = {f"md/{m['metadata']['name']}": m["metadata"]["resourceVersion"] for m in mds}
    for version, plural in (("apps/v1", "deployments"), ("v1", "services")):
        for item in rest.get(api_path(version, plural, ns))["items"]:
            out[f"{plural}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def _md(rest: KubeApi, ns: str, name: str) -> dict[str, Any]:
    return rest.get(f"/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments/{name}")


def _condition(md: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    return found[0] if found else {}


def test_handlers_send_children_and_status_and_no_annotations(
    apiserver: controlplane.Cluster, kube: client.ApiClient, rest: KubeApi, ns: str, tmp_path: Path
) -> None:
    op = OperatorProcess(ns, apiserver.kubeconfig, tmp_path / "operator.log")
    op.start()
    try:
        path = f"/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments"
        good = {"apiVersion": "roost.dev/v1alpha1", "kind": "ModelDeployment"}
        rest.create(path, {**good, "metadata": {"name": "wine"}, "spec": _spec()})
        # Accepted by the CRD's schema, refused by the operator's one parse of the spec.
        bad_env = {"server": {"env": [{"name": "ROOST_PORT", "value": "1"}]}}
        rest.create(path, {**good, "metadata": {"name": "bad"}, "spec": _spec(**bad_env)})
        wait_for(lambda: _md(rest, ns, "wine").get("status", {}).get("observedGeneration"), 60)
        wait_for(lambda: _condition(_md(rest, ns, "bad"), "Stalled").get("status") == "True", 60)
        stalled = _condition(_md(rest, ns, "bad"), "Stalled")
        assert stalled["reason"] == "InvalidSpec"
        assert "must not set ROOST_PORT" in stalled["message"]
        wait_for(lambda: "services/wine" in _children(rest, ns), 60)
        before = _children(rest, ns)
        kinds = sorted(k.split("/")[0] for k in before)
        assert kinds == ["deployments", "md", "md", "services"], before  # nothing for "bad"
        for name in ("wine", "bad"):
            annotations = _md(rest, ns, name)["metadata"].get("annotations") or {}
            assert not [a for a in annotations if "roost" in a or "kopf" in a], annotations
        reconciled = op.metric("roost_operator_reconciliations_total")
        op.restart()
        # Wait until the new process has reconciled both objects at least once.
        wait_for(lambda: op.metric("roost_operator_reconciliations_total") >= 2, 60)
        assert reconciled >= 2
        assert _children(rest, ns) == before  # a restart over unchanged objects writes nothing
    finally:
        op.stop()
