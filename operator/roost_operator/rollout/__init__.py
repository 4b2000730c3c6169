"""The canary rollout state machine: one pure step from (policy, status, observations).

`decide` is called on every reconcile with the rollout policy (`spec.RolloutPolicy`, parsed
once by `spec.parse_spec` with the rest of the spec), the state persisted in `status`
(`RolloutState.from_status`) and what the planner observed (the desired revision, ready
replicas, pod failures, manual request annotations and, when `needs_analysis` said so, a fresh
`AnalysisResult`). It returns the next state to persist, the replicas of the stable and canary
Deployments, the traffic weight for an HTTPRoute, events and the kstatus conditions. Nothing is
kept in memory, so an operator restarted at any moment resumes from `status`.

Life of a revision: the first revision becomes stable directly. A later one starts as a canary
at `steps[0]`; each step holds its weight until its pause has run (the clock starts once the
canary's pods for that step are ready) and, when gates are configured, the latest analysis of
the step passed; after the last step the canary grows to full scale next to the stable
revision and is promoted once all its pods are ready. `failure_limit` failing analyses in a
row, or crash-looping canary pods, roll it back: the revision is remembered in
`failedRevision` and not retried until the spec changes or a retry is requested. With no steps
(or no ready stable pod to compare against) the new revision runs at full scale next to the
stable one and is promoted as soon as it is ready. `spec.paused` freezes automatic
transitions; manual requests still act.

How the planner drives it, once per reconcile (`planner.plan`)::

    spec = parse_spec(md.spec)
    state = RolloutState.from_status(status)
    obs = Observations(desired=..., analysis=None, now=now, ...)
    if needs_analysis(spec.rollout, state, obs):
        obs = dataclasses.replace(obs, analysis=await source.analyse(...))
    decision = decide(spec.rollout, state, obs)

Modules: `state` (the persisted state), `observations` (what `decide` sees and returns, the
replica arithmetic, when to analyse), `machine` (`decide`), `messages` (the sentences in
events and conditions). Everything public is re-exported here: import from
`roost_operator.rollout`.

Pure: no Kubernetes, kopf or HTTP imports (import-linter contract).
"""

from roost_operator.rollout.machine import decide
from roost_operator.rollout.messages import describe_analysis, describe_gate
from roost_operator.rollout.observations import (
    MIN_REQUEUE_SECONDS,
    READINESS_POLL_SECONDS,
    Decision,
    Event,
    Observations,
    analysis_due,
    canary_ready,
    canary_target_replicas,
    needs_analysis,
    needs_validation,
    replica_split,
    traffic_allowed,
    validation_pending,
)
from roost_operator.rollout.state import (
    HISTORY_LIMIT,
    CanaryState,
    HistoryEntry,
    RevisionRef,
    RolloutState,
)

__all__ = [
    "HISTORY_LIMIT",
    "MIN_REQUEUE_SECONDS",
    "READINESS_POLL_SECONDS",
    "CanaryState",
    "Decision",
    "Event",
    "HistoryEntry",
    "Observations",
    "RevisionRef",
    "RolloutState",
    "analysis_due",
    "canary_ready",
    "canary_target_replicas",
    "decide",
    "describe_analysis",
    "describe_gate",
    "needs_analysis",
    "needs_validation",
    "replica_split",
    "traffic_allowed",
    "validation_pending",
]
