"""The feedback join (roost_serving.quality): out-of-order, duplicate, unknown, late and expired
ids, the table's bounds, and the per-revision quality series they move."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from roost_serving.quality import PredictionTable, QualityMetrics, truth_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(
    horizon: float = 10.0, ttl: float = 100.0, max_ids: int = 1000
) -> tuple[PredictionTable, CollectorRegistry, Clock]:
    registry, clock = CollectorRegistry(), Clock()
    metrics = QualityMetrics(registry, "wine", "r1")
    return PredictionTable(metrics, horizon, ttl, max_ids, clock), registry, clock


def _v(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"model": "wine", "revision": "r1", **labels})
    return 0.0 if value is None else value


def test_out_of_order_feedback_joins_each_id_with_its_own_prediction() -> None:
    table, registry, clock = _table()
    for i, label in enumerate([0, 1, 2, 1]):
        table.record(f"id{i}", np.asarray([label], dtype=np.int64))
        clock.now += 0.5
    # Labels arrive in reverse order; ids 3 and 1 are right, 2 is wrong, 0 is right.
    assert [table.join(f"id{i}", t) for i, t in [(3, 1), (2, 0), (1, 1), (0, "0")]] == [
        "joined"
    ] * 4
    assert _v(registry, "roost_labelled_predictions_total", **{"class": "1"}) == 2
    assert _v(registry, "roost_correct_predictions_total", **{"class": "1"}) == 2
    assert _v(registry, "roost_labelled_predictions_total", **{"class": "0"}) == 2
    assert _v(registry, "roost_correct_predictions_total", **{"class": "0"}) == 1
    assert _v(registry, "roost_label_delay_seconds_count") == 4


def test_duplicate_unknown_and_invalid_items_are_outcomes_not_errors() -> None:
    table, registry, _ = _table()
    table.record("a", np.asarray([1, 2], dtype=np.int64))
    assert table.join("nope", 1) == "unknown"
    assert table.join("a", 1) == "invalid"  # two rows, one label
    assert table.join("a", [1, {"x": 1}]) == "invalid"
    assert table.join("a", [1, 2]) == "joined"
    assert table.join("a", [1, 2]) == "duplicate"
    assert _v(registry, "roost_labelled_predictions_total", **{"class": "1"}) == 1


def test_late_labels_count_live_but_not_in_the_gate_cohort() -> None:
    table, registry, clock = _table(horizon=10, ttl=100)
    table.record("early", np.asarray([1], dtype=np.int64))
    table.record("late", np.asarray([1], dtype=np.int64))
    clock.now += 5
    assert table.join("early", 1) == "joined"
    table.sweep()
    # Not yet the horizon old: nothing in the cohort even though one label is in.
    assert _v(registry, "roost_quality_horizon_predictions_total") == 0
    clock.now += 20
    assert table.join("late", 1) == "late"
    table.sweep()
    assert _v(registry, "roost_quality_horizon_predictions_total") == 2
    assert _v(registry, "roost_quality_horizon_labelled_total") == 1
    assert _v(registry, "roost_quality_horizon_correct_total") == 1
    assert _v(registry, "roost_labelled_predictions_total", **{"class": "1"}) == 2


def test_expired_ids_are_reported_as_expired_and_labelled_ones_as_duplicates() -> None:
    table, _, clock = _table(horizon=10, ttl=100)
    table.record("old", np.asarray([0], dtype=np.int64))
    table.record("done", np.asarray([0], dtype=np.int64))
    assert table.join("done", 0) == "joined"
    clock.now += 101
    table.sweep()
    assert len(table) == 0
    assert table.join("old", 0) == "expired"
    assert table.join("done", 0) == "duplicate"
    assert table.join("never", 0) == "unknown"


def test_the_table_is_bounded_and_evicts_the_oldest_first() -> None:
    table, registry, clock = _table(max_ids=3)
    for i in range(5):
        table.record(f"id{i}", np.asarray([0], dtype=np.int64))
    assert len(table) == 3
    assert _v(registry, "roost_quality_untracked_predictions_total", reason="evicted") == 2
    assert table.join("id0", 0) == "expired"
    assert table.join("id4", 0) == "joined"
    clock.now += 11
    table.sweep()
    # Evicted ids never enter the cohort (their labels had no chance to arrive).
    assert _v(registry, "roost_quality_horizon_predictions_total") == 3


def test_a_reused_request_id_keeps_the_first_answer() -> None:
    table, registry, _ = _table()
    table.record("same", np.asarray([1], dtype=np.int64))
    table.record("same", np.asarray([2], dtype=np.int64))
    assert _v(registry, "roost_quality_untracked_predictions_total", reason="duplicate_id") == 1
    table.join("same", 1)
    assert _v(registry, "roost_correct_predictions_total", **{"class": "1"}) == 1


def test_regression_targets_fill_the_absolute_error_histograms() -> None:
    table, registry, clock = _table(horizon=10)
    table.record("r", np.asarray([1.0, 2.0, 3.0], dtype=np.float32))
    assert table.join("r", ["x", 1, 2]) == "invalid"
    assert table.join("r", [1.5, 2, 2.0]) == "joined"
    assert _v(registry, "roost_prediction_abs_error_count") == 3
    assert _v(registry, "roost_prediction_abs_error_sum") == pytest.approx(1.5)
    assert _v(registry, "roost_labelled_predictions_total", **{"class": ""}) == 3
    clock.now += 10
    table.sweep()
    assert _v(registry, "roost_quality_horizon_abs_error_count") == 3
    assert _v(registry, "roost_quality_horizon_abs_error_bucket", le="0.512") == 2


def test_class_labels_compare_as_the_model_prints_them() -> None:
    assert truth_key(1) == truth_key(1.0) == truth_key("1") == "1"
    assert truth_key(True) is None
    assert truth_key([1]) is None
    assert truth_key(0.5) == "0.5"


def test_settings_refuse_a_horizon_longer_than_the_ttl() -> None:
    with pytest.raises(ValueError, match="horizon"):
        _table(horizon=10, ttl=5)
