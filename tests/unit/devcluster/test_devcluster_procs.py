"""Detached processes recorded by pid and start time; state file round trip; certificates."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from roost_devcluster import pki, procs


def test_spawn_records_and_stop_ends_the_process_group(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    assert sh
    # The child forks a grandchild: stopping the group must end both.
    proc = procs.spawn(
        "t", [sh, "-c", "sleep 60 & echo $! > child; wait"], tmp_path / "t.log", cwd=tmp_path
    )
    try:
        assert proc.alive()
        state = procs.ClusterState(ports={"a": 1}, procs=[proc])
        state.save(tmp_path / "state.json")
        loaded = procs.ClusterState.load(tmp_path / "state.json")
        assert loaded == state
        for _ in range(100):
            if (tmp_path / "child").exists() and (tmp_path / "child").read_text().strip():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        grandchild = int((tmp_path / "child").read_text())
        child_started = procs.start_time(grandchild)
        assert child_started is not None
    finally:
        procs.stop([proc], grace=5)
    assert not proc.alive()
    assert not procs.Proc("g", grandchild, child_started).alive()


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    proc = procs.spawn("t", ["sleep", "60"], tmp_path / "t.log")
    try:
        impostor = procs.Proc("t", proc.pid, proc.started + 1)
        assert not impostor.alive()
        procs.stop([impostor], grace=0.1)  # must not signal the real process
        assert proc.alive()
    finally:
        procs.stop([proc], grace=1)


def test_pid_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "ns_pod_c.pid").write_text("123 456\n")
    (tmp_path / "broken.pid").write_text("nonsense")
    assert procs.read_pid_files(tmp_path) == [procs.Proc("ns_pod_c", 123, 456)]
    assert procs.ClusterState.load(tmp_path / "missing.json") is None


def test_certificates_chain_to_the_ca_with_kubernetes_identities(tmp_path: Path) -> None:
    pki.generate(tmp_path)
    for name in ("apiserver", *pki.CLIENTS):
        verify = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(tmp_path / "ca.crt"),
                str(tmp_path / f"{name}.crt"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(tmp_path / "admin.crt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "O = system:masters" in subject
    assert "CN = roost-admin" in subject
    assert (tmp_path / "sa.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
