"""`kubectl roost status`: the shadow step's paired comparison, in words (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from roost_operator.timeline import get_path as _get


def shadow_share(spec: Mapping[str, Any], step: Any) -> int:
    """The shadow share of step `step` of `spec.rollout.steps` (0: not a shadow step)."""
    steps: Sequence[Any] = _get(spec, "rollout", "steps") or []
    if not isinstance(step, int) or not 0 <= step < len(steps) or not isinstance(steps[step], dict):
        return 0
    share = steps[step].get("shadow")
    return int(share) if isinstance(share, int) and not isinstance(share, bool) else 0


def _figures(evidence: Mapping[str, Any]) -> str:
    rows = float(evidence.get("rows") or 0.0)
    wrong = float(evidence.get("disagreements") or 0.0)
    rate = f"{100 * wrong / rows:.2f} %" if rows else "n/a"
    return (
        f"{int(evidence.get('compared') or 0)} copies compared, {int(rows)} rows, "
        f"{int(wrong)} disagreeing ({rate}), {int(evidence.get('errors') or 0)} canary errors, "
        f"{int(evidence.get('dropped') or 0)} copies dropped"
    )


def shadow_lines(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    """The shadow step now (copies so far), after it (what passed), or the last rollback in it."""
    canary = status.get("canary") or {}
    evidence = _get(canary, "evidence", "shadow")
    share = shadow_share(spec, canary.get("step")) if canary.get("revision") else 0
    if share:
        figures = _figures(evidence) if isinstance(evidence, Mapping) else "no comparison yet"
        return [
            "",
            f"Shadow: the stable pods copy {share}% of their requests to the canary and compare "
            f"its answers (no client traffic): {figures}",
        ]
    if canary.get("revision") and isinstance(evidence, Mapping):
        return ["", f"Shadow step passed: {_figures(evidence)}"]
    history = status.get("history") or []
    last = history[-1] if history else None
    if (
        isinstance(last, Mapping)
        and last.get("revision") == status.get("failedRevision")
        and str(last.get("reason", "")).startswith("gate shadowDisagreement failed")
    ):
        return [
            "",
            f"Shadow: revision {last.get('revision')} was rolled back in the shadow step, before "
            f"any client request reached it ({last.get('reason')})",
        ]
    return []
