"""Debian's Prometheus on 127.0.0.1, discovering the dev cluster's serving pods.

``run_prometheus(layout, server)`` is a context manager yielding a ``Prometheus`` (``.url``,
``.query``, ``.targets``). Discovery is role ``pod`` against the cluster's apiserver: Debian's
build lacks ``kubernetes_sd_configs``, so ``sdbridge`` serves the same ``__meta_kubernetes_*``
labels over ``http_sd_configs`` (``scrape_config(..., kubernetes=True)`` gives the equivalent
``kubernetes_sd_configs`` block for a Prometheus that has it). The relabelling keeps running
pods labelled ``roost.dev/serving=true``, scrapes ``<podIP>:<containerPort>/metrics`` of every
declared container port and sets the target labels ``namespace``, ``pod``, ``container`` and
``modeldeployment`` (``revision`` stays the metric's own label). Scrape and discovery
intervals default to 2 s so tests see data quickly.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from roost_devcluster import procs
from roost_devcluster.kubeapi import KubeApi
from roost_devcluster.net import free_port
from roost_devcluster.paths import Layout
from roost_devcluster.sdbridge import SdBridge

READY_TIMEOUT = 60.0


def scrape_config(
    layout: Layout, discovery: str, interval: str = "2s", kubernetes: bool = False
) -> dict[str, Any]:
    """The prometheus.yml: ``discovery`` is the HTTP SD URL, or the apiserver URL when
    ``kubernetes`` (a Prometheus built with Kubernetes discovery)."""
    pki = layout.pki
    tls = {
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / "admin.crt"),
        "key_file": str(pki / "admin.key"),
    }
    sd: dict[str, Any] = (
        {"kubernetes_sd_configs": [{"role": "pod", "api_server": discovery, "tls_config": tls}]}
        if kubernetes
        else {"http_sd_configs": [{"url": discovery, "refresh_interval": interval}]}
    )

    def copy(source: str, target: str) -> dict[str, Any]:
        return {"source_labels": [source], "target_label": target}

    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "roost-serving",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": "/metrics",
                **sd,
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_label_roost_dev_serving"],
                        "regex": "true",
                        "action": "keep",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_phase"],
                        "regex": "Running",
                        "action": "keep",
                    },
                    # Discovery yields one target per declared port; /metrics is on the one
                    # named http (not grpc, not portless), as the chart's PodMonitor says.
                    {
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": "http",
                        "action": "keep",
                    },
                    copy("__meta_kubernetes_namespace", "namespace"),
                    copy("__meta_kubernetes_pod_name", "pod"),
                    copy("__meta_kubernetes_pod_container_name", "container"),
                    copy(
                        "__meta_kubernetes_pod_label_roost_dev_modeldeployment", "modeldeployment"
                    ),
                ],
            }
        ],
    }


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus."""

    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the ``data.result`` vector."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10.0)
        resp.raise_for_status()
        return list(resp.json()["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``/api/v1/targets``)."""
        resp = httpx.get(f"{self.url}/api/v1/targets", timeout=10.0)
        resp.raise_for_status()
        return list(resp.json()["data"]["activeTargets"])


@contextmanager
def run_prometheus(layout: Layout, interval: str = "2s") -> Iterator[Prometheus]:
    """Start Prometheus for the cluster of ``layout``; stopped and its data removed on exit."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        raise FileNotFoundError("prometheus is not installed: run `make system-deps`")
    work = Path(tempfile.mkdtemp(prefix="prometheus-", dir=layout.root))
    config = work / "prometheus.yml"
    api = KubeApi.from_kubeconfig(layout.kubeconfig)
    bridge = SdBridge(api).start()
    config.write_text(yaml.safe_dump(scrape_config(layout, bridge.url, interval), sort_keys=False))
    port = free_port()
    log = work / "prometheus.log"
    proc = procs.spawn(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
        log,
    )
    prom = Prometheus(url=f"http://127.0.0.1:{port}", log=log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if httpx.get(f"{prom.url}/-/ready", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"prometheus did not become ready:\n{tail}")
            time.sleep(0.2)
        yield prom
    finally:
        procs.stop([proc], grace=5.0)
        bridge.stop()
        api.close()
        shutil.rmtree(work, ignore_errors=True)
