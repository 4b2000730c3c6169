"""Anytime-valid confidence sequences for differences of proportions, canary against stable.

Pure numpy (plus `scipy.special.log_ndtr`): no I/O, no Kubernetes. Every gate of the canary
analysis reduces to one or more *differences of proportions* — the canary's 5xx share minus the
stable's, the canary's share of requests slower than `ratio` x the stable's p99 edge minus the
stable's share slower than that edge, a prediction bin's share in canary minus in stable, an
input bin's share minus the profile's frequency — and this module keeps, for each of them, the
accumulated evidence and an anytime-valid confidence sequence (CS).

The construction (docs/analysis.md has the derivation and the references):

- Evidence accumulates per analysis interval i, conditioned on that interval's counts: the
  interval's estimate ``y_i = x_ci/n_ci - x_si/n_si`` has mean ``d_i`` (the true difference in
  that interval) whatever the split between the arms and whatever the stable's base rate, so
  intervals are combined with predictable weights ``w_i = n_ci n_si / (n_ci + n_si)`` (the
  precision of ``y_i`` up to the rates) instead of pooling raw counts (which would confound a
  changing split with a changing base rate: Simpson's paradox).
- ``S_t = sum w_i (y_i - d)`` is a martingale under a constant difference ``d`` (a
  supermartingale for ``d_i <= d`` in the fail direction), with conditional variance
  ``V_t = p_c(1-p_c) A_c + p_s(1-p_s) A_s`` where ``A = sum w_i^2 / n_i``. The one-sided
  normal-mixture boundary of Robbins / Howard et al. (2021) gives, for each direction,
  ``P(exists t: S_t >= b(V_t)) <= alpha``; inverting it in ``d`` gives the confidence sequence.
  The variance uses the pooled rates with a Jeffreys-like prior (so zero errors never mean
  zero variance), which makes the sequence asymptotically valid in the sense of Waudby-Smith
  et al. (2021, "Time-uniform central limit theory"); small-sample validity is what
  `benchmarks/bench_gates.py` and the property tests measure.
- All state is a handful of sums per tested difference (`DiffState`), persisted in status, so
  a restarted operator continues the same sequence and spends no `alpha` again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

FloatArray = npt.NDArray[np.float64]

RHO_REQUESTS = 400.0
"""Effective requests at which the mixture boundary is tightest (Howard et al.'s rho).

Smaller values detect large effects sooner, larger ones small effects; 400 effective requests
(e.g. 440 canary against 4,000 stable requests) sits between the low- and high-traffic cells of
the benchmark."""

MIN_INTERVALS = 6
"""Intervals with evidence before a difference has finite bounds (and so any verdict)."""

PRIOR = 0.5
"""Pseudo-counts added to each arm's successes and failures for the variance estimate only."""

FIELDS = ("w", "wy", "a_c", "a_s", "x_c", "n_c", "x_s", "n_s", "q0", "q1", "q2", "m")


@dataclass(frozen=True)
class DiffState:
    """Accumulated evidence for k differences of proportions (arrays of shape ``(..., k)``).

    `w` sum of weights, `wy` weighted sum of the interval estimates, `a_c`/`a_s` sums of
    ``w^2 / n`` per arm (the variance factors), `x_*`/`n_*` pooled successes and trials per arm
    (for the variance's rates and for display), `q` the empirical spread of the interval
    estimates. A one-sample difference (against a known reference such as the profile's
    frequencies) keeps the reference's expected counts in `x_s`/`n_s` and has `a_s` = 0.
    """

    w: FloatArray
    wy: FloatArray
    a_c: FloatArray
    a_s: FloatArray
    x_c: FloatArray
    n_c: FloatArray
    x_s: FloatArray
    n_s: FloatArray
    q0: FloatArray
    """``sum w_i^2``; with `q1` = ``sum w_i^2 y_i`` and `q2` = ``sum w_i^2 y_i^2`` it gives the
    intervals' own spread around the estimate, for the variance when requests are not
    independent (clients sticking to pods, bursts)."""
    q1: FloatArray
    q2: FloatArray
    m: FloatArray
    """Intervals that carried evidence (both arms served)."""

    @classmethod
    def zeros(cls, shape: int | tuple[int, ...]) -> DiffState:
        """No evidence yet."""
        return cls(*(np.zeros(shape) for _ in FIELDS))

    def to_status(self) -> dict[str, list[float]]:
        """JSON-safe form for ``status.canary.evidence`` (1-D states only)."""
        # Full float precision: JSON round-trips a double exactly, so a restart changes nothing.
        return {f: [float(v) for v in getattr(self, f).ravel()] for f in FIELDS}

    @classmethod
    def from_status(cls, raw: Any, k: int) -> DiffState:
        """Read `to_status` back; anything missing or of another length starts afresh."""
        if not isinstance(raw, Mapping):
            return cls.zeros(k)
        arrays = []
        for f in FIELDS:
            values = raw.get(f)
            if not isinstance(values, Sequence) or len(values) != k:
                return cls.zeros(k)
            try:
                arrays.append(np.asarray([float(v) for v in values]))
            except (TypeError, ValueError):
                return cls.zeros(k)
        return cls(*arrays)

    @property
    def estimate(self) -> FloatArray:
        """Precision-weighted difference so far (NaN without evidence)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.w > 0, self.wy / np.where(self.w > 0, self.w, 1.0), np.nan)


def state_row(state: DiffState, i: int) -> DiffState:
    """Row `i` of a stacked (simulations x k) state."""
    return DiffState(*(getattr(state, f)[i] for f in FIELDS))


def stack(states: Sequence[DiffState]) -> DiffState:
    """Stack 1-D states into one (len(states) x k) state."""
    return DiffState(*(np.stack([getattr(s, f) for s in states]) for f in FIELDS))


def update(
    state: DiffState,
    x_c: npt.ArrayLike,
    n_c: npt.ArrayLike,
    x_s: npt.ArrayLike | None,
    n_s: npt.ArrayLike | None,
    reference: npt.ArrayLike | None = None,
) -> DiffState:
    """Add one interval: canary `x_c` of `n_c`, stable `x_s` of `n_s` (or a known `reference`).

    Intervals where an arm has no trials carry no information about the difference and only
    update the pooled counts. Arrays broadcast against the state's shape.
    """
    xc = np.asarray(x_c, dtype=np.float64)
    nc = np.asarray(n_c, dtype=np.float64)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        ok = nc > 0
        w = np.where(ok, nc, 0.0)
        y = np.where(ok, xc / np.where(ok, nc, 1.0) - ref, 0.0)
        return DiffState(
            **_interval_sums(state, w, y, ok),
            a_c=state.a_c + w,  # w^2 / n_c with w = n_c
            a_s=state.a_s + 0.0,
            x_c=state.x_c + xc,
            n_c=state.n_c + nc,
            x_s=state.x_s + ref * nc,
            n_s=state.n_s + nc,
        )
    assert x_s is not None
    assert n_s is not None
    xs = np.asarray(x_s, dtype=np.float64)
    ns = np.asarray(n_s, dtype=np.float64)
    ok = (nc > 0) & (ns > 0)
    safe_c, safe_s = np.where(ok, nc, 1.0), np.where(ok, ns, 1.0)
    w = np.where(ok, safe_c * safe_s / (safe_c + safe_s), 0.0)
    y = np.where(ok, xc / safe_c - xs / safe_s, 0.0)
    return DiffState(
        **_interval_sums(state, w, y, ok),
        a_c=state.a_c + np.where(ok, w * w / safe_c, 0.0),
        a_s=state.a_s + np.where(ok, w * w / safe_s, 0.0),
        x_c=state.x_c + xc,
        n_c=state.n_c + nc,
        x_s=state.x_s + xs,
        n_s=state.n_s + ns,
    )


def _interval_sums(
    state: DiffState, w: FloatArray, y: FloatArray, ok: npt.NDArray[np.bool_]
) -> dict[str, FloatArray]:
    """The weight, estimate and spread sums one interval of weight `w` and estimate `y` adds
    (both the two-sample and the one-sample update add them alike)."""
    return {
        "q0": state.q0 + w * w,
        "q1": state.q1 + w * w * y,
        "q2": state.q2 + w * w * y * y,
        "m": state.m + ok,
        "w": state.w + w,
        "wy": state.wy + w * y,
    }


def _spread(state: DiffState) -> FloatArray:
    """``sum w_i^2 (y_i - estimate)^2 x m/(m-1)``: the cluster-robust variance of ``S_t``."""
    est = np.nan_to_num(state.estimate)
    raw = np.maximum(state.q2 - 2 * est * state.q1 + est * est * state.q0, 0.0)
    spread: FloatArray = np.where(state.m > 1, raw * state.m / np.maximum(state.m - 1, 1), 0.0)
    return spread


def _rate(x: FloatArray, n: FloatArray) -> FloatArray:
    rate: FloatArray = (x + PRIOR) / (n + 2 * PRIOR)
    return rate


def mixture_radius(v: FloatArray, rho: FloatArray, alpha: float | FloatArray) -> FloatArray:
    """One-sided normal-mixture boundary b with P(exists t: S_t >= b(V_t)) <= alpha.

    The half-normal mixture martingale (Howard et al. 2021, Prop. 6 with a one-sided prior) is
    ``2 sqrt(rho/(V+rho)) exp(z^2/2) Phi(z)`` with ``z = S / sqrt(V+rho)``; b solves it equal to
    ``1/alpha``. Starting from the two-sided solution, two fixed-point steps of
    ``z^2 = 2 (log(1/alpha) - log 2 - log Phi(z)) + log((V+rho)/rho)`` converge (the log Phi
    term is at most log 2 and shrinks fast as z grows; `test_sequential` checks the result
    against a root found by bisection).
    """
    total = v + rho
    log_ratio = np.log(total / rho)
    log_inv = np.log(1.0 / np.asarray(alpha, dtype=np.float64))
    z = np.sqrt(2 * log_inv + log_ratio)
    for _ in range(2):
        z = np.sqrt(np.maximum(2 * (log_inv - np.log(2.0) - log_ndtr(z)) + log_ratio, 0.0))
    radius: FloatArray = z * np.sqrt(total)
    return radius


def bounds(state: DiffState, alpha: float | FloatArray) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) confidence sequence for each difference, each side at level `alpha`.

    P(the true difference ever leaves [lower, upper]) <= 2 alpha; a one-sided decision
    (fail when lower > margin) spends `alpha`. Without evidence the bounds are -inf/+inf.
    """
    p_c = _rate(state.x_c, state.n_c)
    p_s = _rate(state.x_s, state.n_s)
    unit = 0.5 * (p_c * (1 - p_c) + np.where(state.n_s > 0, p_s * (1 - p_s), p_c * (1 - p_c)))
    v = p_c * (1 - p_c) * state.a_c + p_s * (1 - p_s) * state.a_s
    # The intervals' own spread when it is larger than independent requests would give (the
    # cluster-robust variance, intervals as clusters): overdispersion must not read as evidence.
    v = np.maximum(v, _spread(state))
    rho = unit * RHO_REQUESTS
    radius = mixture_radius(v, rho, alpha)
    # Until MIN_INTERVALS intervals measured that spread, no bound: one interval cannot tell
    # an effect from clients that happened to land on one arm.
    known = (state.w > 0) & (state.m >= MIN_INTERVALS)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(known, radius / np.where(state.w > 0, state.w, 1.0), np.inf)
    est = np.where(state.w > 0, state.estimate, 0.0)
    return est - half, est + half


FAIL, INCONCLUSIVE, PASS = -1, 0, 1
"""Verdict codes of `judge_many` (per row of a vectorised simulation)."""


def judge_many(
    state: DiffState, alpha: float, upper_margin: float, lower_margin: float | None = None
) -> tuple[npt.NDArray[np.int8], FloatArray, FloatArray]:
    """Judge the differences along the last axis against their margin(s).

    One-sided (``lower_margin`` None): a difference fails when its lower bound exceeds
    ``upper_margin`` and passes when its upper bound is at or below it. Two-sided: it must also
    stay above ``lower_margin``. `alpha` is split evenly over the one-sided tests, so the
    chance that any difference within its margins ever fails stays below `alpha`. A set fails
    if any difference fails, passes if all pass, else is inconclusive. Returns the verdict
    codes (`FAIL`, `INCONCLUSIVE`, `PASS`) and the bounds.
    """
    k = state.w.shape[-1] if state.w.ndim else 1
    tests = k if lower_margin is None else 2 * k
    lower, upper = bounds(state, alpha / max(tests, 1))
    fail = np.any(lower > upper_margin, axis=-1)
    ok = np.all(upper <= upper_margin, axis=-1)
    if lower_margin is not None:
        fail |= np.any(upper < lower_margin, axis=-1)
        ok &= np.all(lower >= lower_margin, axis=-1)
    verdict = np.where(fail, FAIL, np.where(ok, PASS, INCONCLUSIVE)).astype(np.int8)
    return verdict, lower, upper


VERDICTS = {FAIL: "fail", INCONCLUSIVE: "inconclusive", PASS: "pass"}
