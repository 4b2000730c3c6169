"""Provenance and audit: where each revision's model came from and who asked for it (pure).

The rollout state machine keeps `status.history` to what it needs to decide; this module adds
the audit facts around it, after the planner ran:

- `status.model`: the registry reference as last resolved (version, run id, URLs, digests);
- `status.revisions`: the facts of each revision still in stable, canary or history — model
  reference, resolved version, run id, sha256 of model and profile, the manager that last
  changed the spec (from `metadata.managedFields`) and when it was resolved;
- each `status.history` entry: those facts, plus the gate evidence of its last analysis and
  whether the verdict has been written back to the registry (`registryWriteBack`).

It also says what to write back (`write_backs`) and builds the plan for a reference that
cannot be resolved at all. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from roost_operator import conditions
from roost_operator.planner import ModelDeploymentObject, Plan
from roost_operator.registry import Resolution, stable_alias, tag_prefix
from roost_operator.rollout import Event

RESOLVED = "ModelResolved"
"""The condition that says how the registry reference was resolved (absent for plain URIs)."""
OWN_MANAGERS = ("roost", "kopf")
FACT_KEYS = (
    "reference",
    "version",
    "runId",
    "modelSha256",
    "profileSha256",
    "manager",
    "resolvedAt",
)
PENDING, DONE = "pending", "done"
REVISIONS_LIMIT = 12


def manager_of(managed_fields: Sequence[Mapping[str, Any]] | None) -> str:
    """The field manager that last wrote `spec` (kubectl, argocd-controller, helm, flux...).

    roost's own managers (status patches, kopf's annotations) never own `spec`, but are
    skipped anyway so a future spec write of ours cannot pose as the user's.
    """
    best: tuple[str, str] | None = None
    for entry in managed_fields or ():
        fields = entry.get("fieldsV1") or {}
        manager = str(entry.get("manager") or "")
        if "f:spec" not in fields or manager.startswith(OWN_MANAGERS):
            continue
        when = str(entry.get("time") or "")
        if best is None or when >= best[0]:
            best = (when, manager)
    return best[1] if best else "unknown"


def resolved_spec(spec: Mapping[str, Any], res: Resolution) -> dict[str, Any]:
    """The spec with the registry reference replaced by what the pods load.

    `model.resolved` carries version and run id into the revision hash: a new version makes a
    new revision even if its files happened to live at the same URL.
    """
    model = {k: v for k, v in (spec.get("model") or {}).items() if k != "registry"}
    model.update(uri=res.model_uri, sha256=res.sha256)
    if res.profile_uri:
        model["profileUri"] = res.profile_uri
    model["resolved"] = {"reference": res.reference, "version": res.version, "runId": res.run_id}
    return {**spec, "model": model}


def facts(spec: Mapping[str, Any], res: Resolution | None, manager: str) -> dict[str, Any]:
    """The audit facts of the revision `spec` (already resolved) makes."""
    model = spec.get("model") or {}
    return {
        "reference": res.reference if res else str(model.get("uri") or ""),
        "version": res.version if res else None,
        "runId": res.run_id if res else None,
        "modelSha256": (res.sha256 if res else model.get("sha256")) or None,
        "profileSha256": res.profile_sha256 if res else None,
        "manager": manager,
        "resolvedAt": res.resolved_at if res else None,
    }


@dataclass(frozen=True)
class Audit:
    """What this reconciliation knows beyond the planner's inputs."""

    revision: str
    """The revision the (resolved) spec asks for."""
    facts: Mapping[str, Any]
    resolution: Resolution | None
    condition: conditions.Condition | None
    """`ModelResolved`, for registry references."""
    evidence: Mapping[str, Any] | None = None
    """`AnalysisResult.to_status()` of this tick's analysis, if one ran."""


def _live(status: Mapping[str, Any]) -> set[str]:
    revs = {h.get("revision") for h in status.get("history") or []}
    for key in ("stable", "canary"):
        part = status.get(key)
        if isinstance(part, Mapping):
            revs.add(part.get("revision"))
    return {r for r in revs if isinstance(r, str) and r}


def _key(entry: Mapping[str, Any]) -> tuple[Any, Any]:
    return entry.get("revision"), entry.get("startedAt")


def annotate(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    audit: Audit,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """`after` (the planner's status) with the audit facts of `before` carried over and added."""
    status = dict(after)
    revisions: dict[str, Any] = dict(before.get("revisions") or {})
    if audit.revision in _live(status) and audit.revision not in revisions:
        revisions[audit.revision] = dict(audit.facts)
    old = {_key(h): h for h in before.get("history") or []}
    canary_before = before.get("canary") if isinstance(before.get("canary"), Mapping) else {}
    history = []
    for h in status.get("history") or []:
        entry = dict(h)
        if _key(h) in old:
            entry.update({k: v for k, v in old[_key(h)].items() if k not in entry})
        else:
            entry.update(revisions.get(h.get("revision")) or {})
            evidence = audit.evidence or (canary_before or {}).get("lastAnalysis")
            if evidence:
                entry["gates"] = list(evidence.get("gates") or [])
            if entry.get("version"):
                entry["registryWriteBack"] = PENDING
        history.append(entry)
    status["history"] = history
    # Retired revisions stay (the audit trail of a first deployment has no history entry),
    # oldest dropped first beyond REVISIONS_LIMIT.
    live = _live(status)
    retired = [r for r in revisions if r not in live]
    for r in retired[: max(len(revisions) - REVISIONS_LIMIT, 0)]:
        del revisions[r]
    status["revisions"] = revisions or None
    if audit.resolution is not None:
        status["model"] = audit.resolution.to_status()
    wanted = [audit.condition] if audit.condition is not None else []
    return _set_conditions(before, status, wanted, {RESOLVED}, generation, now)


def _set_conditions(
    before: Mapping[str, Any],
    status: dict[str, Any],
    wanted: Sequence[conditions.Condition],
    replaced: set[str],
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    kept = [c for c in status.get("conditions") or [] if c.get("type") not in replaced]
    merged = conditions.merge(before.get("conditions"), wanted, generation, now)
    rank = {kind: i for i, kind in enumerate(conditions.ORDER)}
    both = kept + merged
    both.sort(key=lambda c: (rank.get(c["type"], len(conditions.ORDER)), c["type"]))
    return {**status, "conditions": both}


def stall(
    before: Mapping[str, Any],
    status: dict[str, Any],
    stalled: tuple[str, str],
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """Stalled=True for `stalled` (reason, message); Ready stays as the planner said."""
    wanted = [
        conditions.Condition(conditions.RECONCILING, "False", "Stalled", "waiting for a fix"),
        conditions.Condition(conditions.STALLED, "True", *stalled),
    ]
    replaced = {conditions.RECONCILING, conditions.STALLED}
    return _set_conditions(before, status, wanted, replaced, generation, now)


def describe(entry: Mapping[str, Any]) -> str:
    """One line of audit facts: reference, version, run, digests, manager."""
    parts = [str(entry.get("reference") or "?")]
    if entry.get("version"):
        parts.append(f"version {entry['version']} (run {entry.get('runId') or 'none'})")
    if entry.get("modelSha256"):
        parts.append(f"sha256 {str(entry['modelSha256'])[:12]}")
    if entry.get("profileSha256"):
        parts.append(f"profile sha256 {str(entry['profileSha256'])[:12]}")
    parts.append(f"spec by {entry.get('manager') or 'unknown'}")
    return ", ".join(parts)


def audit_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Event]:
    """Events with the audit facts: a newly resolved version, and each new verdict."""
    events = []
    old_model, new_model = before.get("model") or {}, after.get("model") or {}
    if new_model and (old_model.get("version"), old_model.get("reference")) != (
        new_model.get("version"),
        new_model.get("reference"),
    ):
        line = describe({**new_model, "modelSha256": new_model.get("sha256"), "manager": "-"})
        events.append(Event("Normal", "ModelResolved", line.rsplit(", spec by", 1)[0]))
    old = {_key(h) for h in before.get("history") or []}
    for h in after.get("history") or []:
        if _key(h) not in old:
            kind: Any = "Normal" if h.get("outcome") == "Promoted" else "Warning"
            text = f"{h.get('outcome')} {h.get('revision')}: {describe(h)}; {h.get('reason') or ''}"
            events.append(Event(kind, "RolloutAudited", text))
    return events


@dataclass(frozen=True)
class WriteBack:
    """One verdict to record in the registry."""

    index: int
    """Position of the history entry in `status.history` (marked done once written)."""
    model: str
    version: str
    alias: str | None
    tags: dict[str, str]


def write_backs(status: Mapping[str, Any], namespace: str, name: str) -> list[WriteBack]:
    """Verdicts in `status.history` not written to the registry yet (oldest first).

    A promotion moves `roost-<namespace>-<name>-stable` to the version; every verdict tags the
    version with outcome, reason, the gate results and the time, under `roost/<ns>/<name>/`.
    """
    out = []
    prefix = tag_prefix(namespace, name)
    for i, h in enumerate(status.get("history") or []):
        if h.get("registryWriteBack") != PENDING or not h.get("version"):
            continue
        model = str(h.get("reference") or "").removeprefix("models:/").split("@")[0].split("/")[0]
        tags = {
            f"{prefix}/outcome": str(h.get("outcome")),
            f"{prefix}/reason": str(h.get("reason") or ""),
            f"{prefix}/finishedAt": str(h.get("finishedAt") or ""),
            f"{prefix}/revision": str(h.get("revision")),
            f"{prefix}/gates": json.dumps(h.get("gates") or [], separators=(",", ":")),
        }
        promoted = h.get("outcome") == "Promoted"
        alias = stable_alias(namespace, name) if promoted else None
        out.append(WriteBack(i, model, str(h["version"]), alias, tags))
    return out


def initial_write_back(
    before: Mapping[str, Any], after: Mapping[str, Any], namespace: str, name: str
) -> WriteBack | None:
    """The first stable revision (no canary, no history) moves the stable alias too."""
    stable = after.get("stable") if isinstance(after.get("stable"), Mapping) else None
    if not stable or (before.get("stable") or {}).get("revision") or after.get("history"):
        return None
    fact = (after.get("revisions") or {}).get(stable.get("revision")) or {}
    if not fact.get("version"):
        return None
    model = str(fact.get("reference") or "").removeprefix("models:/").split("@")[0].split("/")[0]
    prefix = tag_prefix(namespace, name)
    tags = {f"{prefix}/outcome": "Deployed", f"{prefix}/revision": str(stable["revision"])}
    return WriteBack(-1, model, str(fact["version"]), stable_alias(namespace, name), tags)


def mark_written(status: Mapping[str, Any], indexes: Sequence[int]) -> dict[str, Any]:
    """`status` with the history entries at `indexes` marked `registryWriteBack: done`."""
    history = [
        {**h, "registryWriteBack": DONE} if i in indexes else h
        for i, h in enumerate(status.get("history") or [])
    ]
    return {**status, "history": history}


def resolved_condition(res: Resolution, error: str | None) -> conditions.Condition:
    """`ModelResolved`: True with the version, or False because the registry is unreachable."""
    what = f"{res.reference} -> version {res.version} (run {res.run_id or 'none'})"
    if error is None:
        return conditions.Condition(RESOLVED, "True", "Resolved", what)
    return conditions.Condition(
        RESOLVED,
        "False",
        "RegistryUnreachable",
        f"model registry unreachable ({error}); still serving the last resolved {what}",
    )


def unresolved_plan(
    md: ModelDeploymentObject, reason: str, message: str, now: datetime, requeue: float | None
) -> Plan:
    """No version has ever been resolved: keep every child as it is and say why.

    `ReferenceNotFound` is Stalled (a person must fix the reference or the registry);
    `RegistryUnreachable` is Reconciling (it is retried every poll interval).
    """
    status = dict(md.status)
    previous = status.get("conditions")
    if reason == "RegistryUnreachable":
        wanted = conditions.kstatus((False, reason, message), (reason, message), None)
        cond = conditions.Condition(RESOLVED, "False", reason, message)
    else:
        wanted = conditions.kstatus((False, reason, message), None, (reason, message))
        cond = conditions.Condition(RESOLVED, "False", reason, message)
    status["observedGeneration"] = md.generation
    status["conditions"] = conditions.merge(previous, [*wanted, cond], md.generation, now)
    old = conditions.find(previous, RESOLVED)
    events: tuple[Event, ...] = ()
    if old is None or old.get("reason") != reason or old.get("message") != message:
        events = (Event("Warning", reason, message),)
    return Plan(status=status, events=events, requeue_after=requeue)
