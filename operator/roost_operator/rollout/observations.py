"""What `decide` sees and returns, the replica arithmetic, and when an analysis is due.

Split from `machine` so each reads at once; everything is re-exported by `roost_operator.rollout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from roost_operator.api import REQUEST_KINDS, REQUEST_PREFIX
from roost_operator.rollout.state import PROMOTED_BY_USER, CanaryState, RevisionRef, RolloutState
from roost_operator.spec import RolloutPolicy
from roost_operator.times import parse_time, rfc3339_seconds

if TYPE_CHECKING:
    from roost_operator.gates import AnalysisResult

READINESS_POLL_SECONDS = 5.0
"""Requeue while waiting for pods: pod events usually come first, this bounds a missed one."""
MIN_REQUEUE_SECONDS = 1.0
"""Smallest requeue, so a due-but-skipped analysis cannot turn into a hot loop."""


@dataclass(frozen=True)
class Observations:
    """What the planner saw this reconcile."""

    desired: RevisionRef
    total_replicas: int
    paused: bool
    stable_ready_replicas: int
    canary_ready_replicas: int
    canary_failure: str | None
    """Why the canary's pods keep failing (e.g. CrashLoopBackOff and the pod's message)."""
    requests: Mapping[str, str]
    """Request annotations, ``promote``/``abort``/``retry`` (``roost.dev/`` prefix optional)."""
    analysis: AnalysisResult | None
    now: datetime
    validation: Mapping[str, Any] | None = None
    """This tick's validation outcome (`roost_operator.validator`), when it was due."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to emit on the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What the planner applies: persisted state, replicas, traffic weight, events, conditions."""

    state: RolloutState
    stable_replicas: int
    canary_replicas: int
    weight: int
    """Canary share (0..100) of HTTPRoute traffic; 0 while no canary pod is ready."""
    events: tuple[Event, ...]
    progressing: tuple[str, str] | None
    stalled: tuple[str, str] | None
    requeue_after: float | None


def replica_split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for a canary `weight` percent of `total`.

    canary = ceil(total * weight / 100); while 0 < weight < 100 each side keeps at least one
    pod, so with `total` 1 both run one. Weight 0 or 100 gives everything to one side.
    """
    if total <= 0:
        return 0, 0
    if weight <= 0:
        return total, 0
    if weight >= 100:
        return 0, total
    if total == 1:
        return 1, 1
    canary = min(max(-(-total * weight // 100), 1), total - 1)
    return total - canary, canary


def canary_target_replicas(policy: RolloutPolicy, canary: CanaryState, total: int) -> int:
    """Canary replicas its current step wants."""
    if policy.full_scale(canary.step):
        return max(total, 0)
    shadow = policy.shadow(canary.step)
    if shadow:
        # Copies of `shadow` percent of the stable's requests: that share of its capacity.
        return max(1, -(-max(total, 0) * shadow // 100))
    return replica_split(total, policy.weight(canary.step))[1]


def canary_ready(policy: RolloutPolicy, state: RolloutState, obs: Observations) -> bool:
    """Whether every canary pod the current step wants is ready (at least one)."""
    c = state.canary
    if c is None:
        return False
    return obs.canary_ready_replicas >= max(
        1, canary_target_replicas(policy, c, obs.total_replicas)
    )


def analysis_time(canary: CanaryState) -> datetime | None:
    """When the canary's last analysis ran, or None."""
    return parse_time((canary.last_analysis or {}).get("time"))


def analysis_due(
    policy: RolloutPolicy, state: RolloutState, obs_now: datetime, canary_ready: bool
) -> bool:
    """Whether an analysis should run now: a ready canary in a step, `interval` after the last.

    The first analysis of a canary is due as soon as it is ready (the pods source records its
    baseline then). A last analysis in the future (clock moved back) does not block.
    """
    c = state.canary
    if c is None or not canary_ready or not policy.gated(c.step) or policy.full_scale(c.step):
        return False
    if validation_pending(policy, c):
        return False  # validated before anything else judges it
    if not policy.shadow(c.step) and not traffic_allowed(policy, c):
        return False  # no traffic yet (a shadow step has copies): nothing to analyse
    last = analysis_time(c)
    if last is None or last > obs_now:
        return True
    return (obs_now - last).total_seconds() >= policy.interval_seconds


def fresh_requests(state: RolloutState, obs: Observations) -> dict[str, str]:
    """Manual requests whose token has not been acted on yet, by kind."""
    fresh = {}
    for key, token in obs.requests.items():
        kind = key.removeprefix(REQUEST_PREFIX)
        if kind in REQUEST_KINDS and token and state.handled_requests.get(kind) != token:
            fresh[kind] = token
    return fresh


def needs_analysis(policy: RolloutPolicy, state: RolloutState, obs: Observations) -> bool:
    """`analysis_due` plus everything else that makes this tick skip analysis.

    The planner builds `obs` without an analysis, asks this, runs the analysis if True and calls
    `decide` with it. No analysis while paused, when the canary is about to be superseded, is
    failing, being promoted on request, or a promote/abort request is about to end it.
    """
    c = state.canary
    if c is None or obs.paused or obs.canary_failure or c.revision != obs.desired.revision:
        return False
    if c.promotion == PROMOTED_BY_USER:
        return False
    if {"promote", "abort"} & fresh_requests(state, obs).keys():
        return False
    return analysis_due(policy, state, obs.now, canary_ready(policy, state, obs))


def validation_pending(policy: RolloutPolicy, canary: CanaryState) -> bool:
    """Whether the canary still has to pass `spec.rollout.validation` before any traffic.

    A canary that replaces the stable revision at full scale (no steps) is validated too: the
    stable keeps every replica and all the traffic meanwhile. One started while the stable had
    no ready pod is not (``validation_skipped`` records why at its start): nothing to compare.
    """
    return policy.validation is not None and canary.validation is None and canary.promotion is None


def validation_skipped(reason: str, now: datetime) -> dict[str, str]:
    """The ``status.canary.validation`` record of a canary validation could not check."""
    return {"result": "skipped", "message": reason, "time": rfc3339_seconds(now)}


def traffic_allowed(policy: RolloutPolicy, canary: CanaryState) -> bool:
    """Whether the canary's pods may take traffic (their ``roost.dev/traffic`` gate opens).

    Never in a shadow step: the canary then answers only the stable pods' copies.
    """
    if validation_pending(policy, canary) or policy.shadow(canary.step):
        return False
    return (canary.validation or {}).get("result") != "failed"


def needs_validation(policy: RolloutPolicy, state: RolloutState, obs: Observations) -> bool:
    """Whether the handler must validate the canary now, before planning.

    The canary's containers are ready for its first step, validation has not run, and nothing
    (pause, failure, supersession, a manual request) is about to end or freeze it.
    """
    c = state.canary
    if c is None or obs.paused or obs.canary_failure or c.revision != obs.desired.revision:
        return False
    if {"promote", "abort"} & fresh_requests(state, obs).keys():
        return False
    return validation_pending(policy, c) and canary_ready(policy, state, obs)
