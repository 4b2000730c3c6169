"""The accuracy and error gates from hand-made horizon-cohort counts, their spec, and the pods
source reading the serving pods' quality series."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from roost_operator.gates import counter_deltas, parse_exposition, window_from_samples
from roost_operator.quality_gates import Quality
from roost_operator.spec import AnalysisSpec, SpecError, parse_spec
from roost_operator.verdicts import Counts, judge_interval
from roost_serving.quality import PredictionTable, QualityMetrics


def _spec(gates: dict[str, object]) -> AnalysisSpec:
    raw = {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": {"gates": gates}}}
    return parse_spec(raw).rollout.analysis


def _clf(labelled: float, correct: float) -> Counts:
    return Counts(
        requests={"200": labelled * 2},
        quality=Quality(matured=labelled * 2, labelled=labelled, correct=correct),
    )


def _run(spec: AnalysisSpec, canary: Counts, stable: Counts, intervals: int = 10) -> object:
    evidence = None
    for _ in range(intervals):
        judged = judge_interval(spec, evidence, canary, stable)
        evidence = judged.evidence
    return judged


def test_a_canary_ten_points_less_accurate_is_rolled_back_on_accuracy() -> None:
    judged = _run(_spec({"accuracy": {"maxDropVsStable": 0.02}}), _clf(200, 160), _clf(600, 540))
    (gate,) = judged.gates  # type: ignore[attr-defined]
    assert (gate.name, gate.verdict) == ("accuracy", "fail")
    assert judged.verdict == "fail"  # type: ignore[attr-defined]
    assert "canary 80.0 % vs stable 90.0 %" in gate.words
    assert gate.effect == pytest.approx(0.1)


def test_an_equally_accurate_canary_passes_given_enough_labels() -> None:
    judged = _run(
        _spec({"accuracy": {"maxDropVsStable": 0.02}}), _clf(2000, 1800), _clf(4000, 3600)
    )
    assert judged.verdict == "pass"  # type: ignore[attr-defined]


def test_without_labels_the_gate_waits_and_says_why() -> None:
    judged = _run(_spec({"accuracy": {}}), _clf(0, 0), _clf(0, 0))
    (gate,) = judged.gates  # type: ignore[attr-defined]
    assert gate.verdict == "inconclusive"
    assert "no labelled predictions past the label horizon" in gate.words


def _reg(errors: list[float]) -> Counts:
    bounds = [0.1, 0.2, 0.4, 0.8, 1.6, math.inf]
    arr = np.asarray(errors)
    buckets = {b: float((arr <= b).sum()) for b in bounds}
    quality = Quality(matured=len(errors), labelled=len(errors), error_buckets=buckets)
    return Counts(requests={"200": float(len(errors))}, quality=quality)


def test_the_error_gate_fails_a_regressor_with_larger_errors_and_passes_an_equal_one() -> None:
    rng = np.random.default_rng(0)
    stable = _reg(list(np.abs(rng.normal(0, 0.3, 3000))))
    worse = _reg(list(np.abs(rng.normal(0, 0.6, 1000))))
    same = _reg(list(np.abs(rng.normal(0, 0.3, 3000))))
    spec = _spec({"error": {"maxIncreaseVsStable": 0.05}})
    judged = _run(spec, worse, stable)
    assert judged.verdict == "fail"  # type: ignore[attr-defined]
    assert "above the stable's p50 0.4" in judged.gates[0].words  # type: ignore[attr-defined]
    assert _run(spec, same, stable).verdict == "pass"  # type: ignore[attr-defined]


def test_spec_parsing_of_the_quality_gates() -> None:
    gates = _spec({"accuracy": {"maxDropVsStable": 0.05, "mode": "observe"}, "error": {}}).gates
    assert gates.accuracy is not None
    assert (gates.accuracy.max_drop, gates.accuracy.mode) == (0.05, "observe")
    assert gates.error is not None
    assert (gates.error.max_increase, gates.error.quantile) == (0.05, 0.5)
    assert gates.enforced() == 1
    with pytest.raises(SpecError, match=r"accuracy.maxDropVsStable must be between 0 and 1"):
        _spec({"accuracy": {"maxDropVsStable": 2}})
    with pytest.raises(SpecError, match=r"error.quantile"):
        _spec({"error": {"quantile": 1}})


def test_the_pods_source_reads_the_horizon_cohort_from_a_serving_pod() -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    registry, clock = CollectorRegistry(), Clock()
    table = PredictionTable(QualityMetrics(registry, "wine", "r1"), horizon=10, clock=clock)
    before = parse_exposition(generate_latest(registry).decode())
    for i in range(5):
        table.record(f"id{i}", np.asarray([i % 2], dtype=np.int64))
    for i in range(4):
        table.join(f"id{i}", 0)  # ids 0 and 2 right, 1 and 3 wrong, 4 unlabelled
    clock.now = 11
    table.sweep()
    after = parse_exposition(generate_latest(registry).decode())
    deltas, reset = counter_deltas(before, after)
    assert not reset
    window = window_from_samples([deltas], [after.gauges])
    q = window.quality
    assert (q.matured, q.labelled, q.correct) == (5, 4, 2)
    assert q.error_buckets[math.inf] == 0  # a classifier: no errors
