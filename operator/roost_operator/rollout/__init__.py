"""The canary rollout state machine: one pure step from (policy, status, observations).

`decide` is called on every reconcile with the rollout policy parsed from `spec.rollout`, the
state persisted in `status` (`RolloutState.from_status`) and what the planner observed (the
desired revision, ready replicas, pod failures, manual request annotations and, when
`needs_analysis` said so, a fresh `AnalysisResult`). It returns the next state to persist, the
replicas of the stable and canary Deployments, the traffic weight for an HTTPRoute, events and
the kstatus conditions. Nothing is kept in memory, so an operator restarted at any moment
resumes from `status`.

Life of a revision: the first revision becomes stable directly. A later one starts as a canary
at `steps[0]`; each step holds its weight until its pause has run (the clock starts once the
canary's pods for that step are ready) and, when gates are configured, the latest analysis of
the step passed; after the last step the canary is promoted (its Deployment becomes the stable
one, so its pods keep running). `failure_limit` failing analyses in a row, or crash-looping
canary pods, roll it back: the revision is remembered in `failedRevision` and not retried
until the spec changes or a retry is requested. With no steps (or no ready stable pod to
compare against) the new revision runs at full scale next to the stable one and is promoted
as soon as it is ready. `spec.paused` freezes automatic transitions; manual requests still act.

How the planner drives it, once per reconcile::

    policy = policy_from_spec(spec.get("rollout"))
    state = RolloutState.from_status(status)
    obs = Observations(desired=..., analysis=None, now=now, ...)
    if needs_analysis(policy, state, obs):
        obs = dataclasses.replace(obs, analysis=await source.analyse(...))
    decision = decide(policy, state, obs)
    # Deployments <md>-<stable rev> and <md>-<canary rev> at decision.stable_replicas and
    # decision.canary_replicas (prune the rest); HTTPRoute weights 100 - weight / weight;
    # patch status with decision.state.to_status(); emit decision.events; Reconciling and
    # Stalled from decision.progressing / decision.stalled; requeue after requeue_after.

Modules: `state` (the persisted state and the policy), `machine` (`decide`, the replica
arithmetic, when to analyse), `messages` (the sentences in events and conditions). Everything
public is re-exported here: import from `roost_operator.rollout`.

Pure: no Kubernetes, kopf or HTTP imports (import-linter contract).
"""

from roost_operator.rollout.machine import (
    MIN_REQUEUE_SECONDS,
    READINESS_POLL_SECONDS,
    REQUEST_KINDS,
    Decision,
    Event,
    Observations,
    analysis_due,
    canary_ready,
    canary_target_replicas,
    decide,
    needs_analysis,
    replica_split,
)
from roost_operator.rollout.messages import describe_analysis, describe_gate
from roost_operator.rollout.state import (
    HISTORY_LIMIT,
    CanaryState,
    HistoryEntry,
    RevisionRef,
    RolloutPolicy,
    RolloutState,
    Step,
    format_time,
    parse_duration,
    parse_time,
    policy_from_spec,
)

__all__ = [
    "HISTORY_LIMIT",
    "MIN_REQUEUE_SECONDS",
    "READINESS_POLL_SECONDS",
    "REQUEST_KINDS",
    "CanaryState",
    "Decision",
    "Event",
    "HistoryEntry",
    "Observations",
    "RevisionRef",
    "RolloutPolicy",
    "RolloutState",
    "Step",
    "analysis_due",
    "canary_ready",
    "canary_target_replicas",
    "decide",
    "describe_analysis",
    "describe_gate",
    "format_time",
    "needs_analysis",
    "parse_duration",
    "parse_time",
    "policy_from_spec",
    "replica_split",
]
