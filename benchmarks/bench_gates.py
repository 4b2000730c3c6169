"""Simulated canary rollouts judged by roost's sequential gates and by the old threshold gates.

Usage: ``python benchmarks/bench_gates.py [--sims 2000] [--alpha 0.05] [--quick]``

Every cell simulates `--sims` rollouts of 3 steps (canary weight 10/30/50 %, 2 minutes each,
an analysis every 10 s, a 4-minute progress deadline per step, `onInconclusive: rollback`).
Each interval draws, for canary and stable, the request count (the realised split jitters
around the step weight, as pods come and go), 5xx and 4xx answers, latency bucket counts
(log-normal, over the serving process's real buckets), predictions over shared bins and 20 or
64 input features' decile bins. The new gates are `roost_operator.sequential` — the very code
`roost_operator.verdicts` runs — vectorised over rollouts; a share of the rollouts of some
cells (``real`` column) goes through the operator's real path instead: synthetic Prometheus
exposition text per pod (one pod restarts mid-rollout) parsed by `roost_operator.gates` and
judged by `roost_operator.verdicts.judge_interval` with the evidence round-tripped through
JSON, and the table says how many of them reached the same outcome at the same analysis.

The old gates (v1alpha1 before the sequential tests, the README's thresholds: minRequests 200
per window, failureLimit 2, errorRate.max 0.01 on non-2xx, maxP99Ratio 1.5, maxPSI 0.2 over a
2,000-row window, maxJSDistance 0.2) judge the same streams.

Columns: ``FR`` false rollbacks (A/A and at-margin cells: a gate failed although the canary is
within every margin) with the one-sided 95 % Clopper-Pearson upper bound, ``power`` (A/B
cells: rolled back by a gate), ``pass`` promoted by passing, ``deadline`` ended by the
deadline policy, median canary requests and seconds to the rollback. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("operator", "serving")]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # simstats, also when loaded by path

from roost_operator import sequential as sq  # noqa: E402
from roost_operator.gates import (  # noqa: E402
    counter_deltas,
    evaluate,
    parse_exposition,
    window_from_samples,
)
from roost_operator.spec import parse_spec  # noqa: E402
from roost_serving.metrics import REQUEST_BUCKETS  # noqa: E402
from simstats import cp_upper  # noqa: E402

WEIGHTS = (0.10, 0.30, 0.50)
INTERVAL = 10.0
PAUSE_LOOKS = 12  # 2 minutes
DEADLINE_LOOKS = 24  # 4 minutes per step
BUCKETS = np.asarray(REQUEST_BUCKETS)
MARGINS = {"error": 0.005, "ratio": 1.3**0.5, "divergence": 0.02, "drift": 0.1}
QUANTILE = 0.99
BASE_ERROR = 0.005
LOG_SIGMA = 0.5
DECILE_EDGES = np.asarray([-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816])
"""A standard normal feature's decile edges, as `roost profile` builds them."""


@dataclass(frozen=True)
class Cell:
    """One row of the table."""

    name: str
    kind: str  # "A/A", "margin", "A/B"
    bins: int = 3
    regression: bool = False
    features: int = 20
    rps: float = 50.0
    shift: bool = False
    cluster: bool = False
    client_errors: float = 0.0
    error_delta: float = 0.0
    latency_ratio: float = 1.0
    prediction: str = ""  # "", "one-class-20", "mass-5", "at-margin"
    feature_shift: float = 0.0
    real: int = 0


@dataclass
class Outcome:
    """Per rollout: how it ended and when."""

    ended: np.ndarray  # 0 running/promoted, 1 gate rollback, 2 deadline, 3 promoted by pass
    look: np.ndarray
    requests: np.ndarray


def _prediction_probs(cell: Cell) -> np.ndarray:
    if cell.regression:
        return np.full(cell.bins, 1.0 / cell.bins)
    p = 0.7 ** np.arange(cell.bins)
    return p / p.sum()


def _canary_predictions(cell: Cell, p: np.ndarray) -> np.ndarray:
    q = p.copy()
    if cell.prediction == "one-class-20":
        q = 0.8 * q + 0.2 * np.eye(len(q))[0]
    elif cell.prediction in ("mass-5", "at-margin"):
        moved = 0.05 if cell.prediction == "mass-5" else MARGINS["divergence"]
        top = int(np.argmax(q))
        low = int(np.argmin(q)) if np.ptp(q) > 0 else len(q) - 1
        shift = min(moved, q[top])
        q[top] -= shift
        q[low] += shift
    return q


def _latency_probs(mu: float) -> np.ndarray:
    """Probabilities of each latency bucket (and +Inf) for a log-normal latency."""
    cdf = ndtr((np.log(BUCKETS) - mu) / LOG_SIGMA)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _feature_probs(shift: float) -> np.ndarray:
    cdf = ndtr(DECILE_EDGES - shift)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _multinomial(
    rng: np.random.Generator, n: np.ndarray, p: np.ndarray, cluster: bool
) -> np.ndarray:
    """Counts over the last axis of `p` for `n` requests per row; clustered: clients of 10."""
    if not cluster:
        return rng.multinomial(n, p)
    # Sticky clients: each interval an arm's requests come from a client mix of its own
    # (Dirichlet around p with concentration 200), beyond what the multinomial model assumes.
    mix = rng.dirichlet(p * 200.0, size=n.shape)
    out: np.ndarray = rng.multinomial(n, mix)
    return out


@dataclass
class Streams:
    """One interval's counts for every simulated rollout."""

    n_c: np.ndarray
    n_s: np.ndarray
    e_c: np.ndarray
    e_s: np.ndarray
    c4_c: np.ndarray
    c4_s: np.ndarray
    lat_c: np.ndarray  # (sims, B+1) per-bucket counts (not cumulative), last = above top
    lat_s: np.ndarray
    pred_c: np.ndarray
    pred_s: np.ndarray
    feat_c: np.ndarray  # (sims, F, 10)
    feat_s: np.ndarray


def draw(
    rng: np.random.Generator, cell: Cell, sims: int, step: np.ndarray, look: int, total: int
) -> Streams:
    """Counts of one interval of every rollout (each at its own step)."""
    progress = look / max(total - 1, 1)
    weights = np.asarray(WEIGHTS)[np.minimum(step, len(WEIGHTS) - 1)]
    w = weights * rng.uniform(0.7, 1.3, sims)  # realised split, not the step weight
    traffic = cell.rps / WEIGHTS[0] * INTERVAL
    n_total = rng.poisson(traffic, sims)
    n_c = rng.binomial(n_total, w)
    n_s = n_total - n_c
    err = BASE_ERROR * (1 + 2 * progress if cell.shift else 1.0)
    p = _prediction_probs(cell)
    if cell.shift:
        p = (1 - 0.3 * progress) * p + 0.3 * progress * p[::-1]
    mu = math.log(0.02) + (math.log(1.5) * progress if cell.shift else 0.0)

    def errors(n: np.ndarray, rate: float) -> np.ndarray:
        if cell.cluster:
            rate_arr = rng.beta(rate * 20, (1 - rate) * 20, n.shape)
            return rng.binomial(n, rate_arr)
        return rng.binomial(n, rate)

    e_c, e_s = errors(n_c, err + cell.error_delta), errors(n_s, err)
    c4_c, c4_s = (
        rng.binomial(n_c - e_c, cell.client_errors),
        rng.binomial(n_s - e_s, cell.client_errors),
    )
    lat_c = rng.multinomial(n_c, _latency_probs(mu + math.log(cell.latency_ratio)))
    lat_s = rng.multinomial(n_s, _latency_probs(mu))
    ok_c, ok_s = n_c - e_c - c4_c, n_s - e_s - c4_s
    pred_c = _multinomial(rng, ok_c, _canary_predictions(cell, p), cell.cluster)
    pred_s = _multinomial(rng, ok_s, p, cell.cluster)
    ref = _feature_probs(0.0)
    fp_c = np.tile(ref, (cell.features, 1))
    fp_c[0] = _feature_probs(cell.feature_shift)
    feat_c = rng.multinomial(np.repeat(ok_c[:, None], cell.features, 1), fp_c)
    feat_s = np.zeros((sims, cell.features, 10), dtype=np.int64)  # only the canary is judged
    return Streams(n_c, n_s, e_c, e_s, c4_c, c4_s, lat_c, lat_s, pred_c, pred_s, feat_c, feat_s)


# --- the new gates, vectorised (mirrors roost_operator.verdicts) ------------------------------


SCALED = np.asarray(
    [
        next(
            (j for j in range(len(BUCKETS)) if BUCKETS[j] >= MARGINS["ratio"] * b * (1 - 1e-3)),
            len(BUCKETS),
        )
        for b in BUCKETS
    ]
)


class NewGates:
    """The four sequential gates for every rollout, alpha split evenly over them."""

    def __init__(self, sims: int, cell: Cell, alpha: float) -> None:
        self.alpha = alpha / 4
        self.err = sq.DiffState.zeros((sims, 1))
        self.lat = sq.DiffState.zeros((sims, 1))
        self.tail = sq.DiffState.zeros((sims, 1))
        self.past = np.zeros((sims, len(BUCKETS) + 1))
        self.div = sq.DiffState.zeros((sims, cell.bins))
        self.drift = sq.DiffState.zeros((sims, cell.features * 10))
        self.ref = np.tile(_feature_probs(0.0), cell.features)
        self.served = np.zeros(sims)

    def judge(self, s: Streams) -> tuple[np.ndarray, np.ndarray]:
        """(failed, passed) after adding one interval."""
        self.served += s.n_c
        self.err = sq.update(
            self.err, s.e_c[:, None], s.n_c[:, None], s.e_s[:, None], s.n_s[:, None]
        )
        cum = np.cumsum(self.past, axis=1)
        known = cum[:, -1] > 0
        edge = np.argmax(cum >= QUANTILE * cum[:, -1:], axis=1)
        scaled = SCALED[np.minimum(edge, len(BUCKETS) - 1)]
        usable = known & (edge < len(BUCKETS)) & (scaled < len(BUCKETS)) & (s.n_c > 0)
        cum_c, cum_s = np.cumsum(s.lat_c, axis=1), np.cumsum(s.lat_s, axis=1)
        rows = np.arange(len(edge))
        slow_c = s.n_c - cum_c[rows, np.minimum(scaled, len(BUCKETS) - 1)]
        slow_s = s.n_s - cum_s[rows, np.minimum(edge, len(BUCKETS) - 1)]
        both = usable & (s.n_s > 0)
        self.lat = sq.update(
            self.lat, np.where(both, slow_c, 0)[:, None], np.where(both, s.n_c, 0)[:, None],
            np.where(both, slow_s, 0)[:, None], np.where(both, s.n_s, 0)[:, None],
        )  # fmt: skip
        self.tail = sq.update(
            self.tail, np.where(usable, slow_c, 0)[:, None], np.where(usable, s.n_c, 0)[:, None],
            None, None, [1 - QUANTILE],
        )  # fmt: skip
        self.past += s.lat_s
        nc, ns = s.pred_c.sum(1, keepdims=True), s.pred_s.sum(1, keepdims=True)
        k = s.pred_c.shape[1]
        self.div = sq.update(self.div, s.pred_c, np.repeat(nc, k, 1), s.pred_s, np.repeat(ns, k, 1))
        fc = s.feat_c.reshape(len(edge), -1)
        rows_f = np.repeat(s.feat_c.sum(2), 10, axis=1)
        self.drift = sq.update(self.drift, fc, rows_f, None, None, self.ref)
        v_err, _, _ = sq.judge_many(self.err, self.alpha, MARGINS["error"])
        v_lat, _, _ = sq.judge_many(self.lat, self.alpha, 0.0)
        v_tail, _, _ = sq.judge_many(self.tail, self.alpha, 0.0)
        m = MARGINS["divergence"]
        v_div, _, _ = sq.judge_many(self.div, self.alpha, m, -m)
        m = MARGINS["drift"]
        v_drift, _, _ = sq.judge_many(self.drift, self.alpha, m, -m)
        failed = (v_err == sq.FAIL) | (v_lat == sq.FAIL) | (v_div == sq.FAIL) | (v_drift == sq.FAIL)
        passed = (
            (v_err == sq.PASS) & (v_tail == sq.PASS) & (v_div == sq.PASS) & (v_drift == sq.PASS)
            & (v_lat != sq.FAIL) & (self.served >= 50)
        )  # fmt: skip
        return failed, passed


# --- the old threshold gates ------------------------------------------------------------------


def _p99(per_bucket: np.ndarray) -> np.ndarray:
    """PromQL histogram_quantile(0.99) per row of per-bucket counts (NaN when empty)."""
    cum = np.cumsum(per_bucket, axis=1).astype(float)
    total = cum[:, -1]
    rank = 0.99 * total
    b = np.argmax(cum >= rank[:, None], axis=1)
    bounds = np.concatenate([BUCKETS, [BUCKETS[-1]]])
    start = np.where(b > 0, bounds[np.maximum(b - 1, 0)], 0.0)
    before = np.where(b > 0, cum[np.arange(len(b)), np.maximum(b - 1, 0)], 0.0)
    inside = cum[np.arange(len(b)), b] - before
    with np.errstate(invalid="ignore", divide="ignore"):
        q = start + (bounds[b] - start) * (rank - before) / inside
    q = np.where(b >= len(BUCKETS), BUCKETS[-1], q)
    return np.where(total > 0, q, np.nan)


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / p.sum(-1, keepdims=True)
        q = q / q.sum(-1, keepdims=True)
        m = (p + q) / 2
        kl = lambda a: np.where(a > 0, a * np.log2(a / m), 0.0).sum(-1)  # noqa: E731
        return np.sqrt(np.maximum((kl(p) + kl(q)) / 2, 0.0))


def _psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    a = np.maximum(actual / np.maximum(actual.sum(-1, keepdims=True), 1), 1e-4)
    e = np.maximum(expected / expected.sum(-1, keepdims=True), 1e-4)
    return ((a - e) * np.log(a / e)).sum(-1)


class OldGates:
    """The README's thresholds on each window; failureLimit 2 consecutive failures."""

    def __init__(self, sims: int, cell: Cell) -> None:
        self.window: list[np.ndarray] = []
        self.ref = _feature_probs(0.0)
        self.failures = np.zeros(sims, dtype=int)
        self.rows_per_look = max(cell.rps / WEIGHTS[0] * INTERVAL * 0.1, 1)

    def judge(self, s: Streams) -> tuple[np.ndarray, np.ndarray]:
        # The pods' drift window: the last 2,000 canary rows (whole intervals approximating it).
        self.window.append(s.feat_c)
        rows = np.cumsum([w.sum(2)[:, 0].mean() for w in reversed(self.window)])
        keep = int(np.searchsorted(rows, 2000)) + 1
        self.window = self.window[-keep:]
        window = sum(self.window)
        enough = s.n_c >= 200
        non2xx = (s.e_c + s.c4_c) / np.maximum(s.n_c, 1)
        p99_c, p99_s = _p99(s.lat_c), _p99(s.lat_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = p99_c / p99_s
        psi = _psi(self.ref, window).max(1)
        js = _js(s.pred_c.astype(float), s.pred_s.astype(float))
        fail = enough & (
            (non2xx > 0.01) | (np.nan_to_num(ratio) > 1.5) | (psi > 0.2) | (np.nan_to_num(js) > 0.2)
        )
        self.failures = np.where(fail, self.failures + 1, np.where(enough, 0, self.failures))
        return self.failures >= 2, enough & ~fail


# --- rollouts -----------------------------------------------------------------------------------


def run(cell: Cell, sims: int, alpha: float, seed: int) -> tuple[Outcome, Outcome, list[Streams]]:
    """Simulate every rollout of a cell once, judged by the new and the old gates."""
    rng = np.random.default_rng(seed)
    judges = (NewGates(sims, cell, alpha), OldGates(sims, cell))
    outcomes = [Outcome(np.zeros(sims, int), np.zeros(sims, int), np.zeros(sims)) for _ in judges]
    steps = [np.zeros(sims, int) for _ in judges]
    in_step = [np.zeros(sims, int) for _ in judges]
    served = np.zeros(sims)
    kept: list[Streams] = []
    total = len(WEIGHTS) * DEADLINE_LOOKS
    for look in range(total):
        # Both judges see the same counts; the split follows the new gates' rollout (the old
        # gates' rollout keeps its own step count on the same streams).
        streams = draw(rng, cell, sims, steps[0], look, total)
        if cell.real:
            kept.append(streams)
        served += streams.n_c
        for j, (judge, out) in enumerate(zip(judges, outcomes, strict=True)):
            failed, passed = judge.judge(streams)
            live = out.ended == 0
            in_step[j] += live
            roll = live & failed
            out.ended[roll], out.look[roll], out.requests[roll] = 1, look + 1, served[roll]
            live &= ~roll
            advance = live & passed & (in_step[j] >= PAUSE_LOOKS)
            steps[j] += advance
            in_step[j][advance] = 0
            done = advance & (steps[j] >= len(WEIGHTS))
            out.ended[done], out.look[done], out.requests[done] = 3, look + 1, served[done]
            late = live & ~advance & (in_step[j] >= DEADLINE_LOOKS)
            out.ended[late], out.look[late], out.requests[late] = 2, look + 1, served[late]
    return outcomes[0], outcomes[1], kept


# --- the real path: exposition text -> parse -> deltas -> verdicts ------------------------------


def _labels(**kv: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in kv.items())


def _exposition(rev: str, c: dict[str, Any]) -> str:
    """One pod's /metrics as the serving process writes it (cumulative values)."""
    base = {"model": "m", "revision": rev}
    out = ["# TYPE roost_requests_total counter"]
    for code, n in (("200", c["ok"]), ("500", c["err"]), ("400", c["c4"])):
        out.append(f"roost_requests_total{{{_labels(**base, code=code, protocol='rest')}}} {n}")
    out.append("# TYPE roost_request_duration_seconds histogram")
    cum = np.cumsum(c["lat"])
    for b, n in zip([*(repr(float(x)) for x in BUCKETS), "+Inf"], cum, strict=True):
        out.append(f"roost_request_duration_seconds_bucket{{{_labels(**base, le=b)}}} {n}")
    out.append(f"roost_request_duration_seconds_count{{{_labels(**base)}}} {cum[-1]}")
    out.append(f"roost_request_duration_seconds_sum{{{_labels(**base)}}} 0")
    out.append("# TYPE roost_predictions_total counter")
    for i, n in enumerate(c["pred"]):
        out.append(f"roost_predictions_total{{{_labels(**base, bin=str(i))}}} {n}")
    out.append("# TYPE roost_feature_bin_total counter")
    ref = _feature_probs(0.0)
    for f, row in enumerate(c["feat"]):
        for b, n in enumerate(row):
            lab = _labels(**base, feature=f"f{f}", bin=str(b))
            out.append(f"roost_feature_bin_total{{{lab}}} {n}")
    out.append("# TYPE roost_feature_reference_share gauge")
    for f in range(len(c["feat"])):
        for b, share in enumerate(ref):
            lab = _labels(**base, feature=f"f{f}", bin=str(b))
            out.append(f"roost_feature_reference_share{{{lab}}} {share}")
    return "\n".join(out) + "\n"


def real_path(cell: Cell, kept: list[Streams], n: int, alpha: float) -> list[tuple[int, int]]:
    """(outcome, look) of the first `n` rollouts judged through parse -> verdicts."""
    analysis = {
        "alpha": alpha,
        "minRequests": 50,
        "gates": {
            "errorRate": {"margin": MARGINS["error"]},
            "latency": {"maxRatio": MARGINS["ratio"], "quantile": QUANTILE},
            "divergence": {"margin": MARGINS["divergence"]},
            "drift": {"margin": MARGINS["drift"]},
        },
    }
    spec = parse_spec(
        {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": analysis}}
    ).rollout.analysis
    results = []
    restart_at = len(kept) // 3
    for i in range(n):
        totals = dict.fromkeys(("canary", "stable"))
        previous: dict[str, Any] = {}
        evidence: dict[str, Any] | None = None
        step_look, step, outcome = 0, 0, (0, 0)
        for look, s in enumerate(kept):
            windows = {}
            for side, (nn, e, c4, lat, pred, feat) in {
                "canary": (s.n_c, s.e_c, s.c4_c, s.lat_c, s.pred_c, s.feat_c),
                "stable": (s.n_s, s.e_s, s.c4_s, s.lat_s, s.pred_s, s.feat_s),
            }.items():
                add = {
                    "ok": nn[i] - e[i] - c4[i],
                    "err": e[i],
                    "c4": c4[i],
                    "lat": lat[i],
                    "pred": pred[i],
                    "feat": feat[i] if side == "canary" else feat[i][:0],
                }
                restarted = side == "canary" and look == restart_at
                old = totals[side]
                if old is None or restarted:
                    old = {k: (0 if np.isscalar(v) else np.zeros_like(v)) for k, v in add.items()}
                totals[side] = {k: old[k] + v for k, v in add.items()}
                scrape = parse_exposition(_exposition(side, totals[side]))
                before = previous.get(side) or parse_exposition(
                    _exposition(
                        side,
                        {k: (0 if np.isscalar(v) else np.zeros_like(v)) for k, v in add.items()},
                    )
                )
                deltas, _ = counter_deltas(before, scrape)
                previous[side] = scrape
                windows[side] = window_from_samples([deltas], [scrape.gauges])
            result = evaluate(windows["canary"], windows["stable"], spec, _NOW, (), evidence)
            evidence = json.loads(json.dumps(result.evidence))
            step_look += 1
            if result.verdict == "fail":
                outcome = (1, look + 1)
                break
            if result.verdict == "pass" and step_look >= PAUSE_LOOKS:
                step, step_look = step + 1, 0
                if step >= len(WEIGHTS):
                    outcome = (3, look + 1)
                    break
            elif step_look >= DEADLINE_LOOKS:
                outcome = (2, look + 1)
                break
        results.append(outcome)
    return results


from datetime import UTC, datetime  # noqa: E402

_NOW = datetime(2026, 3, 1, tzinfo=UTC)


# --- the table ------------------------------------------------------------------------------------


def cells(quick: bool) -> list[Cell]:
    """The benchmark's cells (`--quick`: one of each kind)."""
    aa = [
        Cell("clf 2 classes, 5 rps", "A/A", bins=2, rps=5, real=40),
        Cell("clf 3 classes, 50 rps", "A/A", bins=3, rps=50, real=40),
        Cell("clf 10 classes, 500 rps", "A/A", bins=10, rps=500),
        Cell("reg 10 bins, 5 rps", "A/A", bins=10, regression=True, rps=5),
        Cell("reg 20 bins, 50 rps", "A/A", bins=20, regression=True, rps=50),
        Cell(
            "reg 20 bins, 500 rps, 64 features",
            "A/A",
            bins=20,
            regression=True,
            rps=500,
            features=64,
        ),
        Cell("clf 3, 50 rps, shifting base rates", "A/A", rps=50, shift=True, real=40),
        Cell("clf 3, 500 rps, shifting base rates", "A/A", rps=500, shift=True),
        Cell("clf 3, 50 rps, sticky clients", "A/A", rps=50, cluster=True),
        Cell("clf 3, 500 rps, sticky clients", "A/A", rps=500, cluster=True),
        Cell("clf 3, 50 rps, 2 % malformed requests", "A/A", rps=50, client_errors=0.02),
    ]
    margin = [
        Cell("5xx exactly +0.5 pp, 500 rps", "margin", rps=500, error_delta=MARGINS["error"]),
        Cell("latency exactly x1.14, 500 rps", "margin", rps=500, latency_ratio=MARGINS["ratio"]),
        Cell("a class exactly 2 pp moved, 500 rps", "margin", rps=500, prediction="at-margin"),
    ]
    ab = (
        [Cell(f"5xx +1 pp, {r} rps", "A/B", rps=r, error_delta=0.01) for r in (5, 50, 500)]
        + [Cell(f"latency x1.3, {r} rps", "A/B", rps=r, latency_ratio=1.3) for r in (5, 50, 500)]
        + [
            Cell(f"20 % rows to one class, {r} rps", "A/B", rps=r, prediction="one-class-20")
            for r in (5, 50)
        ]
        + [
            Cell(
                f"5 % mass moved (reg 10), {r} rps",
                "A/B",
                bins=10,
                regression=True,
                rps=r,
                prediction="mass-5",
            )
            for r in (50, 500)
        ]
        + [Cell(f"input feature +1 sd, {r} rps", "A/B", rps=r, feature_shift=1.0) for r in (5, 50)]
    )
    if quick:
        return [replace(aa[0], real=5), aa[6], margin[0], ab[1], ab[4]]
    return aa + margin + ab


def _median(values: np.ndarray) -> str:
    return f"{np.median(values):.0f}" if values.size else "-"


def row(cell: Cell, new: Outcome, old: Outcome) -> str:
    n = new.ended.size
    cols = []
    for out in (new, old):
        k = int((out.ended == 1).sum())
        rate = k / n
        hit = out.ended == 1
        if cell.kind == "A/B":
            what = f"{100 * rate:5.1f} %"
        else:
            what = f"{100 * rate:5.2f} % (≤{100 * cp_upper(k, n):.2f})"
        detail = (
            f"{what:>17} pass {100 * np.mean(out.ended == 3):5.1f} % deadline "
            f"{100 * np.mean(out.ended == 2):5.1f} %"
        )
        if cell.kind == "A/B":
            detail += (
                f"  n {_median(out.requests[hit]):>6}  {_median(out.look[hit] * INTERVAL):>4} s"
            )
        cols.append(detail)
    return f"| {cell.kind:6} | {cell.name:38} | " + " | ".join(cols) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="5 cells of 200 rollouts")
    args = parser.parse_args()
    sims = 200 if args.quick else args.sims
    m = {k: f"{100 * v:g}" for k, v in MARGINS.items()}
    print(
        f"{sims} rollouts per cell, alpha {args.alpha}, margins: 5xx +{m['error']} pp, latency "
        f"x{MARGINS['ratio']:.3f} at p99, prediction bins ±{m['divergence']} pp, input bins "
        f"±{m['drift']} pp; steps 10/30/50 % x 2 min, 10 s interval, deadline 4 min per step"
    )
    new, old = "new gates: FR or power, pass, deadline, n, time", "old gates (README thresholds)"
    print(f"| cell | stream | {new} | {old} |")
    print("|---|---|---|---|")
    started = time.perf_counter()
    failures = []
    agreement = []
    for i, cell in enumerate(cells(args.quick)):
        new, old, kept = run(cell, sims, args.alpha, seed=1000 + i)
        print(row(cell, new, old), flush=True)
        k = int((new.ended == 1).sum())
        if cell.kind != "A/B" and cp_upper(k, sims) > args.alpha:
            failures.append(cell.name)
        if cell.real:
            real = real_path(cell, kept, min(cell.real, sims), args.alpha)
            same = sum(
                (o, lk) == (int(new.ended[j]), int(new.look[j])) for j, (o, lk) in enumerate(real)
            )
            agreement.append(f"{cell.name}: {same}/{len(real)}")
    print(
        f"real path (exposition text -> parse -> verdicts, same outcome at the same analysis): "
        f"{'; '.join(agreement) or '-'}"
    )
    print(f"cells whose false-rollback upper bound exceeds alpha: {failures or 'none'}")
    import bench_routing  # beside this file (benchmarks/ is on sys.path when run as a script)

    print("\n".join(bench_routing.table(sims)))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
