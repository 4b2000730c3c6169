"""Drift statistics against hand-worked values and independent implementations (scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from roost_serving.drift import (
    BinnedWindow,
    bin_indices,
    binned_ks,
    category_indices,
    histogram,
    js_distance,
    psi,
    quantile_edges,
)
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp


def test_psi_hand_worked_example() -> None:
    # e = 1/4 each, a = (0.1, 0.2, 0.3, 0.4):
    # -0.15 ln 0.4 - 0.05 ln 0.8 + 0.05 ln 1.2 + 0.15 ln 1.6 = 0.2282
    expected = 0.15 * math.log(1 / 0.4) + 0.05 * math.log(1 / 0.8)
    expected += 0.05 * math.log(1.2) + 0.15 * math.log(1.6)
    assert psi([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expected)
    assert psi([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.228217, abs=1e-6)


def test_psi_accepts_counts_and_is_zero_for_identical_distributions() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([25, 25, 25, 25], [10, 20, 30, 40]) == pytest.approx(0.228217, abs=1e-6)


def test_psi_floors_empty_bins_at_1e4_and_renormalises() -> None:
    # Live traffic never hits bin 0: floored to 1e-4, then both vectors renormalised.
    e = np.array([0.5, 0.5])
    a = np.array([1e-4, 1.0]) / (1.0 + 1e-4)
    want = float(np.sum((a - e) * np.log(a / e)))
    got = psi([0.5, 0.5], [0.0, 1.0])
    assert math.isfinite(got)
    assert got == pytest.approx(want)


def test_psi_rejects_mismatched_or_empty_distributions() -> None:
    with pytest.raises(ValueError, match="different numbers of bins"):
        psi([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="sum to zero"):
        psi([0.5, 0.5], [0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        psi([0.5, 0.5], [-1, 2])


def test_js_distance_matches_scipy_base2() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.integers(0, 50, size=6).astype(float)
        q = rng.integers(0, 50, size=6).astype(float)
        p[0] += 1
        q[1] += 1
        assert js_distance(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)), abs=1e-12)


def test_js_distance_bounds() -> None:
    assert js_distance([3, 2, 1], [6, 4, 2]) == pytest.approx(0.0, abs=1e-7)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


def test_binned_ks_equals_two_sample_ks_when_bins_separate_values() -> None:
    # Integer samples with an edge at every integer: each bin holds one value, so the binned
    # statistic must equal scipy's two-sample KS statistic on the raw samples.
    rng = np.random.default_rng(11)
    edges = np.arange(0, 9, dtype=float)
    for _ in range(20):
        ref = rng.integers(0, 10, size=500)
        live = rng.binomial(9, rng.uniform(0.2, 0.8), size=300)
        got = binned_ks(histogram(ref, edges), histogram(live, edges))
        assert got == pytest.approx(ks_2samp(ref, live).statistic, abs=1e-12)


def test_bins_are_right_closed_and_nan_is_missing() -> None:
    edges = [1.0, 2.0]
    assert bin_indices([0.5, 1.0, 1.5, 2.0, 2.5, np.nan], edges).tolist() == [0, 0, 1, 1, 2, 3]
    assert histogram([0.5, 1.0, 1.5, 2.0, 2.5, np.nan], edges).tolist() == [2, 2, 1]


def test_quantile_edges_are_deduplicated_deciles() -> None:
    values = np.arange(1, 101, dtype=float)
    edges = quantile_edges(values)
    assert edges.size == 9
    assert histogram(values, edges).tolist() == [10] * 10
    assert quantile_edges([5.0] * 20 + [np.nan]).tolist() == [5.0]
    assert quantile_edges([np.nan, np.nan]).size == 0


def test_category_indices_maps_unknown_to_other() -> None:
    cats = ["red", "blue", "green"]
    got = category_indices(np.array(["blue", "pink", "red", "green", "red"], dtype=object), cats)
    assert got.tolist() == [1, 3, 0, 2, 0]


def test_binned_window_keeps_counts_of_the_last_rows_only() -> None:
    rng = np.random.default_rng(5)
    n_slots = 12
    window = BinnedWindow(size=50, n_columns=3, n_slots=n_slots)
    history = []
    for _ in range(200):
        n = int(rng.integers(0, 9)) if rng.random() < 0.95 else 70
        batch = rng.integers(0, n_slots, size=(n, 3))
        added = window.push(batch)
        # What was pushed, per slot (the void slot last): the monitor's cumulative totals.
        assert added.tolist() == np.bincount(batch.ravel(), minlength=n_slots + 1).tolist()
        history.extend(batch.tolist())
        last = np.asarray(history[-50:], dtype=np.int64).reshape(-1, 3)
        assert window.rows == min(50, len(history))
        assert window.counts.tolist() == np.bincount(last.ravel(), minlength=n_slots).tolist()
    window.clear()
    assert window.rows == 0
    assert window.counts.sum() == 0
