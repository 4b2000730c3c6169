"""The rollout state machine proper: `decide` and its transitions (inputs: `observations`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from roost_operator.rollout.messages import (
    at_step,
    describe_analysis,
    failure_reason,
    seconds,
    step_traffic,
)
from roost_operator.rollout.observations import (
    MIN_REQUEUE_SECONDS,
    READINESS_POLL_SECONDS,
    Decision,
    Event,
    Observations,
    analysis_time,
    canary_ready,
    canary_target_replicas,
    fresh_requests,
    replica_split,
    validation_pending,
    validation_skipped,
)
from roost_operator.rollout.state import (
    HISTORY_LIMIT,
    PROMOTED_BY_USER,
    CanaryState,
    HistoryEntry,
    Outcome,
    RevisionRef,
    RolloutState,
)
from roost_operator.rollout.validating import validation_step
from roost_operator.spec import RolloutPolicy

if TYPE_CHECKING:
    from roost_operator.gates import AnalysisResult


def _stalled(state: RolloutState, obs: Observations) -> tuple[str, str] | None:
    """Stalled=True while the spec still asks for the revision that was rolled back."""
    failed = state.failed_revision
    if failed is None or failed != obs.desired.revision:
        return None
    entry = next(
        (h for h in reversed(state.history) if h.revision == failed and h.outcome != "Promoted"),
        None,
    )
    why = f"Rolled back {failed}: {entry.reason}" if entry else f"Rolled back {failed}"
    serving = state.stable.revision if state.stable else "nothing"
    return (
        "CanaryRolledBack",
        f"{why}; serving {serving}. Change the spec or run `kubectl roost retry` to try it again",
    )


# --- the state machine ----------------------------------------------------------------------


class _Tick:
    """One `decide` call: the inputs and the events it collects."""

    def __init__(self, policy: RolloutPolicy, obs: Observations) -> None:
        self.policy, self.obs = policy, obs
        # Whole seconds, as Kubernetes shows times; the clocks then read the same after a restart.
        self.now = obs.now.astimezone(UTC).replace(microsecond=0)
        self.events: list[Event] = []
        # Ready pods of the canary in `status`; a canary started this tick has none yet (the
        # observed ones belong to the revision it superseded).
        self.ready_pods = obs.canary_ready_replicas

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def finish(self, state: RolloutState, outcome: Outcome, reason: str) -> RolloutState:
        """End the canary with a history entry."""
        c = state.canary
        assert c is not None
        entry = HistoryEntry(c.revision, c.model_uri, outcome, reason, c.started_at, self.now)
        return replace(state, canary=None, history=(*state.history, entry)[-HISTORY_LIMIT:])

    def promote(self, state: RolloutState, reason: str) -> RolloutState:
        c, old = state.canary, state.stable
        assert c is not None
        state = self.finish(state, "Promoted", reason)
        was = f"; it replaces {old.revision}" if old else ""
        self.emit(
            "Normal", "CanaryPromoted", f"Promoted {c.revision} ({c.model_uri}): {reason}{was}"
        )
        return replace(state, stable=RevisionRef(c.revision, c.model_uri))

    def roll_back(self, state: RolloutState, outcome: Outcome, reason: str) -> Decision:
        c = state.canary
        assert c is not None
        state = replace(self.finish(state, outcome, reason), failed_revision=c.revision)
        serving = state.stable.revision if state.stable else "nothing"
        kind = "CanaryRolledBack" if outcome == "RolledBack" else "CanaryAborted"
        self.emit("Warning", kind, f"Rolled back {c.revision}: {reason}; serving {serving}")
        return self.steady(state)

    def decision(
        self,
        state: RolloutState,
        replicas: tuple[int, int, int],
        progressing: tuple[str, str] | None = None,
        requeue_after: float | None = None,
    ) -> Decision:
        return Decision(
            state=state,
            stable_replicas=replicas[0],
            canary_replicas=replicas[1],
            weight=replicas[2],
            events=tuple(self.events),
            progressing=progressing,
            stalled=_stalled(state, self.obs),
            requeue_after=requeue_after,
        )

    def steady(self, state: RolloutState, progressing: tuple[str, str] | None = None) -> Decision:
        return self.decision(state, (max(self.obs.total_replicas, 0), 0, 0), progressing)

    def replicas(self, c: CanaryState, ready: bool) -> tuple[int, int, int]:
        """(stable, canary, route weight) for the canary where it stands.

        Until the step's canary pods are ready the stable revision keeps the previous step's
        replicas and the route keeps the previous weight, so capacity never dips.
        """
        total, policy = self.obs.total_replicas, self.policy
        if policy.full_scale(c.step):
            return max(total, 0), max(total, 0), 0
        if policy.shadow(c.step):
            # No client traffic: the stable keeps every replica, the canary gets copies.
            return max(total, 0), canary_target_replicas(policy, c, total), 0
        weight = policy.weight(c.step)
        if ready:
            return (*replica_split(total, weight), weight)
        previous = policy.weight(c.step - 1) if c.step > 0 else 0
        route = previous if self.ready_pods > 0 else 0
        return replica_split(total, previous)[0], replica_split(total, weight)[1], route


def decide(policy: RolloutPolicy, state: RolloutState, obs: Observations) -> Decision:
    """The next rollout state, replicas, weight, events and conditions (see the module doc)."""
    t = _Tick(policy, obs)
    desired = obs.desired
    fresh = fresh_requests(state, obs)
    state = replace(state, handled_requests={**state.handled_requests, **fresh})

    if state.stable is None:
        t.emit("Normal", "RevisionDeployed", f"Deploying {desired.revision} ({desired.model_uri})")
        return t.steady(replace(state, stable=desired, canary=None))
    if state.canary is not None and state.canary.revision == state.stable.revision:
        state = replace(state, canary=None)  # a hand-edited status: nothing left to roll out

    # Manual requests act even while paused: a person asked for exactly this.
    if "abort" in fresh:
        if state.canary is not None:
            decision = t.roll_back(state, "Aborted", "aborted by user")
            state = decision.state
        else:
            t.emit("Normal", "RequestIgnored", "Abort requested, but no canary is running")
    if "promote" in fresh:
        if state.canary is not None:
            state = _promotion_requested(t, state)
        else:
            t.emit("Normal", "RequestIgnored", "Promote requested, but no canary is running")
    if "retry" in fresh:
        if state.failed_revision is not None:
            t.emit("Normal", "RetryRequested", f"Retrying {state.failed_revision}")
            state = replace(state, failed_revision=None)
        else:
            t.emit("Normal", "RequestIgnored", "Retry requested, but no revision has failed")

    if obs.paused:
        return _paused(t, state)

    stable = state.stable
    assert stable is not None
    c = state.canary
    if c is not None and c.revision != desired.revision:
        reason = (
            f"spec returned to the stable revision {desired.revision}"
            if desired.revision == stable.revision
            else f"superseded by revision {desired.revision}"
        )
        t.emit("Normal", "CanarySuperseded", f"Canary {c.revision} {reason}")
        state = t.finish(state, "Superseded", reason)
    if state.failed_revision is not None and state.failed_revision != desired.revision:
        state = replace(state, failed_revision=None)  # the spec moved on: forget the failure

    started = False
    if state.canary is None:
        if desired.revision in (stable.revision, state.failed_revision):
            return t.steady(state)
        state, started = _start(t, state), True
    return _advance(t, state, started)


def _paused(t: _Tick, state: RolloutState) -> Decision:
    """`spec.paused`: everything stays where it is; only the replica count follows the total."""
    c, desired, stable = state.canary, t.obs.desired, state.stable
    assert stable is not None
    if c is not None and c.promotion == PROMOTED_BY_USER and c.revision == desired.revision:
        return _scale_up_then_promote(t, state)  # asked for by a person: not held by the pause
    if c is not None and c.promotion is not None:
        # Held at full scale next to the stable revision; promoted once the pause is lifted.
        message = f"{at_step(t.policy, c)}: {c.promotion}; paused before promotion"
        return t.decision(state, _growing(t, c), ("Paused", message))
    if c is not None:
        # A canary still to be validated takes no traffic, paused or not.
        ready = canary_ready(t.policy, state, t.obs) and not validation_pending(t.policy, c)
        message = f"{at_step(t.policy, c)}: paused (spec.paused is true)"
        return t.decision(state, t.replicas(c, ready), ("Paused", message))
    if desired.revision not in (stable.revision, state.failed_revision):
        message = (
            f"Rollout of {desired.revision} paused (spec.paused is true); serving {stable.revision}"
        )
        return t.steady(state, ("Paused", message))
    return t.steady(state)


def _start(t: _Tick, state: RolloutState) -> RolloutState:
    """A new canary for the desired revision: at step 1, or at full scale when replacing."""
    policy, obs, desired, stable = t.policy, t.obs, t.obs.desired, state.stable
    assert stable is not None
    replacing = not policy.steps or obs.stable_ready_replicas <= 0
    step = len(policy.steps) if replacing else 0
    c = CanaryState(
        revision=desired.revision,
        model_uri=desired.model_uri,
        step=step,
        weight=policy.weight(step),
        step_started_at=t.now,
        started_at=t.now,
        consecutive_failures=0,
        analysis_count=0,
        last_analysis=None,
    )
    if policy.validation is not None and obs.stable_ready_replicas <= 0:
        skipped = validation_skipped("the stable revision had no ready pod to compare with", t.now)
        c = replace(c, validation=skipped)
    what = f"{desired.revision} ({desired.model_uri})"
    if not policy.steps:
        message = f"Replacing {stable.revision} with {what}: no rollout steps, promoted once ready"
    elif replacing:
        message = (
            f"Replacing {stable.revision} with {what} directly: the stable revision has no ready "
            "pods to compare a canary against"
        )
    else:
        message = f"Started canary {what} at step 1/{len(policy.steps)} ({step_traffic(policy, 0)})"
    t.emit("Normal", "CanaryStarted", message)
    return replace(state, canary=c)


def _record(t: _Tick, state: RolloutState, analysis: AnalysisResult) -> RolloutState:
    c = state.canary
    assert c is not None
    record = analysis.to_status()
    if analysis.paused and not (c.last_analysis or {}).get("paused"):
        t.emit("Warning", "RoutingMismatch", f"{at_step(t.policy, c)}: {analysis.paused}")
    failures = c.consecutive_failures
    if analysis.verdict == "fail":
        failures += 1
    elif analysis.verdict == "pass":
        failures = 0
    c = replace(
        c,
        analysis_count=c.analysis_count + 1,
        last_analysis=record,
        consecutive_failures=failures,
        evidence=dict(analysis.evidence) if analysis.evidence is not None else c.evidence,
    )
    return replace(state, canary=c)


def _step_passed(policy: RolloutPolicy, c: CanaryState) -> bool:
    """With gates: the latest analysis taken during this step passed."""
    if not policy.gated(c.step):
        return True
    when = analysis_time(c)
    return (
        c.last_analysis is not None
        and c.last_analysis.get("verdict") == "pass"
        and when is not None
        and when > c.step_started_at
    )


def _advance(t: _Tick, state: RolloutState, started: bool) -> Decision:
    """Move a running canary along: failures, analysis, readiness, pause, next step, promotion."""
    policy, obs = t.policy, t.obs
    c = state.canary
    assert c is not None
    # The steps may have been edited mid-rollout: clamp the step and follow its weight.
    step = min(c.step, len(policy.steps))
    state = replace(state, canary=replace(c, step=step, weight=policy.weight(step)))

    if not started and obs.canary_failure:
        return t.roll_back(state, "RolledBack", f"canary pods failing: {obs.canary_failure}")
    if c.promotion == PROMOTED_BY_USER:
        return _scale_up_then_promote(t, state)
    if not started and obs.analysis is not None:
        state = _record(t, state, obs.analysis)
        c = state.canary
        assert c is not None
        assert c.last_analysis is not None
        if obs.analysis.verdict == "fail":
            if obs.analysis.decisive:
                # A sequential gate is worse than its margin with confidence: the test already
                # bounds false alarms over every look, so no failureLimit is needed on top.
                reason = failure_reason(c.last_analysis, 1)
                return t.roll_back(state, "RolledBack", reason)
            if c.consecutive_failures >= policy.failure_limit:
                reason = failure_reason(c.last_analysis, c.consecutive_failures)
                return t.roll_back(state, "RolledBack", reason)
            described = describe_analysis(
                c.last_analysis, c.consecutive_failures, policy.failure_limit
            )
            t.emit("Warning", "AnalysisFailed", f"{at_step(policy, c)}: {described}")

    c = state.canary
    assert c is not None
    if c.promotion is not None:
        return _scale_up_then_promote(t, state)  # the last step passed: no way back to a step
    if started:
        t.ready_pods = 0
    ready = t.ready_pods >= max(1, canary_target_replicas(policy, c, obs.total_replicas))
    if validation_pending(policy, c):
        # A canary started this tick has no ready pods (`ready` is False): it waits.
        state, held = validation_step(t, state, ready)
        if held is not None:
            return held
        c = state.canary
        assert c is not None
    if ready and policy.full_scale(c.step):
        why = "no rollout steps" if not policy.steps else "the stable revision had no ready pods"
        return t.steady(t.promote(state, f"ready at full scale ({why})"))
    paused = (c.last_analysis or {}).get("paused") if policy.analysis_enabled else None
    if ready and paused:
        # The routing check: canary and stable saw different traffic, so no verdict (and no
        # deadline policy) may act on the comparison; hold the step for a person.
        decision = _running(t, state)
        return replace(decision, stalled=("RoutingMismatch", f"{at_step(policy, c)}: {paused}"))
    pause_over = obs.now >= c.step_started_at + timedelta(seconds=policy.pause_seconds(c.step))
    step_passed = _step_passed(policy, c)
    if ready and pause_over and not step_passed and _deadline_over(policy, c, obs.now):
        return _deadline(t, state)
    if ready and pause_over and step_passed:
        if c.step + 1 >= len(policy.steps):
            c = replace(c, promotion=f"passed all {len(policy.steps)} steps")
            return _scale_up_then_promote(t, replace(state, canary=c))
        passed = (
            f": {describe_analysis(c.last_analysis, 0, policy.failure_limit)}"
            if policy.gated(c.step) and c.last_analysis
            else ""
        )
        nxt = c.step + 1
        c = replace(c, step=nxt, weight=policy.weight(nxt), step_started_at=t.now)
        state = replace(state, canary=c)
        t.emit("Normal", "CanaryStepAdvanced", f"{at_step(policy, c)}{passed}")
        ready = t.ready_pods >= max(1, canary_target_replicas(policy, c, obs.total_replicas))
    if not ready:
        # The pause clock only runs once the step's pods serve.
        state = replace(state, canary=replace(c, step_started_at=t.now))
        target = max(1, canary_target_replicas(policy, c, obs.total_replicas))
        message = f"{at_step(policy, c)}: waiting for canary pods ({t.ready_pods}/{target} ready)"
        reason = "Replacing" if policy.full_scale(c.step) else "CanaryProgressing"
        return t.decision(state, t.replicas(c, False), (reason, message), READINESS_POLL_SECONDS)
    return _running(t, state)


def _deadline_over(policy: RolloutPolicy, c: CanaryState, now: datetime) -> bool:
    """Whether the step's gates stayed inconclusive past `progress_deadline_seconds`."""
    deadline = policy.progress_deadline_seconds
    if deadline is None or not policy.gated(c.step) or policy.full_scale(c.step):
        return False
    limit = max(deadline, policy.pause_seconds(c.step))
    return now >= c.step_started_at + timedelta(seconds=limit)


def _deadline(t: _Tick, state: RolloutState) -> Decision:
    """`onInconclusive`: what a step does when its deadline passes without a verdict."""
    policy = t.policy
    c = state.canary
    assert c is not None
    last = (c.last_analysis or {}).get("message") or "no analysis"
    limit = seconds(max(policy.progress_deadline_seconds or 0.0, policy.pause_seconds(c.step)))
    why = f"progress deadline {limit} passed at {at_step(policy, c)} without a verdict ({last})"
    if policy.on_inconclusive == "rollback":
        t.emit("Warning", "ProgressDeadlineExceeded", f"{why}; onInconclusive: rollback")
        return t.roll_back(
            state, "RolledBack", f"deadline verdict (onInconclusive: rollback): {why}"
        )
    if policy.on_inconclusive == "promote":
        t.emit("Warning", "ProgressDeadlineExceeded", f"{why}; onInconclusive: promote")
        # status.canary.promotion holds at most 256 characters: the analysis is in the event.
        reason = (
            f"deadline verdict (onInconclusive: promote), not a pass: progress deadline {limit}"
        )
        return _scale_up_then_promote(t, replace(state, canary=replace(c, promotion=reason)))
    message = f"{why}; onInconclusive: pause (the gates keep judging; promote or abort by hand)"
    decision = _running(t, state)
    return replace(decision, stalled=decision.stalled or ("ProgressDeadlineExceeded", message))


def _promotion_requested(t: _Tick, state: RolloutState) -> RolloutState:
    """`kubectl roost promote`: skip the remaining steps and gates, promote once at full scale."""
    c = state.canary
    assert c is not None
    if c.promotion is None:
        t.emit(
            "Normal",
            "PromotionRequested",
            f"Promotion of {c.revision} requested: remaining steps and gates skipped; it is "
            "promoted once it runs at full scale",
        )
        state = replace(state, canary=replace(c, promotion=PROMOTED_BY_USER))
    return state


def _growing(t: _Tick, c: CanaryState) -> tuple[int, int, int]:
    """(stable, canary, route weight) while a canary grows to full scale before promotion.

    The stable revision keeps its current share and the route its current weight (none while
    no canary pod is ready); the canary runs at the total replica count.
    """
    stable, _, weight = t.replicas(c, t.ready_pods > 0)
    return stable, max(t.obs.total_replicas, 0), weight


def _scale_up_then_promote(t: _Tick, state: RolloutState) -> Decision:
    """The last step passed (or a person asked): bring the canary to full scale, promote it.

    Promotion removes the old stable Deployment, so the canary first grows to the total replica
    count next to the stable revision (see `_growing`); only when all of its pods are ready does
    it become the stable revision. Serving capacity never dips below the total. After the last
    step the gates keep judging while it grows (`_advance` records their analyses; a failure
    limit still rolls back, an inconclusive or single failing analysis does not send it back to
    a step); a requested promotion skips them.
    """
    c = state.canary
    assert c is not None
    reason = c.promotion
    assert reason is not None  # every caller has recorded why it is being promoted
    total = max(t.obs.total_replicas, 0)
    if t.ready_pods >= max(1, total):
        return t.steady(t.promote(state, reason))
    message = (
        f"{at_step(t.policy, c)}: {reason}; scaling the canary to full scale before promotion "
        f"({t.ready_pods}/{total} ready)"
    )
    return t.decision(state, _growing(t, c), ("CanaryProgressing", message), READINESS_POLL_SECONDS)


def _running(t: _Tick, state: RolloutState) -> Decision:
    """A ready canary inside its step: say what it waits for and when to look again."""
    policy, obs = t.policy, t.obs
    c = state.canary
    assert c is not None
    parts, waits = [], []
    gated = policy.gated(c.step)
    if gated:
        last, when = c.last_analysis, analysis_time(c)
        if last is not None and when is not None and when > c.step_started_at:
            parts.append(describe_analysis(last, c.consecutive_failures, policy.failure_limit))
        else:
            parts.append("waiting for the first analysis of this step")
        due = 0.0 if when is None else policy.interval_seconds - (obs.now - when).total_seconds()
        waits.append(due)
    remaining = (c.step_started_at - obs.now).total_seconds() + policy.pause_seconds(c.step)
    if remaining > 0:
        parts.append(f"pause ends in {seconds(remaining)}")
        waits.append(remaining)
    elif gated:
        parts.append("pause over, waiting for a passing analysis")
    requeue = max(MIN_REQUEUE_SECONDS, min(waits)) if waits else MIN_REQUEUE_SECONDS
    message = f"{at_step(policy, c)}: " + "; ".join(parts)
    return t.decision(state, t.replicas(c, True), ("CanaryProgressing", message), requeue)
