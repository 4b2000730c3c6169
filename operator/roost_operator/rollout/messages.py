"""Sentences a person reads in `kubectl describe`: gate values against thresholds, steps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from roost_operator.rollout.state import CanaryState
from roost_operator.spec import RolloutPolicy


def _num(v: float) -> str:
    return f"{v:.3g}"


# Gate name -> (label, how to show a value of it).
_GATE_FORMAT: dict[str, tuple[str, Any]] = {
    "errorRate": ("error rate", lambda v: f"{_num(v * 100)}%"),
    "latencyP99": ("p99", lambda v: f"{_num(v * 1000)} ms"),
    "latencyP99Ratio": ("p99 ratio", _num),
    "drift": ("PSI", _num),
    "divergence": ("JS distance", _num),
    "minRequests": ("requests", lambda v: str(int(v))),
}


def describe_gate(gate: Mapping[str, Any]) -> str:
    """One gate of `lastAnalysis.gates`, e.g. ``PSI 0.91 > 0.25`` or ``p99 12 ms ≤ 500 ms``."""
    if gate.get("message"):
        # Sequential gates say it in words: estimate, interval vs margin, how sure.
        return str(gate["message"])
    name = str(gate.get("name", "?"))
    label, fmt = _GATE_FORMAT.get(name, (name, _num))
    value, threshold = gate.get("value"), gate.get("threshold")
    if not isinstance(value, int | float):
        return f"{label}: no data"
    if not isinstance(threshold, int | float):
        return f"{label} {fmt(value)}"
    if name == "minRequests":
        return f"{fmt(value)} {label} {'≥' if value >= threshold else '<'} {fmt(threshold)}"
    return f"{label} {fmt(value)} {'>' if gate.get('verdict') == 'fail' else '≤'} {fmt(threshold)}"


def _gates(analysis: Mapping[str, Any], verdict: str | None = None) -> list[Mapping[str, Any]]:
    gates = [g for g in analysis.get("gates") or [] if isinstance(g, Mapping)]
    return [g for g in gates if verdict is None or g.get("verdict") == verdict]


def describe_analysis(analysis: Mapping[str, Any], failures: int, limit: int) -> str:
    """The latest analysis in a sentence, e.g. ``analysis passed on 120 canary requests (...)``."""
    verdict = analysis.get("verdict")
    if verdict == "pass":
        shown = [describe_gate(g) for g in _gates(analysis) if g.get("name") != "minRequests"]
        detail = f" ({'; '.join(shown)})" if shown else ""
        if any(g.get("name") == "shadowDisagreement" for g in _gates(analysis)):
            # A shadow step: the canary served no client; its copies are what passed.
            return f"{analysis.get('message') or 'shadow step passed'}{detail}"
        return f"analysis passed on {analysis.get('canaryRequests', 0)} canary requests{detail}"
    if verdict == "fail":
        failed_gates = _gates(analysis, "fail")
        failed = "; ".join(describe_gate(g) for g in failed_gates)
        detail = failed or str(analysis.get("message", ""))
        if any("lower" in g for g in failed_gates):
            return f"analysis failed with confidence ({detail})"
        return f"analysis failed, {failures} of {limit} in a row roll back ({detail})"
    return f"analysis inconclusive ({analysis.get('message') or 'no data'})"


def failure_reason(analysis: Mapping[str, Any], failures: int) -> str:
    failed = _gates(analysis, "fail")
    names = ", ".join(str(g.get("name")) for g in failed) or "analysis"
    what = f"gate {names}" if len(failed) == 1 else f"gates {names}" if failed else "analysis"
    times = "" if failures == 1 else f" {failures} times in a row"
    detail = "; ".join(describe_gate(g) for g in failed) or str(analysis.get("message", ""))
    return f"{what} failed{times} ({detail})"


def step_traffic(policy: RolloutPolicy, step: int) -> str:
    """``weight 20%``, or for a shadow step what the canary gets instead of client traffic."""
    shadow = policy.shadow(step)
    if shadow:
        return f"shadow: copies of {shadow}% of requests, no client traffic"
    return f"weight {policy.weight(step)}%"


def at_step(policy: RolloutPolicy, c: CanaryState) -> str:
    if policy.full_scale(c.step):
        return f"Canary {c.revision} at full scale"
    where = f"step {c.step + 1}/{len(policy.steps)}"
    return f"Canary {c.revision} at {where} ({step_traffic(policy, c.step)})"


def seconds(s: float) -> str:
    s = math.ceil(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
