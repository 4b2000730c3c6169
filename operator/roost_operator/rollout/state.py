"""The persisted rollout state, as frozen dataclasses (the policy is `spec.RolloutPolicy`).

`RolloutState.from_status` / `to_status` round-trip exactly (times as RFC 3339 ``...Z``), so an
operator restarted at any moment decides the same as the one before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from roost_operator.times import format_time, parse_time

HISTORY_LIMIT = 10
"""`status.history` keeps the last this many rollouts."""

Outcome = Literal["Promoted", "RolledBack", "Aborted", "Superseded"]


@dataclass(frozen=True)
class RevisionRef:
    """A revision and the model it serves."""

    revision: str
    model_uri: str


@dataclass(frozen=True)
class CanaryState:
    """`status.canary`: the revision being rolled out and where it stands."""

    revision: str
    model_uri: str
    step: int
    """Index into the policy's steps; ``len(steps)`` means full scale, promoted once ready."""
    weight: int
    step_started_at: datetime
    """When the pause clock of this step started (reset while the step's pods are not ready)."""
    started_at: datetime
    consecutive_failures: int
    analysis_count: int
    last_analysis: dict[str, Any] | None
    """`AnalysisResult.to_status()` of the latest analysis."""
    evidence: dict[str, Any] | None = None
    """The sequential gates' accumulated evidence over the whole rollout
    (`roost_operator.verdicts`), so a restarted operator continues the same tests."""
    validation: dict[str, Any] | None = None
    """`status.canary.validation`: the checks before any traffic (``result`` passed/failed,
    ``message``, ``checks``, ``time``); None while they have not run."""
    promotion: str | None = None
    """The reason it will be promoted with, set when it starts growing to full scale.

    Either its last step passed (the gates keep judging while it grows) or a person asked
    (`PROMOTED_BY_USER`: steps and gates no longer apply). From then on the canary runs at the
    total replica count next to the stable revision and is promoted when all of its pods are
    ready; it never goes back to a step.
    """


PROMOTED_BY_USER = "promoted by user"
"""`CanaryState.promotion` of a promote request (`kubectl roost promote`)."""


@dataclass(frozen=True)
class HistoryEntry:
    """One finished rollout in `status.history`."""

    revision: str
    model_uri: str
    outcome: str
    reason: str
    started_at: datetime
    finished_at: datetime


def _text(m: Mapping[str, Any], key: str) -> str:
    v = m.get(key)
    return v if isinstance(v, str) else ""


def _int(m: Mapping[str, Any], key: str) -> int:
    v = m.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


@dataclass(frozen=True)
class RolloutState:
    """The rollout part of `status`; everything `decide` needs to resume after a restart."""

    stable: RevisionRef | None
    canary: CanaryState | None
    failed_revision: str | None
    history: tuple[HistoryEntry, ...]
    handled_requests: Mapping[str, str]

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> RolloutState:
        """Read `status`, tolerating missing or malformed keys (they read as absent)."""
        status = _mapping(status)
        s, c = _mapping(status.get("stable")), _mapping(status.get("canary"))
        stable = (
            RevisionRef(_text(s, "revision"), _text(s, "modelUri")) if s.get("revision") else None
        )
        canary = None
        step_started = parse_time(c.get("stepStartedAt"))
        if c.get("revision") and step_started is not None:
            analysis = c.get("lastAnalysis")
            canary = CanaryState(
                revision=_text(c, "revision"),
                model_uri=_text(c, "modelUri"),
                step=max(_int(c, "step"), 0),
                weight=_int(c, "weight"),
                step_started_at=step_started,
                # Older CRDs prune startedAt; the step's start is the best remaining guess.
                started_at=parse_time(c.get("startedAt")) or step_started,
                consecutive_failures=max(_int(c, "consecutiveFailures"), 0),
                analysis_count=max(_int(c, "analysisCount"), 0),
                last_analysis=dict(analysis) if isinstance(analysis, Mapping) else None,
                evidence=dict(c["evidence"]) if isinstance(c.get("evidence"), Mapping) else None,
                promotion=_text(c, "promotion") or None,
                validation=dict(c["validation"])
                if isinstance(c.get("validation"), Mapping)
                else None,
            )
        history = []
        for h in status.get("history") or []:
            h = _mapping(h)
            started, finished = parse_time(h.get("startedAt")), parse_time(h.get("finishedAt"))
            if h.get("revision") and started and finished:
                history.append(
                    HistoryEntry(
                        _text(h, "revision"), _text(h, "modelUri"), _text(h, "outcome"),
                        _text(h, "reason"), started, finished,
                    )
                )  # fmt: skip
        failed = status.get("failedRevision")
        handled = _mapping(status.get("handledRequests"))
        return cls(
            stable=stable,
            canary=canary,
            failed_revision=failed if isinstance(failed, str) and failed else None,
            history=tuple(history[-HISTORY_LIMIT:]),
            handled_requests={k: v for k, v in handled.items() if isinstance(v, str)},
        )

    def to_status(self) -> dict[str, Any]:
        """The contract's status keys. Absent parts are None, so a merge patch deletes them."""
        c = self.canary
        return {
            "stable": {"revision": self.stable.revision, "modelUri": self.stable.model_uri}
            if self.stable
            else None,
            "canary": {
                "revision": c.revision,
                "modelUri": c.model_uri,
                "step": c.step,
                "weight": c.weight,
                "stepStartedAt": format_time(c.step_started_at),
                "startedAt": format_time(c.started_at),
                "consecutiveFailures": c.consecutive_failures,
                "analysisCount": c.analysis_count,
                "lastAnalysis": dict(c.last_analysis) if c.last_analysis is not None else None,
                "evidence": dict(c.evidence) if c.evidence is not None else None,
                "promotion": c.promotion,
                "validation": dict(c.validation) if c.validation is not None else None,
            }
            if c
            else None,
            "failedRevision": self.failed_revision,
            "history": [
                {
                    "revision": h.revision,
                    "modelUri": h.model_uri,
                    "outcome": h.outcome,
                    "reason": h.reason,
                    "startedAt": format_time(h.started_at),
                    "finishedAt": format_time(h.finished_at),
                }
                for h in self.history
            ],
            "handledRequests": dict(self.handled_requests),
        }
