"""MLflow Model Registry references (`models:/name@alias`, `models:/name/7`), the pure part.

The operator resolves a reference through MLflow's REST API (`registry_client`, the I/O part)
to one immutable model version and turns it into what a pod can load: an HTTP(S) URL of the
ONNX file and of the profile beside it, and their sha256. Everything here is pure — parsing,
turning artifact locations into URLs, reading the facts out of REST payloads — so it is unit
tested without a server.

Digests: MLflow stores none. The pipeline (`examples/ci/`) records the ONNX file's sha256 as
the version tag `roost.sha256` (and the profile's as `roost.profile_sha256`) when it registers
the version; the operator passes that digest to the pods as `ROOST_SHA256`, and each pod
verifies it when it loads the file and refuses a mismatch. A version registered without the
tag is hashed by the operator itself (streamed once per version, then cached).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from roost_operator.spec import SpecError, parse_duration

SCHEME = "models:/"
SHA256_TAG = "roost.sha256"
PROFILE_SHA256_TAG = "roost.profile_sha256"
DEFAULT_POLL_SECONDS = 30.0
_NAME = r"[^/@]+"
_ALIAS = re.compile(rf"^models:/({_NAME})@([A-Za-z0-9_-]+)$")
_VERSION = re.compile(rf"^models:/({_NAME})/([1-9][0-9]*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelReference:
    """A parsed `models:/` URI: a registered model and either an alias or a version."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return (
            f"{SCHEME}{self.name}@{self.alias}"
            if self.alias
            else f"{SCHEME}{self.name}/{self.version}"
        )


def is_reference(uri: str) -> bool:
    """Whether `uri` names a registry model rather than a file."""
    return uri.startswith(SCHEME)


def parse_reference(uri: str) -> ModelReference:
    """`models:/name@alias` or `models:/name/N`, or `SpecError` saying what is accepted."""
    if m := _ALIAS.match(uri):
        return ModelReference(name=m.group(1), alias=m.group(2))
    if m := _VERSION.match(uri):
        return ModelReference(name=m.group(1), version=m.group(2))
    raise SpecError(
        f"spec.model.uri {uri!r} is not a registry reference: use models:/NAME@ALIAS "
        "or models:/NAME/VERSION"
    )


@dataclass(frozen=True)
class RegistrySpec:
    """`spec.model.registry`: where the MLflow server is and how to read the version."""

    tracking_uri: str
    poll_seconds: float = DEFAULT_POLL_SECONDS
    secret_name: str | None = None
    """A Secret with `token` (bearer) or `username` + `password` (basic auth)."""
    model_file: str = "model.onnx"
    profile_file: str | None = "profile.json"
    """Path of the profile inside the version's artifacts; None when the version has none."""


def registry_spec(model: Mapping[str, Any]) -> RegistrySpec:
    """Parse `spec.model.registry` of a spec whose `uri` is a `models:/` reference."""
    raw = model.get("registry") or {}
    url = str(raw.get("trackingUri") or "").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SpecError(
            "spec.model.registry.trackingUri is required for a models:/ reference, "
            "e.g. http://mlflow.mlflow.svc:5000"
        )
    poll = parse_duration(raw.get("pollInterval") or "30s", "spec.model.registry.pollInterval")
    if poll < 1:
        raise SpecError("spec.model.registry.pollInterval must be at least 1s")
    profile = raw.get("profilePath", "profile.json")
    return RegistrySpec(
        tracking_uri=url,
        poll_seconds=poll,
        secret_name=str((raw.get("credentials") or {}).get("secretName") or "") or None,
        model_file=str(raw.get("modelPath") or "model.onnx").strip("/"),
        profile_file=str(profile).strip("/") or None if profile else None,
    )


@dataclass(frozen=True)
class Resolution:
    """One resolved model version: what the pods load, and where it came from."""

    reference: str
    name: str
    version: str
    run_id: str
    source: str
    model_uri: str
    sha256: str | None
    """From the `roost.sha256` tag; None until the operator has hashed the file."""
    profile_uri: str | None
    profile_sha256: str | None
    resolved_at: str = ""

    def to_status(self) -> dict[str, Any]:
        """`status.model`: the contract's camelCase keys."""
        return {
            "reference": self.reference,
            "name": self.name,
            "version": self.version,
            "runId": self.run_id,
            "source": self.source,
            "uri": self.model_uri,
            "sha256": self.sha256,
            "profileUri": self.profile_uri,
            "profileSha256": self.profile_sha256,
            "resolvedAt": self.resolved_at,
        }

    @classmethod
    def from_status(cls, raw: Any) -> Resolution | None:
        """The last resolution recorded in `status.model`, or None."""
        if not isinstance(raw, Mapping) or not raw.get("version") or not raw.get("uri"):
            return None

        def text(key: str) -> str:
            v = raw.get(key)
            return v if isinstance(v, str) else ""

        return cls(
            reference=text("reference"),
            name=text("name"),
            version=text("version"),
            run_id=text("runId"),
            source=text("source"),
            model_uri=text("uri"),
            sha256=text("sha256") or None,
            profile_uri=text("profileUri") or None,
            profile_sha256=text("profileSha256") or None,
            resolved_at=text("resolvedAt"),
        )


def artifact_url(tracking_uri: str, location: str, path: str = "") -> str:
    """A URL the pods can fetch for `path` inside the artifact `location`.

    `mlflow-artifacts:/x` (and `mlflow-artifacts://host/x`) is served by the tracking server's
    artifact proxy (`mlflow server --serve-artifacts`) at `/api/2.0/mlflow-artifacts/artifacts/x`;
    http(s), s3, gs and file locations are already fsspec URIs and are only joined with `path`.
    """
    location = location.rstrip("/")
    suffix = f"/{path.strip('/')}" if path.strip("/") else ""
    if location.startswith("mlflow-artifacts:"):
        rest = location.removeprefix("mlflow-artifacts:")
        if rest.startswith("//"):  # mlflow-artifacts://host:port/path: the path part
            rest = "/" + rest[2:].partition("/")[2]
        quoted = quote(rest.lstrip("/") + suffix, safe="/")
        return f"{tracking_uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{quoted}"
    if location.startswith(("http://", "https://", "s3://", "gs://", "file://")):
        return location + suffix
    if location.startswith("/"):
        return "file://" + location + suffix
    raise ValueError(
        f"artifact location {location!r} is neither mlflow-artifacts:/ nor an http(s), s3, gs "
        "or file URI; roost cannot hand it to the serving pods"
    )


def version_tags(version: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a REST `ModelVersion` as a dict."""
    return {
        str(t.get("key")): str(t.get("value"))
        for t in version.get("tags") or []
        if isinstance(t, Mapping) and t.get("key")
    }


def digest_tag(tags: Mapping[str, str], key: str) -> str | None:
    """A sha256 tag's value, or None when absent; a malformed one is an error."""
    value = tags.get(key)
    if value is None:
        return None
    if not _SHA256.match(value):
        raise ValueError(f"version tag {key} must be 64 lowercase hex characters, got {value!r}")
    return value


def stable_alias(namespace: str, name: str) -> str:
    """The alias roost moves to the version a ModelDeployment promoted."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"roost-{namespace}-{name}-stable")


def tag_prefix(namespace: str, name: str) -> str:
    """Version tags roost writes are `roost/<namespace>/<name>/<fact>`."""
    return f"roost/{namespace}/{name}"
