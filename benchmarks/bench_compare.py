"""The divergence gate after a retrain: canary and stable judged on the stable's output bins.

Usage: ``python benchmarks/bench_compare.py [--sims 2000]``.

Each rollout: 3 steps (canary weight 10/30/50 %, 2 minutes each, an analysis every 10 s: 36
looks), the realised split jittering ±30 % around the weight. The stable regressor's profile
bins its predictions on the deciles of N(0, 1); the retrained canary's profile has other edges
(the deciles of N(0.5, 1.3), its own training data). Both arms count their predictions on the
stable's edges (``roost_prediction_compare_total``, the runtime section ``compare``), and the
divergence gate judges those counts exactly as `roost_operator.verdicts` does (per bin, two
sided against ±margin, `alpha` 0.05, margin 5 pp), vectorised over rollouts. Side by side:

- *own bins*: the same predictions compared bin i against bin i of each arm's own edges (what
  comparing ``roost_predictions_total`` across a retrain would do);
- *before*: the gate in observe mode whenever the edges differ (never judged: power 0).

Prints false rollbacks with their one-sided 95 % Clopper-Pearson upper bound, power and the
median time to detect. Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from roost_operator import sequential as sq
from simstats import cp_upper

ALPHA, MARGIN, INTERVAL = 0.05, 0.05, 10.0
WEIGHTS = (0.1, 0.3, 0.5)
LOOKS_PER_STEP = 12
STABLE_EDGES = norm.ppf(np.arange(1, 10) / 10)
RETRAINED_EDGES = norm.ppf(np.arange(1, 10) / 10, loc=0.5, scale=1.3)


def shares(edges: np.ndarray, shift: float = 0.0, moved: float = 0.0) -> np.ndarray:
    """Bin shares of N(shift, 1) predictions on `edges`; `moved` of the mass into bin 0."""
    cdf = norm.cdf(np.concatenate([[-np.inf], edges, [np.inf]]), loc=shift)
    p = np.diff(cdf)
    if moved:
        p = p * (1 - moved)
        p[0] += moved
    return p


def simulate(
    sims: int, rps: float, canary: np.ndarray, stable: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout: whether the gate failed it, and at which look (-1: never)."""
    rng = np.random.default_rng(seed)
    k = stable.size
    state = sq.DiffState.zeros((sims, k))
    failed = np.full(sims, -1)
    look = 0
    for w in WEIGHTS:
        for _ in range(LOOKS_PER_STEP):
            n_c = rng.poisson(rps * INTERVAL * (w / WEIGHTS[0]) * rng.uniform(0.7, 1.3, sims))
            n_s = rng.poisson(n_c * (1 - w) / w)
            x_c = rng.multinomial(n_c, canary)
            x_s = rng.multinomial(n_s, stable)
            rows_c = np.repeat(n_c[:, None], k, 1)
            rows_s = np.repeat(n_s[:, None], k, 1)
            state = sq.update(state, x_c, rows_c, x_s, rows_s)
            code, _, _ = sq.judge_many(state, ALPHA, MARGIN, -MARGIN)
            failed = np.where((failed < 0) & (code == sq.FAIL), look, failed)
            look += 1
    return failed >= 0, failed


def _cell(hit: np.ndarray, at: np.ndarray, null: bool) -> str:
    k, n = int(hit.sum()), hit.size
    rate = f"{100 * k / n:.2f} % (≤{100 * cp_upper(k, n):.2f})" if null else f"{100 * k / n:.1f} %"
    when = f", {np.median(at[hit] + 1) * INTERVAL:.0f} s" if k and not null else ""
    return rate + when


def table(sims: int) -> list[str]:
    """Markdown rows: A/A after a retrain, exactly at the margin, and real shifts."""
    rows = [
        f"divergence after a retrain, alpha {ALPHA:g}, margin {100 * MARGIN:g} pp, {sims} "
        "rollouts per cell (false rollbacks with upper bound; power, median time to detect):",
        "| cell | stable's bins (new) | own bins | before (observe) |",
        "|---|---|---|---|",
    ]
    cells = [
        ("A/A retrained, same predictions, 5 rps", 5.0, 0.0, 0.0, True),
        ("A/A retrained, same predictions, 50 rps", 50.0, 0.0, 0.0, True),
        ("one bin +5 pp (at the margin), 50 rps", 50.0, 0.0, 0.05, True),
        ("predictions +0.5 sd, 5 rps", 5.0, 0.5, 0.0, False),
        ("predictions +0.5 sd, 50 rps", 50.0, 0.5, 0.0, False),
        ("10 % of predictions to one bin, 50 rps", 50.0, 0.0, 0.10, False),
    ]
    stable = shares(STABLE_EDGES)
    for i, (name, rps, shift, moved, null) in enumerate(cells):
        on_stable = simulate(sims, rps, shares(STABLE_EDGES, shift, moved), stable, 3000 + i)
        own = simulate(sims, rps, shares(RETRAINED_EDGES, shift, moved), stable, 4000 + i)
        before = "0 %" if not null else "0.00 % (never judged)"
        rows.append(f"| {name} | {_cell(*on_stable, null)} | {_cell(*own, null)} | {before} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    args = parser.parse_args()
    print("\n".join(table(args.sims)))


if __name__ == "__main__":
    main()
