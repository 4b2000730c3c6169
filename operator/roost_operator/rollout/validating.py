"""The rollout's validation step: a canary held at weight 0 until `spec.rollout.validation` ran.

Split from `machine` (which calls `validation_step` from `_advance`) to keep each module short.
Pure, like the rest of the rollout package.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from roost_operator.rollout.messages import at_step
from roost_operator.rollout.observations import (
    MIN_REQUEUE_SECONDS,
    READINESS_POLL_SECONDS,
    Decision,
    canary_target_replicas,
)
from roost_operator.rollout.state import RolloutState

if TYPE_CHECKING:  # machine imports this module: the type only, no cycle at run time
    from roost_operator.rollout.machine import _Tick


def validation_step(
    t: _Tick, state: RolloutState, ready: bool
) -> tuple[RolloutState, Decision | None]:
    """Record this tick's validation outcome, or hold the canary (the Decision) until one.

    A failure rolls back with ``validation: <reason>``; a pass records it, emits
    ``ValidationPassed`` and starts the first step's pause now, with its first traffic.
    """
    c, outcome = state.canary, t.obs.validation
    assert c is not None
    if not ready or outcome is None:
        return state, _held(t, state, ready)
    state = replace(state, canary=replace(c, validation=dict(outcome)))
    message = str(outcome.get("message") or "")
    if outcome.get("result") == "failed":
        t.emit("Warning", "ValidationFailed", f"{c.revision}: {message}")
        return state, t.roll_back(state, "RolledBack", f"validation: {message}")
    t.emit("Normal", "ValidationPassed", f"{c.revision}: {message}")
    canary = state.canary
    assert canary is not None
    return replace(state, canary=replace(canary, step_started_at=t.now)), None


def _held(t: _Tick, state: RolloutState, ready: bool) -> Decision:
    """Held before any traffic until validation has run on ready containers."""
    policy, obs = t.policy, t.obs
    c = state.canary
    assert c is not None
    # No traffic yet: the step's pause clock has not started.
    state = replace(state, canary=replace(c, step_started_at=t.now))
    target = max(1, canary_target_replicas(policy, c, obs.total_replicas))
    if ready:
        message = f"{at_step(policy, c)}: validating the canary before any traffic"
        requeue = MIN_REQUEUE_SECONDS
    else:
        message = (
            f"{at_step(policy, c)}: waiting for canary pods ({t.ready_pods}/{target} containers "
            "ready) to validate them before any traffic"
        )
        requeue = READINESS_POLL_SECONDS
    return t.decision(state, t.replicas(c, False), ("CanaryProgressing", message), requeue)
