"""The persisted rollout state and the rollout policy, as frozen dataclasses.

`RolloutState.from_status` / `to_status` round-trip exactly (times as RFC 3339 ``...Z``), so an
operator restarted at any moment decides the same as the one before it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

HISTORY_LIMIT = 10
"""`status.history` keeps the last this many rollouts."""

Outcome = Literal["Promoted", "RolledBack", "Aborted", "Superseded"]

# --- durations and times -----------------------------------------------------------------

_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)"
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as ``30s``, ``1m30s``, ``500ms`` or ``1h``."""
    s = text.strip()
    if s == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_DURATION_PART})+", s):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 2m, 1h30m or 500ms")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in re.findall(_DURATION_PART, s))


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC (``...Z``); fractions only when present, so parsing gives `t` back."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 string as an aware UTC datetime; None when missing or malformed."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class Step:
    """One canary step: the traffic weight (1..100) held for at least `pause_seconds`."""

    weight: int
    pause_seconds: float


@dataclass(frozen=True)
class RolloutPolicy:
    """`spec.rollout` as the state machine needs it (gate thresholds live in `gates`)."""

    steps: tuple[Step, ...]
    interval_seconds: float
    failure_limit: int
    analysis_enabled: bool = True
    """Whether gates are configured: a step then also needs a passing analysis to end."""
    progress_deadline_seconds: float | None = None
    """Per step, from when its pods are ready: how long its gates may stay inconclusive
    (never shorter than the step's pause). None waits for a verdict however long it takes."""
    on_inconclusive: Literal["rollback", "pause", "promote"] = "rollback"
    """What a step that reached its deadline without a verdict does; recorded as a deadline
    verdict, never as a pass."""

    def full_scale(self, step: int) -> bool:
        """Past the last step: full scale next to the stable revision, promoted once ready."""
        return step >= len(self.steps)

    def weight(self, step: int) -> int:
        """Canary traffic weight of a step (100 past the last one)."""
        return self.steps[step].weight if step < len(self.steps) else 100

    def pause_seconds(self, step: int) -> float:
        """How long a step holds once its pods are ready (0 past the last one)."""
        return self.steps[step].pause_seconds if step < len(self.steps) else 0.0


def _duration(value: Any, where: str, default: str) -> float:
    if value is None:
        value = default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a duration such as 30s, got {value!r}")
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def policy_from_spec(rollout_spec: Mapping[str, Any] | None) -> RolloutPolicy:
    """Build the policy from the contract's `spec.rollout` (schema defaults may be missing)."""
    rollout_spec = rollout_spec or {}
    steps = []
    for i, raw in enumerate(rollout_spec.get("steps") or []):
        weight = raw.get("weight") if isinstance(raw, Mapping) else None
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
            raise ValueError(f"spec.rollout.steps[{i}].weight must be 1..100, got {weight!r}")
        pause = _duration(raw.get("pause"), f"spec.rollout.steps[{i}].pause", "0s")
        steps.append(Step(weight=weight, pause_seconds=pause))
    analysis = rollout_spec.get("analysis") or {}
    interval = _duration(analysis.get("interval"), "spec.rollout.analysis.interval", "10s")
    if interval <= 0:
        raise ValueError("spec.rollout.analysis.interval must be longer than 0s")
    limit = analysis.get("failureLimit", 2)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"spec.rollout.analysis.failureLimit must be 1 or more, got {limit!r}")
    gates = analysis.get("gates") or {}
    return RolloutPolicy(
        steps=tuple(steps),
        interval_seconds=interval,
        failure_limit=limit,
        analysis_enabled=any(isinstance(g, Mapping) and g for g in gates.values()),
    )


# --- persisted state -------------------------------------------------------------------------


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
