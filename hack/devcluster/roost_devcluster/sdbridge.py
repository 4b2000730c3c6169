"""Prometheus HTTP service discovery serving the apiserver's pods as ``kubernetes_sd`` would.

Debian's ``prometheus`` package is built without the Kubernetes discovery (its client-go
dependency is not packaged), so ``kubernetes_sd_configs`` fails to parse. This bridge lists
pods from the apiserver on every refresh and answers Prometheus' ``http_sd_configs`` with one
target per declared container port, carrying the same ``__meta_kubernetes_*`` labels that
``kubernetes_sd_configs`` (role ``pod``) sets, so the relabelling is exactly the one used
against a real cluster.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from roost_devcluster.kubeapi import ApiError, KubeApi, api_path

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_META = "__meta_kubernetes_"


def _sanitize(name: str) -> str:
    return _INVALID.sub("_", name)


def pod_targets(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Target groups for one pod, as kubernetes_sd role ``pod`` builds them."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    ip = status.get("podIP")
    if not ip:
        return []
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    labels = {
        f"{_META}namespace": meta["namespace"],
        f"{_META}pod_name": meta["name"],
        f"{_META}pod_ip": ip,
        f"{_META}pod_uid": meta.get("uid", ""),
        f"{_META}pod_node_name": spec.get("nodeName", ""),
        f"{_META}pod_host_ip": status.get("hostIP", ""),
        f"{_META}pod_phase": status.get("phase", ""),
        f"{_META}pod_ready": "true" if ready else "false",
    }
    for kind in ("label", "annotation"):
        for key, value in (meta.get(f"{kind}s") or {}).items():
            labels[f"{_META}pod_{kind}_{_sanitize(key)}"] = value
            labels[f"{_META}pod_{kind}present_{_sanitize(key)}"] = "true"
    groups = []
    for container in spec.get("containers", []):
        for port in container.get("ports", []):
            number = int(port["containerPort"])
            groups.append(
                {
                    "targets": [f"{ip}:{number}"],
                    "labels": {
                        **labels,
                        f"{_META}pod_container_name": container["name"],
                        f"{_META}pod_container_port_name": port.get("name", ""),
                        f"{_META}pod_container_port_number": str(number),
                        f"{_META}pod_container_port_protocol": port.get("protocol", "TCP"),
                    },
                }
            )
    return groups


class SdBridge:
    """A threaded HTTP server on 127.0.0.1 answering ``GET /targets``."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    pods = bridge.api.get(api_path("v1", "pods", None))["items"]
                    body = json.dumps([g for p in pods for g in pod_targets(p)]).encode()
                    code = 200
                except ApiError as exc:
                    body, code = str(exc).encode(), 502
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: Prometheus polls every refresh interval."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The discovery URL for ``http_sd_configs``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/targets"

    def start(self) -> SdBridge:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
