"""Rollout policies for the state-machine tests, parsed the way production parses them.

The tests used to build `RolloutPolicy` by hand (and, before that, through a second parser only
tests called); going through `spec.parse_spec` keeps them on the operator's one parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from roost_operator.spec import RolloutPolicy, parse_spec


def rollout_policy(
    steps: Sequence[tuple[int, float]] = ((20, 30.0), (50, 30.0)),
    *,
    interval_seconds: float = 10.0,
    failure_limit: int = 2,
    gated: bool = True,
    progress_deadline: str | None = None,
    on_inconclusive: str | None = None,
) -> RolloutPolicy:
    """`spec.rollout` with these (weight, pause seconds) steps; `gated` configures a drift gate;
    `progress_deadline` ("0s": none) and `on_inconclusive` as in `spec.rollout.analysis`."""
    analysis: dict[str, Any] = {"interval": f"{interval_seconds}s", "failureLimit": failure_limit}
    if progress_deadline is not None:
        analysis["progressDeadline"] = progress_deadline
    if on_inconclusive is not None:
        analysis["onInconclusive"] = on_inconclusive
    if gated:
        analysis["gates"] = {"drift": {"maxPSI": 0.25}}
    rollout = {"steps": [{"weight": w, "pause": f"{p}s"} for w, p in steps], "analysis": analysis}
    return parse_spec({"model": {"uri": "file:///models/m/model.onnx"}, "rollout": rollout}).rollout
