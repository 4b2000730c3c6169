"""The drift monitor's Prometheus series after observing known batches."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from roost_serving.drift import binned_ks, psi
from roost_serving.monitor import MAX_FEATURES, DriftMonitor
from roost_serving.profile import (
    CategoricalFeature,
    ClassificationPrediction,
    NumericFeature,
    Profile,
    RegressionPrediction,
)

F0 = NumericFeature("f0", "X", 0, (0.0, 1.0), (0.25, 0.5, 0.25))
F1 = NumericFeature("f1", "X", 1, (10.0,), (0.5, 0.5))
COLOR = CategoricalFeature("color", "color", None, ("red", "blue"), (0.6, 0.3), 0.1)
CLASSES = ClassificationPrediction("label", ("0", "1", "2"), (0.3, 0.3, 0.4))
LABELS = {"model": "wine", "revision": "abc123"}


def monitor(profile: Profile | None, window: int = 100) -> tuple[DriftMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    return DriftMonitor(profile, registry, "wine", "abc123", window), registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def batch(x: list[list[float]], colors: list[str], labels: list[int]) -> tuple[dict, dict]:
    inputs = {
        "X": np.asarray(x, dtype=np.float32),
        "color": np.asarray(colors, dtype=object).reshape(-1, 1),
    }
    outputs = {"label": np.asarray(labels, dtype=np.int64), "probabilities": np.zeros((len(x), 3))}
    return inputs, outputs


def test_gauges_match_statistics_of_the_observed_rows() -> None:
    mon, reg = monitor(Profile(rows=10, features=(F0, F1, COLOR), prediction=CLASSES))
    # f0 bins: (-inf,0] (0,1] (1,inf): values -1, 0 | 0.5 | 2, 3, 1.0 -> 1.0 is right-closed (0,1]
    x = [[-1, 5], [0, 5], [0.5, 20], [2, 20], [3, 20], [1.0, 10]]
    colors = ["red", "red", "blue", "green", "red", "blue"]
    mon.observe(*batch(x, colors, [0, 0, 1, 2, 2, 7]))

    assert value(reg, "roost_drift_window_rows") == 6
    live_f0 = [2, 2, 2]
    assert value(reg, "roost_feature_psi", feature="f0") == pytest.approx(
        psi(F0.frequencies, live_f0)
    )
    assert value(reg, "roost_feature_ks", feature="f0") == pytest.approx(
        binned_ks(F0.frequencies, live_f0)
    )
    live_f1 = [3, 3]  # 5, 5, 10 <= 10; 20, 20, 20 > 10
    assert value(reg, "roost_feature_psi", feature="f1") == pytest.approx(0.0, abs=1e-12)
    assert value(reg, "roost_feature_ks", feature="f1") == pytest.approx(
        binned_ks(F1.frequencies, live_f1), abs=1e-12
    )
    live_color = [3, 2, 1]  # red, blue, other (green)
    assert value(reg, "roost_feature_psi", feature="color") == pytest.approx(
        psi([0.6, 0.3, 0.1], live_color)
    )
    assert value(reg, "roost_predictions_total", bin="0") == 2
    assert value(reg, "roost_predictions_total", bin="1") == 1
    assert value(reg, "roost_predictions_total", bin="2") == 2
    assert value(reg, "roost_predictions_total", bin="other") == 1


def test_window_slides_and_predictions_keep_counting() -> None:
    mon, reg = monitor(Profile(rows=10, features=(F0,), prediction=CLASSES), window=4)
    for _ in range(3):  # 6 rows in the -1 bin, evicted by what follows
        mon.observe({"X": np.full((2, 1), -1.0)}, {"label": np.array([0, 0])})
    mon.observe({"X": np.array([[0.5], [0.5], [2.0]])}, {"label": np.array([1, 1, 1])})
    assert value(reg, "roost_drift_window_rows") == 4
    # window = last 4 rows: one -1, two 0.5, one 2.0
    assert value(reg, "roost_feature_psi", feature="f0") == pytest.approx(
        psi(F0.frequencies, [1, 2, 1]), abs=1e-12
    )
    assert value(reg, "roost_predictions_total", bin="0") == 6
    assert value(reg, "roost_predictions_total", bin="1") == 3


def test_a_batch_larger_than_the_window_keeps_its_last_rows() -> None:
    mon, reg = monitor(Profile(rows=10, features=(F0,), prediction=None), window=3)
    mon.observe({"X": np.array([[-5.0], [-5.0], [-5.0], [0.5], [0.5], [9.0]])}, {})
    assert value(reg, "roost_drift_window_rows") == 3
    assert mon.statistics()["f0"][0] == pytest.approx(psi(F0.frequencies, [0, 2, 1]))


def test_missing_values_are_left_out_and_idle_features_have_no_series() -> None:
    mon, reg = monitor(Profile(rows=10, features=(F0, F1), prediction=None))
    assert value(reg, "roost_drift_window_rows") == 0
    assert value(reg, "roost_feature_psi", feature="f0") is None
    mon.observe({"X": np.array([[np.nan, 20.0], [np.nan, 20.0]], dtype=np.float32)}, {})
    assert value(reg, "roost_feature_psi", feature="f0") is None  # only NaNs seen so far
    assert value(reg, "roost_feature_psi", feature="f1") == pytest.approx(psi([0.5, 0.5], [0, 2]))
    mon.observe({"X": np.array([[0.5, np.nan]], dtype=np.float32)}, {})
    assert value(reg, "roost_feature_ks", feature="f0") == pytest.approx(
        binned_ks(F0.frequencies, [0, 1, 0])
    )


def test_regressor_predictions_use_the_profile_bins() -> None:
    pred = RegressionPrediction("variable", (0.0, 10.0), (0.2, 0.6, 0.2))
    mon, reg = monitor(Profile(rows=10, features=(F0,), prediction=pred))
    out = np.array([[-3.0], [0.0], [5.0], [10.0], [11.0], [np.nan]], dtype=np.float32)
    mon.observe({"X": np.zeros((6, 1), dtype=np.float32)}, {"variable": out})
    counts = {b: value(reg, "roost_predictions_total", bin=b) for b in ("0", "1", "2", "other")}
    assert counts == {"0": 2, "1": 2, "2": 1, "other": 1}
    # The bins' upper edges, so the operator can tell a retrained profile's other binning.
    uppers = {b: value(reg, "roost_prediction_bin_upper", bin=b) for b in ("0", "1", "2")}
    assert uppers == {"0": 0.0, "1": 10.0, "2": float("inf")}
    assert value(reg, "roost_prediction_bin_upper", bin="other") is None


def test_string_class_labels_and_unknown_labels() -> None:
    pred = ClassificationPrediction("label", ("cat", "dog"), (0.5, 0.5))
    mon, reg = monitor(Profile(rows=10, features=(F0,), prediction=pred))
    labels = np.array(["dog", "dog", "cat", "bird"], dtype=object)
    mon.observe({"X": np.zeros((4, 1), dtype=np.float32)}, {"label": labels})
    assert mon.prediction_counts() == {"cat": 1, "dog": 2, "other": 1}
    assert value(reg, "roost_predictions_total", bin="dog") == 2


def test_feature_labels_are_capped() -> None:
    features = tuple(
        NumericFeature(f"f{i}", "X", i, (0.0,), (0.5, 0.5)) for i in range(MAX_FEATURES + 6)
    )
    mon, reg = monitor(Profile(rows=10, features=features, prediction=None))
    mon.observe({"X": np.ones((3, MAX_FEATURES + 6), dtype=np.float32)}, {})
    text = generate_latest(reg).decode()
    assert text.count("roost_feature_psi{") == MAX_FEATURES
    assert value(reg, "roost_feature_psi", feature=f"f{MAX_FEATURES}") is None


def test_inputs_the_profile_does_not_match_are_counted_as_missing() -> None:
    mon, reg = monitor(Profile(rows=10, features=(F0, COLOR), prediction=CLASSES))
    mon.observe({"other": np.zeros((2, 3), dtype=np.float32)}, {})
    assert value(reg, "roost_drift_window_rows") == 2
    assert value(reg, "roost_feature_psi", feature="f0") is None
    assert value(reg, "roost_feature_psi", feature="color") is None


def test_without_a_profile_nothing_is_exported() -> None:
    mon, reg = monitor(None)
    mon.observe({"X": np.zeros((2, 3), dtype=np.float32)}, {"label": np.array([1, 2])})
    assert "roost_" not in generate_latest(reg).decode()


def test_broadcast_and_searchsorted_paths_agree() -> None:
    # A batch too large to bin by broadcasting goes through per-column searchsorted.
    rng = np.random.default_rng(2)
    edges = tuple(float(e) for e in np.linspace(-2, 2, 9))
    feats = tuple(NumericFeature(f"f{i}", "X", i, edges, (0.1,) * 10) for i in range(4))
    x = rng.normal(size=(20000, 4)).astype(np.float32)
    big, _ = monitor(Profile(rows=1, features=feats), window=20000)
    big.observe({"X": x}, {})
    small, _ = monitor(Profile(rows=1, features=feats), window=20000)
    for i in range(0, 20000, 16):
        small.observe({"X": x[i : i + 16]}, {})
    assert big.statistics() == small.statistics()
    for name, (p, _) in big.statistics().items():
        col = int(name[1:])
        live = np.histogram(x[:, col], bins=[-np.inf, *edges, np.inf])[0]
        assert p == pytest.approx(psi((0.1,) * 10, live))


def test_window_must_hold_rows() -> None:
    with pytest.raises(ValueError, match="at least 1 row"):
        monitor(Profile(rows=1, features=(F0,)), window=0)


def test_integer_labels_outside_the_profile_count_as_other() -> None:
    mon, _ = monitor(Profile(rows=10, features=(F0,), prediction=CLASSES))
    labels = np.array([-1, 0, 2, 3, 1 << 40], dtype=np.int64)
    mon.observe({"X": np.zeros((5, 1), dtype=np.float32)}, {"label": labels})
    assert mon.prediction_counts() == {"0": 1, "1": 0, "2": 1, "other": 3}


def test_bin_counters_accumulate_beside_the_window_with_the_reference_shares() -> None:
    mon, reg = monitor(Profile(rows=10, features=(F0, COLOR), prediction=CLASSES), window=2)
    x = [[-1.0], [0.5], [0.7], [np.nan]]
    inputs = {"X": np.asarray(x), "color": np.asarray(["red", "red", "teal", "blue"], dtype=object)}
    mon.observe(inputs, {"label": np.array([0, 0, 1, 1])})
    mon.observe(inputs, {"label": np.array([0, 0, 1, 1])})
    # The window holds 2 rows; the counters every row since the start.
    assert value(reg, "roost_drift_window_rows") == 2
    assert value(reg, "roost_feature_bin_total", feature="f0", bin="0") == 2
    assert value(reg, "roost_feature_bin_total", feature="f0", bin="1") == 4
    assert value(reg, "roost_feature_bin_total", feature="f0", bin="2") == 0
    assert value(reg, "roost_feature_bin_total", feature="f0", bin="missing") == 2
    assert value(reg, "roost_feature_bin_total", feature="color", bin="2") == 2  # other
    assert value(reg, "roost_feature_reference_share", feature="f0", bin="1") == 0.5
    assert value(reg, "roost_feature_reference_share", feature="color", bin="2") == pytest.approx(
        0.1
    )
    assert value(reg, "roost_feature_reference_share", feature="f0", bin="missing") is None


def test_a_large_batch_bins_exactly_as_its_rows_one_by_one() -> None:
    # Large batches are binned column-major and single rows row-major: the counts must agree,
    # edge values, NaN and infinities included.
    profile = Profile(rows=10, features=(F0, F1), prediction=CLASSES)
    together, _ = monitor(profile, window=500)
    alone, _ = monitor(profile, window=500)
    rng = np.random.default_rng(5)
    x = rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0, 10.0, 11.0, np.nan, np.inf, -np.inf], size=(64, 2))
    labels = rng.integers(0, 4, size=64)
    inputs = {"X": x.astype(np.float32)}
    together.observe(inputs, {"label": labels})
    for i in range(64):
        alone.observe({"X": inputs["X"][i : i + 1]}, {"label": labels[i : i + 1]})
    together.flush()
    alone.flush()
    np.testing.assert_array_equal(together._window.counts, alone._window.counts)
    assert together.statistics() == alone.statistics()


def test_pending_rows_of_different_widths_are_all_counted_at_the_next_read() -> None:
    # Rows are binned lazily, in bulk; batches that cannot be concatenated (another width,
    # another dtype) are binned separately, and a read always sees every row observed.
    mon, reg = monitor(Profile(rows=10, features=(F0,), prediction=CLASSES), window=100)
    mon.observe({"X": np.array([[-1.0]], dtype=np.float32)}, {"label": np.array([0])})
    mon.observe({"X": np.array([[0.5, 7.0], [2.0, 7.0]])}, {"label": np.array([1, 2])})
    mon.observe({"X": np.array([[0.5]], dtype=np.float32)}, {"label": np.array([1])})
    assert value(reg, "roost_drift_window_rows") == 4
    assert value(reg, "roost_predictions_total", bin="1") == 2
    live_f0 = [1, 2, 1]
    assert value(reg, "roost_feature_psi", feature="f0") == pytest.approx(
        psi(F0.frequencies, live_f0)
    )
