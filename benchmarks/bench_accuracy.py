"""Simulated rollouts judged by the accuracy and error gates: false rollbacks, power, label delay.

Usage: ``python benchmarks/bench_accuracy.py [--sims 2000] [--alpha 0.05] [--quick]``

Every cell simulates `--sims` rollouts of 3 steps (canary weight 10/30/50 %, at least 2 minutes
each, an analysis every 10 s, a 4-minute progress deadline per step, evidence accumulated over
the rollout as `status.canary.evidence` does). ``rps`` is the ModelDeployment's whole traffic;
the realised split jitters ±30 % around the weight. A share `labelled` of the predictions gets
ground truth back, after a delay drawn per class (exponential, with the class's mean). Two
classes: ``fast`` (30 % of rows; labels after 15 s on average) and ``slow`` (70 %; 240 s); the
model is right on 70 % of ``fast`` rows and 95 % of ``slow`` ones (the stable's accuracy 87.5 %).

Two ways to read the labels, the same sequential test (`roost_operator.sequential`, the code
`roost_operator.quality_gates` runs) on each:

- **horizon** (roost): each interval judges the predictions that became the 60-second label
  horizon old in it, with the labels that came within the horizon — what the pods'
  ``roost_quality_horizon_*`` counters hold;
- **naive**: each interval judges the labels that *arrived* in it (what
  ``roost_labelled_predictions_total`` / ``roost_correct_predictions_total`` increase by).

Regressor cells run the error gate (share of |error| above the stable's median bucket, canary
minus stable) over the pods' real error buckets, half-normal errors.

Columns: ``FR`` false rollbacks (canary within the margin) with the one-sided 95 %
Clopper-Pearson upper bound, ``power`` (rolled back by the gate), ``pass`` promoted by passing,
``deadline`` ended by the deadline policy, and the median seconds to the rollback. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtr

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("operator", "serving")]

from roost_operator import sequential as sq  # noqa: E402
from roost_serving.quality import ERROR_BUCKETS  # noqa: E402
from simstats import cp_upper  # noqa: E402

WEIGHTS = (0.10, 0.30, 0.50)
INTERVAL = 10.0
PAUSE_LOOKS = 12  # 2 minutes
DEADLINE_LOOKS = 24  # 4 minutes per step
HORIZON = 60.0
SHARE = np.asarray([0.3, 0.7])  # fast-label class, slow-label class
DELAY = np.asarray([15.0, 240.0])  # mean label delay per class, seconds
ACCURACY = np.asarray([0.70, 0.95])
MAX_LAG = 60  # label delays are simulated up to 10 minutes (later labels never arrive)


@dataclass(frozen=True)
class Cell:
    kind: str  # "A/A", "margin", "A/B"
    name: str
    rps: float
    labelled: float = 1.0
    drop: float = 0.0  # canary accuracy = stable's - drop (each class alike)
    regressor: bool = False
    sigma: float = 1.0  # canary error scale / stable's (regressors)


def _lag_probs() -> np.ndarray:
    """P(a label arrives in interval offset k) per class (rows), k = 0..MAX_LAG-1."""
    edges = np.arange(MAX_LAG + 1) * INTERVAL
    cdf = 1 - np.exp(-edges[None, :] / DELAY[:, None])
    probs: np.ndarray = np.diff(cdf, axis=1)
    return probs


def _error_probs(sigma: float) -> np.ndarray:
    """Half-normal |error| (scale sigma x 0.1) over the pods' error buckets (+inf last)."""
    bounds = np.asarray([*ERROR_BUCKETS, np.inf])
    cdf = 2 * ndtr(bounds / (0.1 * sigma)) - 1
    probs: np.ndarray = np.diff(np.concatenate([[0.0], cdf]))
    return probs


class Rollouts:
    """The state of `sims` rollouts of one cell, one gate reading (horizon or naive)."""

    def __init__(self, sims: int, cell: Cell, alpha: float) -> None:
        self.cell, self.alpha, self.sims = cell, alpha, sims
        self.state = sq.DiffState.zeros((sims, 1))
        self.step = np.zeros(sims, dtype=np.int64)
        self.looks = np.zeros(sims, dtype=np.int64)
        self.outcome = np.zeros(sims, dtype=np.int8)  # 0 running, -1 rollback, 1 pass, 2 deadline
        self.when = np.full(sims, np.nan)
        self.past = np.zeros((sims, len(ERROR_BUCKETS) + 1))  # stable's error buckets so far

    def weights(self) -> np.ndarray:
        return np.asarray(WEIGHTS)[np.minimum(self.step, len(WEIGHTS) - 1)]

    def judge(self, x_c: np.ndarray, n_c: np.ndarray, x_s: np.ndarray, n_s: np.ndarray,
              t: float) -> None:  # fmt: skip
        running = self.outcome == 0
        self.state = sq.update(self.state, x_c[:, None], n_c[:, None], x_s[:, None], n_s[:, None])
        margin = self.cell_margin()
        code, _, _ = sq.judge_many(self.state, self.alpha, margin)
        self.looks += running
        fail = running & (code == sq.FAIL)
        self.outcome[fail], self.when[fail] = -1, t
        ok = running & ~fail & (code == sq.PASS) & (self.looks >= PAUSE_LOOKS)
        self.step[ok] += 1
        self.looks[ok] = 0
        done = ok & (self.step >= len(WEIGHTS))
        self.outcome[done] = 1
        late = running & ~fail & ~ok & (self.looks >= DEADLINE_LOOKS)
        self.outcome[late] = 2

    def cell_margin(self) -> float:
        return 0.05 if self.cell.regressor else 0.02


def simulate(cell: Cell, sims: int, alpha: float, seed: int, reading: str) -> Rollouts:
    """Rollouts of one cell judged on one reading of the labels (``horizon`` or ``naive``);
    the traffic split follows that reading's own steps."""
    rng = np.random.default_rng(seed)
    lag = _lag_probs()
    p_label_h = cell.labelled * (1 - np.exp(-HORIZON / DELAY))  # label within the horizon
    h_lag = int(HORIZON // INTERVAL)
    roll = Rollouts(sims, cell, alpha)
    steps = len(WEIGHTS) * DEADLINE_LOOKS + h_lag + 1
    # Labels in flight for the naive reading: [arm, class, right/wrong, sims, future interval].
    pending = np.zeros((2, 2, 2, sims, steps + MAX_LAG))
    # Horizon cohorts waiting to mature: [interval] -> (x_c, n_c, x_s, n_s) arrays.
    cohorts: list[tuple[np.ndarray, ...]] = []
    acc = {"canary": np.clip(ACCURACY - cell.drop, 0, 1), "stable": ACCURACY}
    errs = {"canary": _error_probs(cell.sigma), "stable": _error_probs(1.0)}
    for i in range(steps):
        t = (i + 1) * INTERVAL
        jitter = rng.uniform(0.7, 1.3, sims)
        w = np.clip(roll.weights() * jitter, 0.01, 0.99)
        n = {"canary": rng.poisson(cell.rps * INTERVAL * w),
             "stable": rng.poisson(cell.rps * INTERVAL * (1 - w))}  # fmt: skip
        cohort: list[np.ndarray] = []
        for a, arm in enumerate(("canary", "stable")):
            per_class = rng.multinomial(n[arm], SHARE)  # (sims, 2)
            if cell.regressor:
                lab = rng.binomial(per_class.sum(axis=1), cell.labelled)
                buckets = rng.multinomial(lab, errs[arm])
                # Both arms against the stable's median bucket of *earlier* intervals.
                edge = _median_edge(roll.past)
                if arm == "stable":
                    roll.past += buckets
                known = edge >= 0
                cohort += [np.where(known, _above(buckets, edge), 0.0), np.where(known, lab, 0.0)]
                continue
            lab_h = rng.binomial(per_class, p_label_h)  # labelled within the horizon
            right_h = rng.binomial(lab_h, acc[arm])
            cohort += [(lab_h - right_h).sum(axis=1).astype(float), lab_h.sum(axis=1) * 1.0]
            if reading == "horizon":
                continue
            # Naive: every label (horizon or not) arrives after its own delay.
            lab = rng.binomial(per_class, cell.labelled)
            right = rng.binomial(lab, acc[arm])
            for c in range(2):
                for r, count in enumerate((right[:, c], lab[:, c] - right[:, c])):
                    pending[a, c, r, :, i : i + MAX_LAG] += rng.multinomial(count, lag[c])
        cohorts.append(tuple(cohort))
        if reading == "horizon" and i >= h_lag:  # predicted h_lag intervals ago: matures now
            x_c, n_c, x_s, n_s = cohorts[i - h_lag]
            roll.judge(x_c, n_c, x_s, n_s, t)
        elif reading == "naive":
            arrived = pending[:, :, :, :, i].sum(axis=1)  # [arm, right/wrong, sims]
            roll.judge(arrived[0, 1], arrived[0].sum(axis=0),
                       arrived[1, 1], arrived[1].sum(axis=0), t)  # fmt: skip
    roll.outcome[roll.outcome == 0] = 2
    return roll


def _median_edge(past: np.ndarray) -> np.ndarray:
    """Index of the stable's median bucket so far (-1 when none yet)."""
    cum = np.cumsum(past, axis=1)
    total = cum[:, -1:]
    idx = np.argmax(cum >= 0.5 * np.maximum(total, 1e-12), axis=1)
    return np.where(total[:, 0] > 0, idx, -1)


def _above(buckets: np.ndarray, edge: np.ndarray) -> np.ndarray:
    cols = np.arange(buckets.shape[1])[None, :]
    above: np.ndarray = (buckets * (cols > edge[:, None])).sum(axis=1).astype(float)
    return above


def cells(quick: bool) -> list[Cell]:
    out = [
        Cell("A/A", "clf, 5 rps, all labelled", 5),
        Cell("A/A", "clf, 50 rps, all labelled", 50),
        Cell("A/A", "clf, 500 rps, all labelled", 500),
        Cell("A/A", "clf, 500 rps, 20 % labelled", 500, labelled=0.2),
        Cell("A/A", "clf, 5000 rps, all labelled", 5000),
        Cell("margin", "clf, 500 rps, exactly 2 pp less accurate", 500, drop=0.02),
        Cell("A/B", "clf, 50 rps, 5 pp less accurate", 50, drop=0.05),
        Cell("A/B", "clf, 50 rps, 10 pp less accurate", 50, drop=0.10),
        Cell("A/B", "clf, 500 rps, 5 pp less accurate", 500, drop=0.05),
        Cell("A/B", "clf, 500 rps, 20 % labelled, 5 pp", 500, labelled=0.2, drop=0.05),
        Cell("A/A", "reg, 50 rps, all labelled", 50, regressor=True),
        Cell("A/A", "reg, 500 rps, all labelled", 500, regressor=True),
        Cell("A/B", "reg, 50 rps, errors x1.3", 50, regressor=True, sigma=1.3),
        Cell("A/B", "reg, 500 rps, errors x1.3", 500, regressor=True, sigma=1.3),
    ]
    return [out[i] for i in (1, 2, 5, 8, 13)] if quick else out


def _cols(cell: Cell, r: Rollouts) -> str:
    n = r.sims
    fails = int((r.outcome == -1).sum())
    passes, deadline = (r.outcome == 1).mean(), (r.outcome == 2).mean()
    if cell.kind == "A/B":
        med = np.nanmedian(r.when) if fails else float("nan")
        head = f"{100 * fails / n:7.1f} %       "
        tail = f"  {med:4.0f} s" if fails else "     - s"
    else:
        head = f"{100 * fails / n:6.2f} % (≤{100 * cp_upper(fails, n):.2f})"
        tail = ""
    return f"{head} pass {100 * passes:5.1f} % deadline {100 * deadline:5.1f} %{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="5 cells of 200 rollouts")
    args = parser.parse_args()
    sims = 200 if args.quick else args.sims
    started = time.perf_counter()
    print(f"{sims} rollouts per cell, alpha {args.alpha}, horizon {HORIZON:g} s, "
          "margins: accuracy 2 pp, error share 5 pp")  # fmt: skip
    print("| cell | stream | horizon (roost): FR or power, pass, deadline, time "
          "| naive (labels as they arrive) |")  # fmt: skip
    print("|---|---|---|---|")
    for k, cell in enumerate(cells(args.quick)):
        horizon = simulate(cell, sims, args.alpha, 1000 + k, "horizon")
        naive = "-"
        if not cell.regressor:
            naive = _cols(cell, simulate(cell, sims, args.alpha, 1000 + k, "naive"))
        print(f"| {cell.kind:6} | {cell.name:42} | {_cols(cell, horizon)} | {naive} |", flush=True)
    print(f"runtime {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
