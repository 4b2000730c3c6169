"""The gates of one analysis from hand-made interval counts (no HTTP, no parsing)."""

from __future__ import annotations

import math

from roost_operator.spec import AnalysisSpec, parse_spec
from roost_operator.verdicts import Counts, code_class, judge_interval


def _spec(gates: dict[str, object]) -> AnalysisSpec:
    raw = {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": {"gates": gates}}}
    return parse_spec(raw).rollout.analysis


def _regressor(edges: list[float], shares: list[int]) -> Counts:
    bins = [str(i) for i in range(len(shares))]
    return Counts(
        requests={"200": float(sum(shares))},
        predictions=dict(zip(bins, map(float, shares), strict=True)),
        prediction_edges=dict(zip(bins, [*edges, math.inf], strict=True)),
    )


def test_code_classes() -> None:
    assert [code_class(c) for c in ("200", "404", "500", "503", "504", "302")] == [
        "2xx", "4xx", "5xx", "overload", "overload", "2xx",
    ]  # fmt: skip


def test_regressors_with_different_output_edges_are_not_compared() -> None:
    spec = _spec({"divergence": {"margin": 0.05}})
    canary = _regressor([1.0, 2.0], [900, 50, 50])  # a retrained profile: other edges
    stable = _regressor([0.5, 1.5], [100, 800, 100])
    evidence = None
    for _ in range(8):
        judged = judge_interval(spec, evidence, canary, stable)
        evidence = judged.evidence
    (gate,) = judged.gates
    assert (gate.mode, gate.verdict) == ("observe", "inconclusive")
    assert "different output edges" in gate.words
    assert judged.verdict != "fail"
    same = _regressor([0.5, 1.5], [900, 50, 50])
    evidence = None
    for _ in range(8):
        judged = judge_interval(spec, evidence, same, stable)
        evidence = judged.evidence
    assert judged.verdict == "fail"  # the same edges: a real change of the predictions


def test_observe_mode_gates_never_change_the_verdict() -> None:
    spec = _spec({"errorRate": {"margin": 0.005, "mode": "observe"}, "divergence": {}})
    canary = Counts(requests={"200": 500.0, "500": 500.0}, predictions={"a": 500.0, "b": 500.0})
    stable = Counts(requests={"200": 3000.0}, predictions={"a": 1500.0, "b": 1500.0})
    evidence = None
    for _ in range(8):
        judged = judge_interval(spec, evidence, canary, stable)
        evidence = judged.evidence
    errors = next(g for g in judged.gates if g.name == "errorRate")
    assert (errors.mode, errors.verdict) == ("observe", "fail")
    assert judged.verdict == "pass"  # the enforced divergence gate passes
    assert "99 % confidence" not in errors.words  # alpha 0.05 goes to the one enforced gate
    assert "95 % confidence" in errors.words
