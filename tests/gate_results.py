"""A legacy-shaped gate result (name, value, threshold, verdict) for rollout-machine tests.

The state machine only reads verdicts and the rendered words; these tests predate the
sequential gates and describe a point check (e.g. ``latency.maxP99Seconds``), whose failures
count towards ``failureLimit``.
"""

from __future__ import annotations

from roost_operator.verdicts import GateVerdict


def point_gate(name: str, value: float | None, threshold: float, verdict: str) -> GateVerdict:
    """A point check's result as the analysis records it."""
    return GateVerdict(name, "enforce", verdict, margin=threshold, effect=value)
