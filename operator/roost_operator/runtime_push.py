"""Runtime configuration push: the document every serving pod of a ModelDeployment holds.

A serving pod learns what changes during a rollout (its peers, a shadow step's canary pods,
...) from ``PUT /v2/roost/runtime`` (roost_serving.runtime) rather than from its pod template,
whose every change restarts it. The document ``{"version", "sections"}`` is assembled from one
pure builder per feature (:data:`SECTION_BUILDERS`: add yours there); its version is the hash
of its sections. After each reconciliation the operator asks every ready serving pod which
version it holds and pushes to the ones that differ (a restarted container forgets); a pod that
does not answer within the timeouts is retried on the next reconciliation and never fails one.

The bearer token lives in the Secret ``<md>-runtime`` (key ``token``), created once with a
random value and owned by the ModelDeployment; pods get it as ``ROOST_RUNTIME_TOKEN`` through a
``secretKeyRef`` (roost_operator.builders).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException

from roost_operator.applier import Applier
from roost_operator.builders import Owner, common_labels, runtime_secret_name
from roost_operator.pods import PodTarget, RevisionPods
from roost_operator.rollout import RolloutState
from roost_operator.spec import ModelDeploymentSpec

log = logging.getLogger("roost.runtime")

PATH = "/v2/roost/runtime"
TOKEN_KEY = "token"
CONNECT_TIMEOUT = 1.0
TOTAL_TIMEOUT = 2.0
"""Seconds per pod request: a hung pod must not stall the reconciliation behind it."""
RECHECK_SECONDS = 15.0
"""A pod confirmed to hold the current version is asked again after this long (a container
restart keeps the pod's uid and address but forgets the document)."""

Section = dict[str, Any]


@dataclass(frozen=True)
class RuntimeContext:
    """What section builders see: the ModelDeployment, its rollout state and its ready pods."""

    owner: Owner
    spec: ModelDeploymentSpec
    state: RolloutState
    pods: Mapping[str, RevisionPods]
    """Pods by revision (`roost_operator.pods.summarise_pods`)."""

    def role(self, revision: str) -> str | None:
        """``stable``, ``canary`` or None (a revision scaling down after a rollout)."""
        if self.state.stable is not None and self.state.stable.revision == revision:
            return "stable"
        if self.state.canary is not None and self.state.canary.revision == revision:
            return "canary"
        return None


SectionBuilder = Callable[[RuntimeContext], Section | None]


def pod_url(pod: PodTarget) -> str:
    """``http://<podIP>:<port>``."""
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
    return f"http://{host}:{pod.port}"


def peers_section(ctx: RuntimeContext) -> Section | None:
    """``peers``: ``{"pods": [{"pod", "revision", "role", "url"}]}``, every ready serving pod
    of the stable and the canary revision (sorted, so the version only moves when they do)."""
    pods = []
    for revision, summary in sorted(ctx.pods.items()):
        role = ctx.role(revision)
        if role is None:
            continue
        for pod in sorted(summary.ready_pods, key=lambda p: p.name):
            pods.append({"pod": pod.name, "revision": revision, "role": role, "url": pod_url(pod)})
    return {"pods": pods}


SECTION_BUILDERS: dict[str, SectionBuilder] = {"peers": peers_section}
"""One builder per feature; a builder returning None leaves its section out."""


def build_document(ctx: RuntimeContext) -> dict[str, Any]:
    """``{"version": <16 hex of the sections' hash>, "sections": {...}}``."""
    sections: dict[str, Section] = {}
    for name, builder in SECTION_BUILDERS.items():
        section = builder(ctx)
        if section is not None:
            sections[name] = section
    canonical = json.dumps(sections, sort_keys=True, separators=(",", ":"))
    return {"version": hashlib.sha256(canonical.encode()).hexdigest()[:16], "sections": sections}


def secret_manifest(owner: Owner, token: str) -> dict[str, Any]:
    """The Secret ``<md>-runtime`` holding the pods' runtime token."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": runtime_secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


@dataclass
class PushReport:
    """What one push did, for logs and tests."""

    version: str
    current: list[str] = field(default_factory=list)
    """Pods that already held the version."""
    pushed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Pod -> why it could not be asked or pushed to (retried next time)."""


class RuntimePusher:
    """The runtime tokens (one Secret per ModelDeployment) and the pushes to serving pods."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self._tokens: dict[str, str] = {}  # by ModelDeployment uid
        self._confirmed: dict[str, tuple[str, float]] = {}  # pod uid -> (version, when)
        self._session: aiohttp.ClientSession | None = None

    async def token(self, owner: Owner) -> str:
        """The ModelDeployment's runtime token, creating its Secret the first time."""
        cached = self._tokens.get(owner.uid)
        if cached is not None:
            return cached
        path = f"/api/v1/namespaces/{owner.namespace}/secrets/{runtime_secret_name(owner.name)}"
        try:
            token = _decode(await self.applier.request("GET", path))
        except ApiException as e:
            if e.status != 404:
                raise
            token = None
        if token is None:
            # Create, never overwrite: pods already running hold the token that is there.
            fresh = secrets.token_urlsafe(32)
            try:
                created = await self.applier.request(
                    "POST", path.rsplit("/", 1)[0], secret_manifest(owner, fresh)
                )
                token = _decode(created) or fresh
            except ApiException as e:
                if e.status != 409:  # 409: another writer created it first; read theirs
                    raise
                token = _decode(await self.applier.request("GET", path))
            if token is None:
                raise ValueError(f"Secret {path} has no {TOKEN_KEY!r} key")
        self._tokens[owner.uid] = token
        return token

    async def push(self, ctx: RuntimeContext, token: str) -> PushReport:
        """Bring every ready serving pod to the current document; never raises for a pod."""
        document = build_document(ctx)
        report = PushReport(str(document["version"]))
        pods = [p for summary in ctx.pods.values() for p in summary.ready_pods]
        now = time.monotonic()
        due = [p for p in pods if not self._fresh(p, report.version, now)]
        report.current += [p.name for p in pods if p not in due]
        if due:
            session = self._client()
            results = await asyncio.gather(
                *(self._push_one(session, p, document, token) for p in due)
            )
            for pod, (outcome, detail) in zip(due, results, strict=True):
                if outcome == "failed":
                    report.failed[pod.name] = detail
                    self._confirmed.pop(pod.uid, None)
                    continue
                getattr(report, outcome).append(pod.name)
                self._confirmed[pod.uid] = (report.version, now)
        if report.pushed or report.failed:
            log.info(
                "runtime config %s for %s/%s: pushed to %s; failed %s",
                report.version,
                ctx.owner.namespace,
                ctx.owner.name,
                ",".join(report.pushed) or "none",
                report.failed or "none",
            )
        return report

    def _fresh(self, pod: PodTarget, version: str, now: float) -> bool:
        confirmed = self._confirmed.get(pod.uid)
        return (
            confirmed is not None
            and confirmed[0] == version
            and now - confirmed[1] < (RECHECK_SECONDS)
        )

    async def _push_one(
        self, session: aiohttp.ClientSession, pod: PodTarget, document: Any, token: str
    ) -> tuple[str, str]:
        url = pod_url(pod) + PATH
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with session.get(url, headers=headers) as response:
                if response.status == 200:
                    held = (await response.json(content_type=None)).get("version")
                    if held == document["version"]:
                        return "current", ""
                elif response.status != 404:  # 404: a server from before runtime config
                    return "failed", f"GET answered {response.status}"
            async with session.put(url, headers=headers, json=document) as response:
                if response.status != 200:
                    return "failed", f"PUT answered {response.status}: {await response.text()}"
            return "pushed", ""
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            return "failed", f"{type(e).__name__}: {e}"[:200]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def forget(self, uid: str) -> None:
        """A ModelDeployment was deleted: drop its token."""
        self._tokens.pop(uid, None)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


def _decode(secret: Mapping[str, Any] | None) -> str | None:
    value = ((secret or {}).get("data") or {}).get(TOKEN_KEY)
    if not isinstance(value, str) or not value:
        return None
    return base64.b64decode(value).decode()
