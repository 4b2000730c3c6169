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

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Sequence[str]], subprocess.CompletedProcess[str]]:
    """Run the pinned helm (hack/k8s/build.sh) with private cache/config dirs.

    A missing helm FAILS these tests (with the hint to build it): a chart test that skips
    silently is a chart nobody checked.
    """
    try:
        binary = find_binary("helm", binary_dirs())
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
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
        # No --kube-version: the project's helm carries upstream's Kubernetes-version ldflags.
        args = ["template", release, str(CHART), "-n", namespace]
        for s in sets:
            args += ["--set", s]
        done = helm(args)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    return run
