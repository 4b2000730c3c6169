"""Fixtures for the Helm chart tests: the pinned helm binary and a renderer over it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from roost_devcluster.paths import binary_dirs, find_binary

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "roost"
# helm built without version ldflags assumes Kubernetes v1.20 and the chart needs >= 1.29;
# render for the version the dev cluster runs.
KUBE_VERSION = "1.33.0"

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Sequence[str]], subprocess.CompletedProcess[str]]:
    """Run the pinned helm (hack/k8s/build.sh) with private cache/config dirs."""
    try:
        binary = find_binary("helm", binary_dirs())
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )

    return run


@pytest.fixture(scope="session")
def render(helm: Callable[[Sequence[str]], subprocess.CompletedProcess[str]]) -> Render:
    """``render(*set_args, namespace=...)`` -> the rendered objects (hooks included)."""

    def run(
        *sets: str, namespace: str = "roost-system", release: str = "r"
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
        for s in sets:
            args += ["--set", s]
        done = helm(args)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    return run
