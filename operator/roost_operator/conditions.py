"""Status conditions by Kubernetes API conventions, with kstatus's Ready/Reconciling/Stalled.

`lastTransitionTime` only moves when a condition's `status` flips, so a status rewritten with
the same content compares equal and the applier writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from roost_operator.times import rfc3339_seconds

Status = Literal["True", "False", "Unknown"]
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
ORDER = (READY, RECONCILING, STALLED)


@dataclass(frozen=True)
class Condition:
    """One condition as the planner wants it (the transition time is filled in by `merge`)."""

    type: str
    status: Status
    reason: str
    message: str


def find(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    """The condition of type `kind`, if any."""
    return next((c for c in conditions or () if c.get("type") == kind), None)


def is_true(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> bool:
    """Whether condition `kind` is present with status True."""
    found = find(conditions, kind)
    return found is not None and found.get("status") == "True"


def merge(
    previous: Sequence[Mapping[str, Any]] | None,
    wanted: Sequence[Condition],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new `status.conditions`: `wanted`, keeping each transition time unless it flipped.

    Conditions not in `wanted` are dropped; the result is ordered Ready, Reconciling, Stalled,
    then anything else by type, so that equal content serialises identically.
    """
    out: list[dict[str, Any]] = []
    for c in wanted:
        old = find(previous, c.type)
        since = (
            str(old["lastTransitionTime"])
            if old is not None and old.get("status") == c.status and old.get("lastTransitionTime")
            else rfc3339_seconds(now)
        )
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "observedGeneration": generation,
                "lastTransitionTime": since,
                "reason": c.reason,
                # The CRD requires a message; an empty one says nothing but is still valid.
                "message": c.message,
            }
        )
    rank = {kind: i for i, kind in enumerate(ORDER)}
    out.sort(key=lambda c: (rank.get(c["type"], len(ORDER)), c["type"]))
    return out


def kstatus(
    ready: tuple[bool, str, str],
    reconciling: tuple[str, str] | None,
    stalled: tuple[str, str] | None,
) -> list[Condition]:
    """The three kstatus conditions from (ready?, reason, message) and the abnormal ones.

    kstatus reads the abnormal-true conditions: Reconciling and Stalled are written as False
    (reason `Current`/`NotStalled`) rather than left out, so `kubectl wait
    --for=condition=Stalled=false` works too. A stalled object is not reconciling: it waits
    for a change to its spec (or a retry).
    """
    ok, reason, message = ready
    conditions = [Condition(READY, "True" if ok else "False", reason, message)]
    if stalled is not None:
        conditions.append(Condition(RECONCILING, "False", "Stalled", "waiting for a spec change"))
        conditions.append(Condition(STALLED, "True", stalled[0], stalled[1]))
    elif reconciling is not None:
        conditions.append(Condition(RECONCILING, "True", reconciling[0], reconciling[1]))
        conditions.append(Condition(STALLED, "False", "NotStalled", "making progress"))
    else:
        conditions.append(Condition(RECONCILING, "False", "Current", "reconciled"))
        conditions.append(Condition(STALLED, "False", "NotStalled", "making progress"))
    return conditions
