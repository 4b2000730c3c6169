"""Control-plane faults: a restarted component gets its original command line back."""

from __future__ import annotations

import base64
import random
import socket
import time
from pathlib import Path

import httpx
import pytest
from roost_devcluster import controlplane, faults, net, procs
from roost_devcluster.paths import Layout, find_binary
from roost_devcluster.waiting import wait_for

PORTS = {n: 10000 + i for i, n in enumerate(
    ("etcd", "etcd-peer", "apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
)}  # fmt: skip


@pytest.mark.parametrize("name", controlplane.CONTROL_PLANE)
def test_every_component_has_one_command_line_with_its_recorded_ports(
    tmp_path: Path, name: str
) -> None:
    layout = Layout(tmp_path)
    argv = controlplane.component_argv(layout, PORTS, name, Path("/bin") / name)
    assert argv[0] == f"/bin/{name}"
    assert argv == controlplane.component_argv(layout, PORTS, name, Path("/bin") / name)
    joined = " ".join(argv)
    port = {"etcd": "etcd", "kube-apiserver": "apiserver"}.get(name, name)
    assert str(PORTS[port]) in joined
    if name == "etcd":  # the same data directory: a restarted etcd keeps the cluster's state
        assert f"--data-dir={layout.etcd_data}" in argv


def test_unknown_component_and_missing_cluster_are_clear_errors(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with pytest.raises(ValueError, match="unknown control-plane component 'kubelet'"):
        controlplane.component_argv(layout, PORTS, "kubelet", Path("/bin/kubelet"))
    with pytest.raises(faults.FaultError, match="no dev cluster recorded"):
        faults.stop(layout, "etcd")
    procs.ClusterState(ports=PORTS, procs=[]).save(layout.state_file)
    with pytest.raises(faults.FaultError, match="unknown component 'kubelet'"):
        faults.stop(layout, "kubelet")
    with pytest.raises(faults.FaultError, match="etcd is not recorded"):
        faults.stop(layout, "etcd")


def _state_becomes(pid: int, states: str) -> bool:
    """Whether the process state turns into one of `states` (signals arrive asynchronously)."""
    for _ in range(100):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in states:
            return True
        time.sleep(0.02)
    return False


def test_frozen_stops_and_continues_the_process(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.root.mkdir(exist_ok=True)
    proc = procs.spawn("etcd", ["sleep", "30"], tmp_path / "etcd.log")
    try:
        procs.ClusterState(ports=PORTS, procs=[proc]).save(layout.state_file)
        with faults.frozen(layout, "etcd"):
            assert _state_becomes(proc.pid, "T")  # stopped
        assert _state_becomes(proc.pid, "SR")
    finally:
        procs.stop([proc], grace=1)


def test_cli_reports_a_missing_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from roost_devcluster import cli

    assert cli.main(["--state-dir", str(tmp_path), "restart", "kube-apiserver"]) == 1
    assert "no dev cluster recorded" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--state-dir", str(tmp_path), "freeze", "kubelet", "--seconds", "1"])


def test_server_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    rng = random.Random(7)
    ports = {net.server_port(rng) for _ in range(50)}
    assert all(net.SERVER_PORTS_FROM <= p < net.ephemeral_start() for p in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_heal_starts_a_dead_etcd_again_on_its_port_with_its_data(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.logs.mkdir(parents=True)
    ports = {name: net.server_port() for name in PORTS}
    argv = controlplane.component_argv(layout, ports, "etcd", find_binary("etcd"))
    etcd = procs.spawn("etcd", argv, layout.component_log("etcd"))
    procs.ClusterState(ports=ports, procs=[etcd]).save(layout.state_file)
    health = f"http://127.0.0.1:{ports['etcd']}/health"
    kv = f"http://127.0.0.1:{ports['etcd']}/v3/kv"
    key = base64.b64encode(b"roost-heal").decode()
    try:
        assert faults.heal(layout) == []  # nothing to do while it runs
        wait_for(lambda: _get(health) == 200, 30, "etcd healthy")
        assert httpx.post(f"{kv}/put", json={"key": key, "value": key}).status_code == 200
        procs.stop([etcd], grace=0.0)
        assert faults.heal(layout) == ["etcd"]
        assert _get(health) == 200
        got = httpx.post(f"{kv}/range", json={"key": key}).json()
        assert got["kvs"][0]["value"] == key  # the same data directory
    finally:
        state = procs.ClusterState.load(layout.state_file)
        procs.stop(state.procs if state else [etcd], grace=1.0)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.HTTPError:
        return 0
