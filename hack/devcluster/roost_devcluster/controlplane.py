"""Start, stop and inspect the dev cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok and the pod runner, each a detached process bound to 127.0.0.1.

``up(layout)`` is idempotent (a healthy cluster is left alone) and returns a ``Cluster``;
``down(layout)`` stops every recorded process (pod-runner children included) and removes the
state directory. Ports are picked free at start and recorded in ``state.json``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import ssl
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from roost_devcluster import kwokstages, pki, procs
from roost_devcluster.kubeapi import ApiError, KubeApi, api_path, kubeconfig_document
from roost_devcluster.net import server_port
from roost_devcluster.paths import REPO_ROOT, Layout, binary_dirs, find_binary

NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_NAMES = ("kwok-node-0", "kwok-node-1")
SERVICE_CIDR = "10.96.0.0/16"
START_TIMEOUT = 120.0


class StartError(RuntimeError):
    """The cluster did not come up; the message carries the reason and the log tails."""


@dataclass(frozen=True)
class Cluster:
    """A running dev cluster."""

    layout: Layout
    state: procs.ClusterState

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig path."""
        return self.layout.kubeconfig

    @property
    def server(self) -> str:
        """The apiserver URL."""
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    def api(self) -> KubeApi:
        """An admin REST client (close it when done)."""
        return KubeApi.from_kubeconfig(self.kubeconfig)


def node_cidrs(root: Path) -> dict[str, str]:
    """podCIDR per kwok node: 127.<n+1>.<2k>.0/23 (510 pod IPs per node), k derived from the
    state directory so that clusters of different state dirs (a dev cluster and a test
    session) rarely hand out the same pod IPs."""
    k = zlib.crc32(str(root).encode()) % 128
    return {name: f"127.{i + 1}.{2 * k}.0/23" for i, name in enumerate(NODE_NAMES)}


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Serialise up/down on one state directory across processes."""
    layout.root.parent.mkdir(parents=True, exist_ok=True)
    with (layout.root.parent / f".{layout.root.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    """A single-context kubeconfig with the CA and client pair inlined (portable file)."""
    credentials = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    config = kubeconfig_document(server, ca.read_bytes(), user, credentials)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def log_tails(layout: Layout, lines: int = 15) -> str:
    """The last lines of every component log, for failure messages."""
    parts = []
    for log in sorted(layout.logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def _failure(layout: Layout, headline: str) -> StartError:
    # The headline goes first and again last: CI and terminals often show only the tail.
    return StartError(f"{headline}\n{log_tails(layout)}\n--- {headline}")


def _wait(
    what: str,
    check: Callable[[], bool],
    layout: Layout,
    deadline: float,
    running: Sequence[procs.Proc] = (),
) -> None:
    """Poll ``check`` until it holds; fail at once if a started component has died."""
    last_error = ""
    started = time.monotonic()
    while time.monotonic() < deadline:
        dead = [p.name for p in running if not p.alive()]
        if dead:
            raise _failure(layout, f"{', '.join(dead)} exited while waiting for {what}")
        try:
            if check():
                return
        except (httpx.HTTPError, ApiError, OSError, KeyError) as exc:
            last_error = f" (last error: {exc})"
        time.sleep(0.25)
    waited = time.monotonic() - started
    raise _failure(layout, f"timed out after {waited:.0f} s waiting for {what}{last_error}")


def _healthy(url: str, ctx: ssl.SSLContext | bool) -> bool:
    return httpx.get(url, verify=ctx, timeout=2.0).status_code == 200


def _apiserver_args(layout: Layout, ports: dict[str, int]) -> list[str]:
    p = layout.pki
    return [
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}",
        "--advertise-address=127.0.0.1",
        # The kubernetes Service endpoint would be 127.0.0.1, which Endpoints reject.
        "--endpoint-reconciler-type=none",
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        f"--tls-cert-file={p / 'apiserver.crt'}",
        f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def _component_args(layout: Layout, ports: dict[str, int], name: str) -> list[str]:
    kubeconfig = layout.root / f"{name}.kubeconfig"
    common = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports[name]}",
        # One instance only: leader election would only add a lease round-trip to start-up.
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]
    if name == "kube-scheduler":
        return common
    return [
        *common,
        "--controllers=*",
        # kwok renews node heartbeats from one process; on a loaded 2-core machine it can miss
        # the default 50 s grace, and the node lifecycle controller then marks every pod on the
        # node NotReady. A fake node has nothing to lose, so give it longer.
        "--node-monitor-grace-period=5m",
        # Each controller acts as its own service account, as kubeadm clusters do.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}",
        f"--root-ca-file={layout.pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={layout.pki / 'ca.crt'}",
        f"--cluster-signing-key-file={layout.pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ]


def _etcd_args(layout: Layout, ports: dict[str, int]) -> list[str]:
    client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        "--name=default",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        # Throwaway test data: skipping fsync makes etcd fast on shared CI disks.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def _kwok_args(layout: Layout, ports: dict[str, int]) -> list[str]:
    return [
        f"--kubeconfig={layout.kubeconfig}",
        f"--config={layout.root / 'kwok.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
        f"--server-address=127.0.0.1:{ports['kwok']}",
        "--node-ip=127.0.0.1",
        # Node leases are the cheap heartbeat the node lifecycle controller reads first;
        # without them kwok's status heartbeat (~55 s) outlives its grace.
        "--node-lease-duration-seconds=40",
    ]


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def component_argv(layout: Layout, ports: dict[str, int], name: str, binary: Path) -> list[str]:
    """The command line of one control-plane component: the same at start and at a restart
    (``faults.restart``), so a restarted component keeps its ports, data and certificates."""
    if name == "etcd":
        return [str(binary), *_etcd_args(layout, ports)]
    if name == "kube-apiserver":
        return [str(binary), *_apiserver_args(layout, ports)]
    if name in ("kube-controller-manager", "kube-scheduler"):
        return [str(binary), *_component_args(layout, ports, name)]
    if name == "kwok":
        return [str(binary), *_kwok_args(layout, ports)]
    raise ValueError(f"unknown control-plane component {name!r}; one of {', '.join(CONTROL_PLANE)}")


def _node(name: str, cidr: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {NODE_ANNOTATION: "fake"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }


def runner_env() -> dict[str, str]:
    """Environment for the pod runner: this interpreter's venv first on PATH, harness importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    harness = str(REPO_ROOT / "hack" / "devcluster")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (harness, env.get("PYTHONPATH", "")) if p)
    return env


def status(layout: Layout) -> Cluster | None:
    """The running cluster when every recorded process lives and the apiserver is ready."""
    state = procs.ClusterState.load(layout.state_file)
    if state is None or not state.procs or not all(p.alive() for p in state.procs):
        return None
    cluster = Cluster(layout, state)
    try:
        api = cluster.api()
        try:
            if not api.healthy():
                return None
        finally:
            api.close()
    except (httpx.HTTPError, ApiError, OSError, ValueError, KeyError):
        return None
    return cluster


def up(
    layout: Layout,
    ready_all: bool = False,
    log: Callable[[str], None] = print,
    api_only: bool = False,
) -> Cluster:
    """Start the cluster (or return the healthy one already running there).

    `api_only` starts etcd and kube-apiserver alone (a few seconds): objects are stored and
    validated, but no controller acts on them (no ReplicaSets, pods, garbage collection or
    ServiceAccounts) — enough for tests of what the operator sends.
    """
    with locked(layout):
        return _up(layout, ready_all, log, api_only)


def _up(layout: Layout, ready_all: bool, log: Callable[[str], None], api_only: bool) -> Cluster:
    running = status(layout)
    if running is not None:
        return running
    _down(layout)  # leftovers of a crashed or half-started cluster
    start = time.monotonic()
    deadline = start + START_TIMEOUT
    dirs = binary_dirs()
    binaries = {n: find_binary(n, dirs) for n in CONTROL_PLANE[: 2 if api_only else None]}
    for d in (layout.root, layout.logs, layout.pods):
        d.mkdir(parents=True, exist_ok=True)
    pki.generate(layout.pki)
    names = ("etcd", "etcd-peer", "apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
    state = procs.ClusterState(ports={n: server_port() for n in names}, kwok_ready_all=ready_all)
    server = f"https://127.0.0.1:{state.ports['apiserver']}"
    ca = layout.pki / "ca.crt"
    admin = pki.client(layout.pki, "admin")
    write_kubeconfig(layout.kubeconfig, server, ca, admin.cert, admin.key, "roost-admin")
    for name in ("kube-controller-manager", "kube-scheduler"):
        pair = pki.client(layout.pki, name)
        write_kubeconfig(layout.root / f"{name}.kubeconfig", server, ca, pair.cert, pair.key, name)
    (layout.root / "kwok.yaml").write_text(kwokstages.render(ready_all))

    def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        state.procs.append(procs.spawn(name, argv, layout.component_log(name), env=env))
        state.save(layout.state_file)  # recorded at once, so `down` can always clean up

    try:
        spawn("etcd", component_argv(layout, state.ports, "etcd", binaries["etcd"]))
        etcd_health = f"http://127.0.0.1:{state.ports['etcd']}/health"
        _wait(
            "etcd /health",
            lambda: _healthy(etcd_health, False),
            layout,
            deadline,
            state.procs,
        )
        spawn(
            "kube-apiserver",
            component_argv(layout, state.ports, "kube-apiserver", binaries["kube-apiserver"]),
        )
        api = KubeApi.from_kubeconfig(layout.kubeconfig)
        try:
            _wait("kube-apiserver /readyz", api.healthy, layout, deadline, state.procs)
            log(f"[devcluster] apiserver ready after {time.monotonic() - start:.1f} s")
            if api_only:
                return Cluster(layout, state)
            for name in ("kube-controller-manager", "kube-scheduler"):
                spawn(name, component_argv(layout, state.ports, name, binaries[name]))
            spawn("kwok", component_argv(layout, state.ports, "kwok", binaries["kwok"]))
            for name, cidr in node_cidrs(layout.root).items():
                with contextlib.suppress(ApiError):  # already there after a restart
                    api.create(api_path("v1", "nodes", None), _node(name, cidr))
            if not ready_all:
                spawn(
                    "pod-runner",
                    [
                        sys.executable,
                        "-m",
                        "roost_devcluster.podrunner",
                        "--state-dir",
                        str(layout.root),
                    ],
                    env=runner_env(),
                )
            for name in ("kube-controller-manager", "kube-scheduler"):
                url = f"https://127.0.0.1:{state.ports[name]}/healthz"
                _wait(
                    f"{name} /healthz",
                    lambda u=url: _healthy(u, False),  # type: ignore[misc]
                    layout,
                    deadline,
                    state.procs,
                )
            _wait("kwok nodes Ready", lambda: _nodes_ready(api), layout, deadline, state.procs)
            # Pods are only admitted once the namespace's default ServiceAccount exists.
            default_sa = api_path("v1", "serviceaccounts", "default", "default")
            _wait(
                "the default ServiceAccount",
                lambda: bool(api.get(default_sa)),
                layout,
                deadline,
                state.procs,
            )
        finally:
            api.close()
    except BaseException:
        procs.stop(state.procs, grace=2.0)
        raise
    dead = [p.name for p in state.procs if not p.alive()]
    if dead:
        procs.stop(state.procs, grace=2.0)
        raise _failure(layout, f"{', '.join(dead)} exited during start-up")
    log(f"[devcluster] cluster up in {time.monotonic() - start:.1f} s")
    return Cluster(layout, state)


def _nodes_ready(api: KubeApi) -> bool:
    nodes = api.get(api_path("v1", "nodes", None))["items"]
    ready = {
        n["metadata"]["name"]
        for n in nodes
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    }
    return set(NODE_NAMES) <= ready


def down(layout: Layout) -> None:
    """Stop everything recorded under the state directory, then remove it."""
    with locked(layout):
        _down(layout)


def _down(layout: Layout) -> None:
    state = procs.ClusterState.load(layout.state_file)
    recorded = state.procs if state else []
    # Stop the pod runner first (it stops its children), then any orphaned children it left,
    # then the control plane in reverse start order.
    runner = [p for p in recorded if p.name == "pod-runner"]
    procs.stop(runner)
    procs.stop(procs.read_pid_files(layout.pods), grace=5.0)
    procs.stop([p for p in reversed(recorded) if p.name != "pod-runner"], grace=5.0)
    if layout.root.exists():
        shutil.rmtree(layout.root, ignore_errors=True)


def rss_bytes(cluster: Cluster) -> dict[str, int]:
    """Resident memory of each control-plane process (from /proc), for reports."""
    result = {}
    for proc in cluster.state.procs:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    result[proc.name] = int(line.split()[1]) * 1024
    return result
