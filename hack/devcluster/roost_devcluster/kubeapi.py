"""A small typed REST client for the dev cluster (httpx, client certificate or bearer token).

The pod runner and the launcher work on raw JSON objects, so this stays thin: get, list,
create, server-side apply, patch, delete and a watch that resumes from the last
resourceVersion and relists after ``410 Gone``. Tests that want the official client use the
``kube`` fixture (``kubernetes.client.ApiClient``) instead.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

Obj = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Credentials:
    """What a kubeconfig's current context says: server, CA and client identity."""

    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Credentials:
        """Read the current context; inline *-data fields are written next to a temp file."""
        config = yaml.safe_load(path.read_text())
        ctx_name = config["current-context"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])

        def file_of(section: dict[str, Any], key: str) -> Path | None:
            if key in section:
                return Path(section[key])
            data = section.get(f"{key}-data")
            if data is None:
                return None
            with tempfile.NamedTemporaryFile("wb", delete=False, suffix=f".{key}") as out:
                out.write(base64.b64decode(data))
            return Path(out.name)

        ca = file_of(cluster, "certificate-authority")
        if ca is None:
            raise ValueError(f"{path}: the cluster has no certificate-authority")
        return cls(
            server=cluster["server"],
            ca_file=ca,
            cert_file=file_of(user, "client-certificate"),
            key_file=file_of(user, "client-key"),
            token=user.get("token"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context trusting the cluster CA and presenting the client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


def kubeconfig_document(
    server: str, ca_pem: bytes, user: str, credentials: dict[str, str], namespace: str = ""
) -> Obj:
    """A single-context kubeconfig (cluster ``roost-dev``) with the CA inlined."""
    context: dict[str, str] = {"cluster": "roost-dev", "user": user}
    if namespace:
        context["namespace"] = namespace
    cluster = {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "roost-dev", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "roost-dev", "context": context}],
        "current-context": "roost-dev",
    }


def api_path(api_version: str, kind_plural: str, namespace: str | None, name: str = "") -> str:
    """REST path, e.g. ``api_path("v1", "pods", "ns", "p")`` -> ``/api/v1/namespaces/ns/pods/p``."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{ns}/{kind_plural}" + (f"/{name}" if name else "")


class KubeApi:
    """Synchronous REST calls against one cluster; safe to share between threads."""

    def __init__(self, creds: Credentials, timeout: float = 30.0) -> None:
        self.creds = creds
        headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
        self._http = httpx.Client(
            base_url=creds.server, verify=creds.ssl_context(), headers=headers, timeout=timeout
        )

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeApi:
        """A client for the current context of a kubeconfig file."""
        return cls(Credentials.from_kubeconfig(path))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Obj:
        """One call; raises ApiError unless the status is 2xx."""
        resp = self._http.request(method, path, **kwargs)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, resp.text)
        return dict(resp.json()) if resp.content else {}

    def healthy(self, path: str = "/readyz") -> bool:
        """True when a health endpoint answers 200 (its body is text, not JSON)."""
        return self._http.get(path).status_code == 200

    def get(self, path: str, **params: str) -> Obj:
        """GET an object or a list."""
        return self.request("GET", path, params=params)

    def find(self, path: str) -> Obj | None:
        """GET an object, or None when it does not exist (404)."""
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        """POST a new object to a collection path."""
        return self.request("POST", path, json=body)

    def apply(self, path: str, body: Obj, manager: str = "roost-devcluster") -> Obj:
        """Server-side apply (the object path, force) of a full object."""
        return self.request(
            "PATCH",
            path,
            content=json.dumps(body),
            params={"fieldManager": manager, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
        )

    def patch(self, path: str, body: Obj, kind: str = "strategic-merge-patch") -> Obj:
        """PATCH with the given patch type (strategic-merge-patch, merge-patch, json-patch)."""
        return self.request(
            "PATCH",
            path,
            content=json.dumps(body),
            headers={"Content-Type": f"application/{kind}+json"},
        )

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        """DELETE, optionally with DeleteOptions (grace period, preconditions)."""
        return self.request("DELETE", path, content=json.dumps(body or {}))

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 60, **params: str
    ) -> Iterator[Obj]:
        """One watch request: yields events until the server closes it (a 410 raises ApiError)."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            **params,
        }
        with self._http.stream(
            "GET", path, params=query, timeout=httpx.Timeout(30.0, read=timeout_seconds + 30.0)
        ) as resp:
            if resp.status_code >= 300:
                resp.read()
                raise ApiError(resp.status_code, resp.text)
            for line in resp.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(int(status.get("code", 500)), json.dumps(status))
                yield event
