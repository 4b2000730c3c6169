"""A real S3-compatible object store on 127.0.0.1: Versity's versitygw over a local directory.

``run_s3(root)`` is a context manager yielding an :class:`S3Server` (``.endpoint``, ``.env()``
with ``AWS_ENDPOINT_URL`` and credentials, ``.make_bucket``, ``.storage_options``). The binary
is built from its pinned Go module and cached by version like the control plane
(``hack/k8s/build.sh``, ``make k8s-binaries``). It checks AWS Signature V4 against its root
credentials, so a client without the right keys gets 403 as from AWS; buckets are directories
under ``root/data`` (metadata in a sidecar directory, so no extended attributes are needed).
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from roost_devcluster import procs
from roost_devcluster.net import free_port
from roost_devcluster.paths import find_binary

READY_TIMEOUT = 30.0
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the root credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    root: Path
    log: Path

    def env(self) -> dict[str, str]:
        """What a process (a serving pod) needs to reach this store: botocore reads these."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec / s3fs options for this store (tests that do not use the environment)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
        }

    def filesystem(self) -> Any:
        """An s3fs filesystem on this store (no listing cache: tests read their own writes)."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, use_listings_cache=False)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if it exists); returns ``s3://name``."""
        fs = self.filesystem()
        if not fs.exists(name):
            # CreateBucket without a LocationConstraint (s3fs's mkdir sends one, which S3 and
            # versitygw refuse for us-east-1).
            fs.call_s3("create_bucket", Bucket=name)
        return f"s3://{name}"


@contextmanager
def run_s3(root: Path) -> Iterator[S3Server]:
    """Start versitygw on a free loopback port serving ``root``; stopped on exit."""
    binary = find_binary("versitygw")
    data, sidecar = root / "data", root / "meta"
    data.mkdir(parents=True, exist_ok=True)
    sidecar.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = S3Server(
        endpoint=f"http://127.0.0.1:{port}",
        access_key="roost" + secrets.token_hex(4),
        secret_key=secrets.token_hex(16),
        root=root,
        log=root / "versitygw.log",
    )
    proc = procs.spawn(
        "versitygw",
        [
            str(binary),
            "--access",
            server.access_key,
            "--secret",
            server.secret_key,
            "--region",
            REGION,
            "--port",
            f"127.0.0.1:{port}",
            "--quiet",
            "posix",
            "--sidecar",
            str(sidecar),
            str(data),
        ],
        server.log,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                # Unauthenticated: any S3 answer (403 AccessDenied) means it is serving.
                httpx.get(server.endpoint, timeout=2.0)
                break
            except httpx.HTTPError:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                tail = server.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"versitygw did not start:\n{tail}")
            time.sleep(0.1)
        yield server
    finally:
        procs.stop([proc], grace=5.0)
        shutil.rmtree(data, ignore_errors=True)
