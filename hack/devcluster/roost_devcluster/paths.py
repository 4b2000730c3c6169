"""Where the dev cluster keeps its binaries, state and logs.

State lives in ``~/.cache/roost/devcluster`` (override with ``ROOST_DEVCLUSTER_DIR``); the
admin kubeconfig is always ``<state dir>/kubeconfig``. Binaries come from the version-keyed
cache that ``hack/k8s/build.sh`` fills (``ROOST_CACHE``, default ``~/.cache/roost``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "k8s" / "build.sh"


def default_state_dir() -> Path:
    """The state directory used by ``python -m roost_devcluster`` and ``make cluster-up``."""
    override = os.environ.get("ROOST_DEVCLUSTER_DIR")
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "roost" / "devcluster"


def binary_dirs() -> list[Path]:
    """The cached binary directories, asked of build.sh so the versions live in one place."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-dir"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return [Path(p) for p in out.split(":") if p]


def find_binary(name: str, dirs: list[Path] | None = None) -> Path:
    """Path of a cached control-plane binary; raises with the build hint when it is missing."""
    for directory in dirs if dirs is not None else binary_dirs():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{name} is not built yet: run `make k8s-binaries` (hack/k8s/build.sh)")


@dataclass(frozen=True)
class Layout:
    """Paths inside one state directory."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (cluster-admin via the system:masters group)."""
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        """CA, serving and client certificates, service-account signing key."""
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        """One log file per control-plane component."""
        return self.root / "logs"

    @property
    def pods(self) -> Path:
        """Per-container logs and pid files written by the pod runner."""
        return self.root / "pods"

    @property
    def etcd_data(self) -> Path:
        """etcd's data directory (removed by ``down``)."""
        return self.root / "etcd"

    @property
    def state_file(self) -> Path:
        """JSON record of ports and process ids (see ``procs.ClusterState``)."""
        return self.root / "state.json"

    def component_log(self, name: str) -> Path:
        """Log file of one control-plane component."""
        return self.logs / f"{name}.log"
