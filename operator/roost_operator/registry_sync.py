"""The registry around one reconciliation: resolve before planning, audit and write back after.

`RegistrySync.prepare` turns a `models:/` reference into the spec the planner plans with (an
HTTP URL, a digest and the resolved version), polling the registry at most once per
`spec.model.registry.pollInterval`; when the alias moves, the resolved spec changes, the
revision changes, and the planner starts a canary as for any spec change. When the registry
does not answer, the last resolution (kept in `status.model`, so a restarted operator has it
too) keeps serving. `RegistrySync.finish` adds the audit facts to the planned status, writes
verdicts back to the registry and adds the events that carry the same facts.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException

from roost_operator import provenance, registry
from roost_operator.applier import Applier
from roost_operator.conditions import Condition
from roost_operator.planner import ModelDeploymentObject, Plan
from roost_operator.registry_client import (
    MlflowRegistry,
    ReferenceNotFoundError,
    RegistryUnreachableError,
    auth_headers,
)
from roost_operator.revision import compute_revision
from roost_operator.rollout import Event
from roost_operator.spec import SpecError, parse_spec
from roost_operator.times import rfc3339_seconds

SECRET_ANNOTATION = "roost.dev/registry"
UNRESOLVABLE = "ModelReferenceUnresolvable"
log = logging.getLogger(__name__)


@dataclass
class _Poll:
    reference: str
    at: float
    resolution: registry.Resolution | None = None
    unreachable: str | None = None
    not_found: str | None = None


@dataclass(frozen=True)
class Prepared:
    """The input to the planner, or the plan itself when nothing could be resolved yet."""

    md: ModelDeploymentObject
    plan: Plan | None = None
    resolution: registry.Resolution | None = None
    condition: Condition | None = None
    stalled: tuple[str, str] | None = None
    poll_seconds: float | None = None


class RegistrySync:
    """Per-process registry state: one HTTP session, the last poll per ModelDeployment."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self._session: aiohttp.ClientSession | None = None
        self._polls: dict[tuple[str, str], _Poll] = {}
        self._digests: dict[tuple[str, str, str], registry.Resolution] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[_Poll]] = {}
        self.wake: Callable[[str, str], None] | None = None
        """Called with (namespace, name) when a background poll has an answer."""

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Cancel running polls, close the HTTP session."""
        for task in self._tasks.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()

    def refresh(self, model: str) -> int:
        """Make every reference to `model` due for a poll now (a webhook said it changed)."""
        keys = [
            key
            for key, poll in self._polls.items()
            if poll.reference.removeprefix(registry.SCHEME).split("@")[0].split("/")[0] == model
        ]
        for key in keys:
            self._polls[key].at = float("-inf")
            if self.wake is not None:
                self.wake(*key)
        return len(keys)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is cached for a deleted ModelDeployment."""
        self._polls.pop((namespace, name), None)
        task = self._tasks.pop((namespace, name), None)
        if task is not None:
            task.cancel()

    async def _client(
        self, md: ModelDeploymentObject, spec: registry.RegistrySpec
    ) -> MlflowRegistry:
        data: dict[str, str] = {}
        if spec.secret_name:
            path = f"/api/v1/namespaces/{md.namespace}/secrets/{spec.secret_name}"
            try:
                secret = await self.applier.request("GET", path)
            except ApiException as e:
                raise ReferenceNotFoundError(
                    f"cannot read Secret {spec.secret_name} (HTTP {e.status}); with the Helm "
                    "chart, set rbac.registryCredentials=true"
                ) from e
            bound = (secret.get("metadata", {}).get("annotations") or {}).get(SECRET_ANNOTATION)
            if bound != spec.tracking_uri:
                raise ReferenceNotFoundError(
                    f"Secret {spec.secret_name} is not annotated {SECRET_ANNOTATION}="
                    f"{spec.tracking_uri}; roost sends a Secret only to the server it names"
                )
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        return MlflowRegistry(self.session, spec, auth_headers(data))

    async def _poll(
        self,
        md: ModelDeploymentObject,
        spec: registry.RegistrySpec,
        last: registry.Resolution | None,
        now: datetime,
    ) -> _Poll:
        """The latest poll of the reference, starting a new one when the interval is over.

        The registry call runs as a task of its own: while a version is serving, a slow or hung
        registry never holds up the reconciliation (the canary's analysis runs on time); the
        task wakes the ModelDeployment up when it has an answer. Without a version there is
        nothing to do but wait for it.
        """
        uri = str(md.spec["model"]["uri"])
        key = (md.namespace, md.name)
        cached = self._polls.get(key)
        if cached and cached.reference == uri and time.monotonic() - cached.at < spec.poll_seconds:
            return cached
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.create_task(self._resolve(key, md, spec, last, now))
            self._tasks[key] = task
        if cached is None or cached.reference != uri or last is None:
            return await asyncio.shield(task)
        return task.result() if task.done() else cached

    async def _resolve(
        self,
        key: tuple[str, str],
        md: ModelDeploymentObject,
        spec: registry.RegistrySpec,
        last: registry.Resolution | None,
        now: datetime,
    ) -> _Poll:
        uri = str(md.spec["model"]["uri"])
        poll = _Poll(uri, time.monotonic())
        try:
            client = await self._client(md, spec)
            res = await client.resolve(registry.parse_reference(uri), rfc3339_seconds(now))
            known = self._digests.get((spec.tracking_uri, res.name, res.version))
            if known is not None and known.model_uri == res.model_uri:
                res = replace(res, sha256=known.sha256, profile_sha256=known.profile_sha256)
            else:
                res = await client.with_digests(res)
                self._digests[(spec.tracking_uri, res.name, res.version)] = res
            if last is not None and (last.version, last.model_uri) == (res.version, res.model_uri):
                res = replace(res, resolved_at=last.resolved_at)  # same version: status unchanged
            poll.resolution = res
        except RegistryUnreachableError as e:
            poll.unreachable = str(e)
        except ReferenceNotFoundError as e:
            poll.not_found = f"{uri} does not resolve: {e}"
        except Exception as e:  # a task's error would otherwise be lost unseen
            poll.unreachable = f"{type(e).__name__}: {e}"
        self._polls[key] = poll
        if self.wake is not None:
            self.wake(*key)
        return poll

    async def prepare(self, md: ModelDeploymentObject, now: datetime) -> Prepared:
        """Resolve `spec.model.uri` when it is a `models:/` reference (plain URIs pass through)."""
        model = md.spec.get("model") or {}
        uri = str(model.get("uri") or "")
        if not registry.is_reference(uri):
            return Prepared(md)
        try:
            registry.parse_reference(uri)
            spec = registry.registry_spec(model)
        except SpecError as e:
            return Prepared(md, provenance.unresolved_plan(md, "InvalidSpec", str(e), now, None))
        last = registry.Resolution.from_status(md.status.get("model"))
        if last is not None and last.reference != uri:
            last = None
        poll = await self._poll(md, spec, last, now)
        res = poll.resolution or last
        every = spec.poll_seconds
        if res is None:
            if poll.unreachable:
                why = f"model registry unreachable ({poll.unreachable}); nothing resolved yet"
                return Prepared(
                    md, provenance.unresolved_plan(md, "RegistryUnreachableError", why, now, every)
                )
            why = poll.not_found or f"{uri} does not resolve"
            return Prepared(md, provenance.unresolved_plan(md, UNRESOLVABLE, why, now, every))
        resolved = replace(md, spec=provenance.resolved_spec(md.spec, res))
        if poll.not_found:
            why = f"{poll.not_found}; still serving version {res.version}"
            cond = Condition(provenance.RESOLVED, "False", UNRESOLVABLE, why)
            return Prepared(resolved, None, res, cond, (UNRESOLVABLE, why), every)
        cond = provenance.resolved_condition(res, poll.unreachable)
        return Prepared(resolved, None, res, cond, None, every)

    async def finish(
        self,
        md: ModelDeploymentObject,
        prepared: Prepared,
        plan: Plan,
        managed_fields: Any,
        evidence: dict[str, Any] | None,
        image: str,
        now: datetime,
    ) -> Plan:
        """The plan with audit facts in status, verdicts written back, and audit events."""
        try:
            spec = parse_spec(prepared.md.spec)
            revision = compute_revision(spec, spec.server.image or image)
        except SpecError:
            return plan
        manager = provenance.manager_of(managed_fields)
        audit = provenance.Audit(
            revision=revision,
            facts=provenance.facts(prepared.md.spec, prepared.resolution, manager),
            resolution=prepared.resolution,
            condition=prepared.condition,
            evidence=evidence,
        )
        status = provenance.annotate(md.status, plan.status, audit, md.generation, now)
        if prepared.stalled is not None:
            status = provenance.stall(md.status, status, prepared.stalled, md.generation, now)
        events = list(plan.events) + provenance.audit_events(md.status, status)
        if prepared.resolution is not None:
            status = await self._write_back(md, status, events)
        requeue = plan.requeue_after
        if prepared.poll_seconds is not None:
            requeue = min(
                requeue if requeue is not None else prepared.poll_seconds, prepared.poll_seconds
            )
        return replace(plan, status=status, events=tuple(events), requeue_after=requeue)

    async def _write_back(
        self, md: ModelDeploymentObject, status: dict[str, Any], events: list[Event]
    ) -> dict[str, Any]:
        spec = registry.registry_spec(md.spec.get("model") or {})
        pending = provenance.write_backs(status, md.namespace, md.name)
        first = provenance.initial_write_back(md.status, status, md.namespace, md.name)
        if not pending and first is None:
            return status
        done: list[int] = []
        try:
            client = await self._client(md, spec)
            for wb in ([first] if first else []) + pending:
                if wb.alias:
                    await client.set_alias(wb.model, wb.alias, wb.version)
                await client.set_tags(wb.model, wb.version, wb.tags)
                done.append(wb.index)
                where = f" and moved alias {wb.alias}" if wb.alias else ""
                events.append(
                    Event(
                        "Normal",
                        "RegistryUpdated",
                        f"tagged {wb.model} version {wb.version} {_outcome(md, wb)}{where}",
                    )
                )
        except (RegistryUnreachableError, ReferenceNotFoundError) as e:
            # Kept pending in status.history: the next reconciliation tries again.
            log.warning("registry write-back for %s/%s failed: %s", md.namespace, md.name, e)
        return provenance.mark_written(status, [i for i in done if i >= 0])


def _outcome(md: ModelDeploymentObject, wb: provenance.WriteBack) -> str:
    return wb.tags.get(f"{registry.tag_prefix(md.namespace, md.name)}/outcome", "")
