"""The anytime-valid confidence sequences: coverage under many looks, restarts, power.

The false-failure checks simulate thousands of rollouts at once and bound the observed rate
with a one-sided Clopper-Pearson interval, so they fail only when the true rate is clearly
above alpha (never on a lucky draw below it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from roost_operator import sequential as sq
from scipy.stats import beta

ALPHA = 0.05


def _cp_lower(failures: int, n: int, confidence: float = 0.999) -> float:
    """Clopper-Pearson lower bound: the true rate is above it with `confidence`."""
    return 0.0 if failures == 0 else float(beta.ppf(1 - confidence, failures, n - failures + 1))


def _rollouts(
    seed: int,
    sims: int,
    rate_s: float,
    diff: float,
    canary_per_look: float,
    looks: int,
    margin: float,
    *,
    shifting: bool = False,
    restart_every: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ever failed, passed at the end) per simulated rollout of the error test."""
    rng = np.random.default_rng(seed)
    state = sq.DiffState.zeros((sims, 1))
    failed = np.zeros(sims, dtype=bool)
    verdict = np.zeros(sims, dtype=np.int8)
    for look in range(looks):
        # Shifting traffic: the split grows from 10 % to 50 % and the base rate doubles.
        share = 0.1 + 0.4 * look / max(looks - 1, 1) if shifting else 0.25
        base = rate_s * (1 + look / max(looks - 1, 1)) if shifting else rate_s
        n_c = rng.poisson(canary_per_look * share / 0.25, (sims, 1))
        n_s = rng.poisson(canary_per_look * (1 - share) / 0.25, (sims, 1))
        x_c = rng.binomial(n_c, min(base + diff, 1.0))
        x_s = rng.binomial(n_s, base)
        state = sq.update(state, x_c, n_c, x_s, n_s)
        if restart_every and look % restart_every == 0:
            # An operator restart: the state goes through status (JSON) and comes back.
            rows = [json.loads(json.dumps(sq.state_row(state, i).to_status())) for i in range(sims)]
            state = sq.stack([sq.DiffState.from_status(r, 1) for r in rows])
        verdict, _, _ = sq.judge_many(state, ALPHA, margin)
        failed |= verdict == sq.FAIL
    return failed, verdict == sq.PASS


@pytest.mark.parametrize(
    ("rate", "per_look", "looks"),
    [(0.01, 5, 60), (0.01, 50, 36), (0.2, 20, 36), (0.0, 30, 36), (0.001, 400, 36)],
)
def test_identical_revisions_fail_at_most_alpha(rate: float, per_look: float, looks: int) -> None:
    failed, _ = _rollouts(1, 4000, rate, 0.0, per_look, looks, margin=0.005)
    assert _cp_lower(int(failed.sum()), failed.size) <= ALPHA


@pytest.mark.parametrize("rate", [0.01, 0.1])
def test_a_canary_exactly_at_the_margin_fails_at_most_alpha(rate: float) -> None:
    failed, _ = _rollouts(2, 4000, rate, 0.005, 200, 36, margin=0.005)
    assert _cp_lower(int(failed.sum()), failed.size) <= ALPHA


def test_shifting_split_and_base_rate_do_not_inflate_false_failures() -> None:
    # Pooling raw counts here would blame the canary: it gets more of the traffic exactly
    # when the base rate is higher. Per-interval conditioning does not.
    failed, _ = _rollouts(3, 4000, 0.05, 0.0, 200, 36, margin=0.0, shifting=True)
    assert _cp_lower(int(failed.sum()), failed.size) <= ALPHA


def test_restarts_from_persisted_state_continue_the_same_test() -> None:
    failed, _ = _rollouts(4, 600, 0.05, 0.0, 100, 24, margin=0.0, restart_every=3)
    assert _cp_lower(int(failed.sum()), failed.size) <= ALPHA
    # And the persisted state gives exactly the bounds the live one had.
    fresh, _ = _rollouts(4, 600, 0.05, 0.0, 100, 24, margin=0.0)
    assert (fresh == failed).all()


def test_power_grows_with_sample_size() -> None:
    power = [_rollouts(5, 1000, 0.01, 0.02, n, 36, margin=0.005)[0].mean() for n in (5, 50, 500)]
    assert power[0] < power[1] < power[2]
    assert power[2] > 0.99


def test_identical_revisions_pass_given_enough_traffic() -> None:
    _, passed = _rollouts(6, 1000, 0.01, 0.0, 500, 36, margin=0.005)
    assert passed.mean() > 0.95


def test_no_evidence_is_inconclusive_with_infinite_bounds() -> None:
    state = sq.DiffState.zeros(3)
    verdict, lower, upper = sq.judge_many(state, 0.01, 0.1, -0.1)
    assert verdict == sq.INCONCLUSIVE
    assert np.isneginf(lower).all()
    assert np.isposinf(upper).all()


def test_one_sample_against_a_reference() -> None:
    rng = np.random.default_rng(7)
    ref = np.array([0.2, 0.3, 0.5])
    state = sq.DiffState.zeros(3)
    for _ in range(30):
        counts = rng.multinomial(100, ref)
        state = sq.update(state, counts, np.full(3, 100), None, None, reference=ref)
    verdict, lower, upper = sq.judge_many(state, 0.01, 0.05, -0.05)
    assert verdict == sq.PASS
    assert (lower < 0).all()
    assert (upper > 0).all()
    for _ in range(10):
        state = sq.update(state, np.array([900, 50, 50]), np.full(3, 1000), None, None, ref)
    assert sq.judge_many(state, 0.01, 0.05, -0.05)[0] == sq.FAIL


@settings(max_examples=60, deadline=None)
@given(
    n_c=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    rate=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_bounds_are_ordered_and_shrink_is_finite(n_c: list[int], rate: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = sq.DiffState.zeros(1)
    for n in n_c:
        ns = 3 * n
        state = sq.update(state, [rng.binomial(n, rate)], [n], [rng.binomial(ns, rate)], [ns])
    lower, upper = sq.bounds(state, 0.01)
    if state.m[0] >= sq.MIN_INTERVALS:
        assert np.isfinite(lower).all()
        assert np.isfinite(upper).all()
        assert lower[0] <= state.estimate[0] <= upper[0]
        wider = sq.bounds(state, 0.001)
        assert wider[0][0] <= lower[0]
        assert upper[0] <= wider[1][0]
    else:
        assert np.isneginf(lower[0])


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), data=st.data())
def test_status_round_trip_is_exact(k: int, data: st.DataObject) -> None:
    state = sq.DiffState.zeros(k)
    for _ in range(data.draw(st.integers(0, 5))):
        n = np.asarray(data.draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k)))
        x = np.minimum(n, data.draw(st.lists(st.integers(0, 50), min_size=k, max_size=k)))
        state = sq.update(state, x, n, x // 2, n + 1)
    back = sq.DiffState.from_status(json.loads(json.dumps(state.to_status())), k)
    for a, b in zip(sq.bounds(state, 0.01), sq.bounds(back, 0.01), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_no_verdict_before_the_intervals_measured_their_spread() -> None:
    state = sq.DiffState.zeros(1)
    for i in range(sq.MIN_INTERVALS):
        assert sq.judge_many(state, 0.05, 0.005)[0] == sq.INCONCLUSIVE, i
        state = sq.update(state, [500], [1000], [0], [1000])
    assert sq.judge_many(state, 0.05, 0.005)[0] == sq.FAIL


def test_clustered_intervals_widen_the_bounds() -> None:
    # Same counts in total; in the second state they alternate between intervals (clients
    # that stick to one arm): the spread, not the binomial variance, sets the width.
    steady, bursty = sq.DiffState.zeros(1), sq.DiffState.zeros(1)
    for i in range(12):
        steady = sq.update(steady, [50], [1000], [50], [1000])
        bursty = sq.update(bursty, [100 if i % 2 else 0], [1000], [50], [1000])
    lo_s, hi_s = sq.bounds(steady, 0.01)
    lo_b, hi_b = sq.bounds(bursty, 0.01)
    assert hi_b[0] - lo_b[0] > 2 * (hi_s[0] - lo_s[0])


def test_malformed_status_starts_afresh() -> None:
    assert sq.DiffState.from_status({"w": [1.0]}, 2).w.tolist() == [0.0, 0.0]
    assert sq.DiffState.from_status("junk", 1).w.tolist() == [0.0]


def test_mixture_radius_solves_the_one_sided_mixture_martingale() -> None:
    from scipy.optimize import brentq
    from scipy.special import log_ndtr

    for v, rho, alpha in [(1.0, 1.0, 0.05), (1e4, 10.0, 0.01), (0.1, 5.0, 0.001), (50, 50, 0.2)]:

        def log_m(s: float, v: float = v, rho: float = rho) -> float:
            z = s / np.sqrt(v + rho)
            return float(np.log(2) + 0.5 * np.log(rho / (v + rho)) + z * z / 2 + log_ndtr(z))

        exact = brentq(lambda s: log_m(s) - np.log(1 / alpha), 0, 1e4)  # noqa: B023
        got = sq.mixture_radius(np.asarray(v), np.asarray(rho), alpha)
        assert float(got) == pytest.approx(exact, rel=1e-3)
