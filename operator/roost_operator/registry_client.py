"""MLflow's REST API, as much of it as the operator needs (resolve, hash, write back).

Plain HTTP through aiohttp (already the operator's HTTP client) instead of the `mlflow`
package: the client pulls in hundreds of megabytes (pandas, SQLAlchemy, alembic, Flask...) for
six REST calls, and its synchronous calls would block kopf's event loop. The endpoints used are
MLflow's stable 2.0 REST API:

- `GET  registered-models/alias`      alias -> model version
- `GET  model-versions/get`           name + version -> model version
- `GET  runs/get`                     run -> artifact root (for `runs:/` sources)
- `POST registered-models/alias`      move roost's stable alias (write-back)
- `POST model-versions/set-tag`       outcome, gates, time on the version (write-back)
- `GET  /api/2.0/mlflow-artifacts/artifacts/...`  the artifact proxy, to hash an untagged file
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from roost_operator import registry
from roost_operator.registry import ModelReference, RegistrySpec, Resolution

API = "/api/2.0/mlflow"
TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
HASH_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=5)


class RegistryUnreachableError(Exception):
    """The registry did not answer (connection refused, timeout, 5xx): try again later."""


class ReferenceNotFoundError(Exception):
    """The registry answered that the model, version or alias does not exist (or is unusable)."""


def auth_headers(secret_data: Mapping[str, str] | None) -> dict[str, str]:
    """Headers from a Secret's decoded data: `token` -> Bearer, `username`+`password` -> Basic."""
    data = secret_data or {}
    if data.get("token"):
        return {"Authorization": f"Bearer {data['token']}"}
    if data.get("username"):
        pair = f"{data['username']}:{data.get('password', '')}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    return {}


class MlflowRegistry:
    """One tracking server, with the auth headers from `spec.model.registry.credentials`."""

    def __init__(
        self, session: aiohttp.ClientSession, spec: RegistrySpec, headers: Mapping[str, str]
    ) -> None:
        self.session, self.spec, self.headers = session, spec, dict(headers)

    async def _call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.spec.tracking_uri}{API}/{endpoint}"
        try:
            async with self.session.request(
                method, url, headers=self.headers, timeout=TIMEOUT, **kwargs
            ) as r:
                body = await r.json(content_type=None) if r.content_length != 0 else {}
                if r.status >= 500 or r.status in (401, 403, 429):
                    raise RegistryUnreachableError(
                        f"{method} {url}: HTTP {r.status} {_error(body)}"
                    )
                if r.status >= 400:
                    raise ReferenceNotFoundError(_error(body) or f"HTTP {r.status}")
                return body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise RegistryUnreachableError(
                f"{self.spec.tracking_uri}: {type(e).__name__}: {e}"
            ) from e

    async def model_version(self, ref: ModelReference) -> dict[str, Any]:
        """The REST `ModelVersion` an alias points at, or the numbered version."""
        if ref.alias is not None:
            body = await self._call(
                "GET", "registered-models/alias", params={"name": ref.name, "alias": ref.alias}
            )
        else:
            body = await self._call(
                "GET", "model-versions/get", params={"name": ref.name, "version": str(ref.version)}
            )
        version = body.get("model_version")
        if not isinstance(version, dict) or not version.get("version"):
            raise ReferenceNotFoundError(f"{ref}: the registry returned no model version")
        return version

    async def artifact_location(self, version: Mapping[str, Any]) -> str:
        """Where the version's files are (its `source`, with `runs:/` resolved)."""
        source = str(version.get("source") or "")
        if source.startswith("runs:/"):
            run_id, _, path = source.removeprefix("runs:/").partition("/")
            run = await self._call("GET", "runs/get", params={"run_id": run_id})
            root = str(((run.get("run") or {}).get("info") or {}).get("artifact_uri") or "")
            return f"{root.rstrip('/')}/{path}" if path else root
        return source

    async def sha256_of(self, url: str) -> str:
        """Stream an artifact over HTTP and hash it (versions registered without the tag)."""
        if not url.startswith(("http://", "https://")):
            raise ReferenceNotFoundError(
                f"{url} has no {registry.SHA256_TAG} tag and roost hashes HTTP artifacts only"
            )
        digest = hashlib.sha256()
        try:
            async with self.session.get(url, headers=self.headers, timeout=HASH_TIMEOUT) as r:
                if r.status >= 500:
                    raise RegistryUnreachableError(f"GET {url}: HTTP {r.status}")
                if r.status >= 400:
                    raise ReferenceNotFoundError(f"GET {url}: HTTP {r.status}")
                async for chunk in r.content.iter_chunked(1 << 20):
                    digest.update(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise RegistryUnreachableError(f"GET {url}: {type(e).__name__}: {e}") from e
        return digest.hexdigest()

    async def resolve(self, ref: ModelReference, resolved_at: str) -> Resolution:
        """The reference as an immutable version with fetchable URLs and digests."""
        version = await self.model_version(ref)
        if version.get("status") not in (None, "", "READY"):
            raise ReferenceNotFoundError(
                f"{ref}: version {version['version']} is {version['status']}"
            )
        location = await self.artifact_location(version)
        tags = registry.version_tags(version)
        spec = self.spec
        try:
            model_uri = registry.artifact_url(spec.tracking_uri, location, spec.model_file)
            profile_uri = (
                registry.artifact_url(spec.tracking_uri, location, spec.profile_file)
                if spec.profile_file
                else None
            )
            sha = registry.digest_tag(tags, registry.SHA256_TAG)
            profile_sha = registry.digest_tag(tags, registry.PROFILE_SHA256_TAG)
        except ValueError as e:
            raise ReferenceNotFoundError(f"{ref} (version {version['version']}): {e}") from e
        return Resolution(
            reference=str(ref),
            name=ref.name,
            version=str(version["version"]),
            run_id=str(version.get("run_id") or ""),
            source=location,
            model_uri=model_uri,
            sha256=sha,
            profile_uri=profile_uri,
            profile_sha256=profile_sha,
            resolved_at=resolved_at,
        )

    async def with_digests(self, res: Resolution) -> Resolution:
        """Fill in digests the tags did not give by hashing the files."""
        sha = res.sha256 or await self.sha256_of(res.model_uri)
        profile = res.profile_sha256
        if profile is None and res.profile_uri:
            profile = await self.sha256_of(res.profile_uri)
        return replace(res, sha256=sha, profile_sha256=profile)

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` of model `name` at `version`."""
        await self._call(
            "POST",
            "registered-models/alias",
            json={"name": name, "alias": alias, "version": version},
        )

    async def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set each tag on the model version (MLflow has no batch call for version tags)."""
        for key, value in tags.items():
            await self._call(
                "POST",
                "model-versions/set-tag",
                json={"name": name, "version": version, "key": key, "value": value[:5000]},
            )


def _error(body: Any) -> str:
    if isinstance(body, Mapping):
        code, message = body.get("error_code"), body.get("message")
        if message:
            return f"{code}: {message}" if code else str(message)
    return ""
