"""Fixtures shared by every test area.

``example_models`` builds the example models (``examples/build_models.py``) once per session into
``examples/models/`` (gitignored) and returns ``{name: directory}``; each directory holds
``model.onnx``, ``profile.json`` and ``sample.json``.  The build is idempotent and locked, so
concurrent pytest sessions share one build instead of racing.
``s3_server`` is a real S3 server on loopback (``roost_devcluster.s3server``) for the session.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from roost_devcluster.s3server import S3Server, run_s3

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def load_builder() -> ModuleType:
    """Import examples/build_models.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        "roost_build_models", EXAMPLES / "build_models.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example_models() -> dict[str, Path]:
    """name -> directory of each example model (wine-v1, wine-v2, ..., bench-rf20)."""
    built: dict[str, Path] = load_builder().build_all(EXAMPLES / "models")
    return built


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (versitygw, built by ``make k8s-binaries``) on 127.0.0.1 for the
    session, with its own root credentials (``.env()`` gives AWS_ENDPOINT_URL and keys)."""
    with run_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server
