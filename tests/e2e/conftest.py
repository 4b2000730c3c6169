"""Fixtures for e2e tests against the real local control plane (``hack/devcluster``).

Session-scoped:
- ``cluster``: a running ``roost_devcluster.controlplane.Cluster`` with its own state dir
  (``<pytest basetemp>/devcluster``, so concurrent sessions never share a cluster; set
  ``ROOST_DEVCLUSTER_TEST_DIR`` to pin one), the pod runner included; torn down at session end
  (``ROOST_KEEP_CLUSTER=1`` keeps it; with a pinned dir the next session reuses it). Component
  and container logs are copied to ``<basetemp>/devcluster-logs`` first. A failed start is
  retried once with fresh ports; if that fails too the session FAILS with the reason and the
  component log tails: e2e tests are never skipped.
- ``apiserver``: etcd + kube-apiserver alone (no controllers), started in seconds, for tests of
  what the operator sends and skips.
- ``kubeconfig``: admin kubeconfig path (use with ``kubectl --kubeconfig`` or ``KUBECONFIG``).
- ``kube``: ``kubernetes.client.ApiClient`` for that kubeconfig.
- ``kube_api``: ``roost_devcluster.kubeapi.KubeApi`` (raw JSON REST; used by the helpers).
- ``prometheus``: ``roost_devcluster.prometheus.Prometheus`` scraping Ready serving pods
  (``roost.dev/serving=true``) every 2 s, with ``namespace``/``pod`` target labels.

Per test:
- ``namespace``: a fresh namespace (its ``default`` ServiceAccount exists), deleted afterwards.
- ``pod_log``: ``pod_log(namespace, pod, container)`` -> the container's output so far.
Example models come from the root ``example_models`` fixture (``tests/conftest.py``).

Helpers to import: ``roost_devcluster.waiting`` (``wait_for``, ``wait_pods_ready``,
``pod_ready``, ``container_status``, ``wait_gone``) and ``roost_devcluster.traffic.Traffic``.
Every test in this directory is marked ``e2e``.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e.operator_fixtures import api_client
from kubernetes import client
from roost_devcluster import controlplane, podrunner
from roost_devcluster.kubeapi import ApiError, KubeApi, api_path
from roost_devcluster.paths import Layout
from roost_devcluster.prometheus import Prometheus, run_prometheus
from roost_devcluster.waiting import wait_for

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as e2e, so ``-m "not e2e"`` never needs a cluster."""
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


def _keep_logs(layout: Layout, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for log in [*layout.logs.glob("*.log"), *layout.pods.glob("*.log")]:
        shutil.copy2(log, target / log.name)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.Cluster]:
    """The dev cluster for this test session (started once, stopped at the end)."""
    override = os.environ.get("ROOST_DEVCLUSTER_TEST_DIR")
    basetemp = tmp_path_factory.getbasetemp()
    root = Path(override).expanduser() if override else basetemp / "devcluster"
    layout = Layout(root.resolve())
    running = None
    for attempt in (1, 2):
        try:
            running = controlplane.up(layout, log=lambda message: print(message))
            break
        except controlplane.StartError as exc:
            # A busy two-core machine can starve one start; the second uses fresh ports and
            # state. Its logs are kept, and a second failure fails the session with the reason.
            _keep_logs(layout, basetemp / f"devcluster-logs-failed-start-{attempt}")
            controlplane.down(layout)
            if attempt == 2:
                pytest.fail(f"the dev cluster did not start twice: {exc}", pytrace=False)
            print(f"[devcluster] start attempt 1 failed, retrying once: {exc}")
        except (FileNotFoundError, OSError) as exc:
            tails = controlplane.log_tails(layout) if layout.logs.exists() else ""
            pytest.fail(f"the dev cluster did not start: {exc}\n{tails}", pytrace=False)
    assert running is not None
    yield running
    _keep_logs(layout, basetemp / "devcluster-logs")
    if os.environ.get("ROOST_KEEP_CLUSTER") != "1":
        controlplane.down(layout)


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.Cluster]:
    """etcd and kube-apiserver alone (seconds to start), for tests of what the operator sends.

    No controller runs: objects are stored and validated, but nothing makes pods, ReplicaSets
    or ServiceAccounts, and nothing garbage-collects. Separate from ``cluster``.
    """
    layout = Layout((tmp_path_factory.getbasetemp() / "apiserver").resolve())
    try:
        running = controlplane.up(layout, log=print, api_only=True)
    except (controlplane.StartError, OSError) as exc:
        pytest.fail(f"etcd + kube-apiserver did not start: {exc}", pytrace=False)
    yield running
    controlplane.down(layout)


@pytest.fixture(scope="session")
def kubeconfig(cluster: controlplane.Cluster) -> Path:
    """Admin kubeconfig of the test cluster."""
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kube(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """The official Kubernetes client, configured for the test cluster."""
    with api_client(kubeconfig) as api:
        yield api


@pytest.fixture(scope="session")
def kube_api(cluster: controlplane.Cluster) -> Iterator[KubeApi]:
    """A raw-JSON REST client (what the ``waiting`` and ``traffic`` helpers take)."""
    api = cluster.api()
    yield api
    api.close()


@pytest.fixture(scope="session")
def prometheus(cluster: controlplane.Cluster) -> Iterator[Prometheus]:
    """Prometheus discovering and scraping this cluster's serving pods."""
    with run_prometheus(cluster.layout) as prom:
        yield prom


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: KubeApi) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (not awaited) afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    kube_api.create(api_path("v1", "namespaces", None), {"metadata": {"name": name}})
    # Pods are rejected until the ServiceAccount controller has made the default account.
    wait_for(
        lambda: kube_api.get(api_path("v1", "serviceaccounts", name, "default")),
        timeout=30,
        what=f"the default ServiceAccount in {name}",
    )
    yield name
    try:
        kube_api.delete(api_path("v1", "namespaces", None, name))
    except ApiError as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def pod_log(cluster: controlplane.Cluster) -> Callable[[str, str, str], str]:
    """Read a runner pod container's log: ``pod_log(namespace, pod, container)``."""

    def read(namespace: str, pod: str, container: str) -> str:
        return podrunner.read_container_log(cluster.layout, namespace, pod, container)

    return read
