"""The gates of one analysis from hand-made interval counts (no HTTP, no parsing)."""

from __future__ import annotations

import math
from dataclasses import replace

from roost_operator import compare
from roost_operator.spec import AnalysisSpec, parse_spec
from roost_operator.verdicts import Counts, Judged, code_class, judge_interval


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


def _judge(spec: AnalysisSpec, canary: Counts, stable: Counts, times: int = 8) -> Judged:
    evidence = None
    for _ in range(times):
        judged = judge_interval(spec, evidence, canary, stable)
        evidence = judged.evidence
    return judged


def _on_stable_bins(counts: Counts, stable_edges: list[float], shares: list[int]) -> Counts:
    """`counts` that also counted on the stable's pushed edges (runtime section compare)."""
    v = compare.section(stable_edges)["version"]
    bins = {str(i): float(n) for i, n in enumerate(shares)}
    return replace(counts, compare={v: bins, "an-older-push": {"0": 1e6}})


def test_regressors_with_different_output_edges_wait_for_the_stables_bins() -> None:
    spec = _spec({"divergence": {"margin": 0.05}})
    canary = _regressor([1.0, 2.0], [900, 50, 50])  # a retrained profile: other edges
    stable = _regressor([0.5, 1.5], [100, 800, 100])
    judged = _judge(spec, canary, stable)
    (gate,) = judged.gates
    # Still enforced (not observe mode), and never judged on bins that mean different things.
    assert (gate.mode, gate.verdict) == ("enforce", "inconclusive")
    assert "different output edges" in gate.words
    assert "waiting for both to count on the stable's edges" in gate.words
    assert judged.verdict == "inconclusive"
    same = _regressor([0.5, 1.5], [900, 50, 50])
    assert _judge(spec, same, stable).verdict == "fail"  # the same edges: a real change


def test_a_retrained_regressor_is_judged_on_the_stables_bins() -> None:
    spec = _spec({"divergence": {"margin": 0.05}})
    stable = _on_stable_bins(_regressor([0.5, 1.5], [100, 800, 100]), [0.5, 1.5], [100, 800, 100])
    # Its own bins look nothing like the stable's, its predictions on the stable's bins do.
    good = _on_stable_bins(_regressor([1.0, 2.0], [900, 50, 50]), [0.5, 1.5], [100, 800, 100])
    judged = _judge(spec, good, stable)
    (gate,) = judged.gates
    assert (gate.mode, gate.verdict, judged.verdict) == ("enforce", "pass", "pass"), gate.words
    assert "on the stable's bins" in gate.words
    assert gate.effect == 0.0  # the JS distance, on the common bins
    # A retrained model that really moved its predictions fails on the same bins.
    bad = _on_stable_bins(_regressor([1.0, 2.0], [900, 50, 50]), [0.5, 1.5], [300, 600, 100])
    judged = _judge(spec, bad, stable)
    assert judged.verdict == "fail", judged.gates[0].words
    assert "worse than margin" in judged.gates[0].words


def test_compare_counts_of_another_version_are_never_judged() -> None:
    spec = _spec({"divergence": {"margin": 0.05}})
    stable = _regressor([0.5, 1.5], [100, 800, 100])
    # Counts on other edges (an older stable's): not the stable's version, so nothing to judge.
    canary = replace(_regressor([1.0, 2.0], [900, 50, 50]), compare={"old": {"0": 1000.0}})
    stable = replace(stable, compare={"old": {"1": 1000.0}})
    (gate,) = _judge(spec, canary, stable).gates
    assert (gate.mode, gate.verdict) == ("enforce", "inconclusive")
    assert "waiting" in gate.words


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
