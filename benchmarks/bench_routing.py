"""The routing check (sample-ratio mismatch of inputs) on simulated rollouts.

Usage: ``python benchmarks/bench_routing.py [--sims 2000]`` (also run at the end of
``bench_gates.py``).

Each rollout: 3 steps (canary weight 10/30/50 %, 2 minutes each, an analysis every 10 s: 36
looks), the realised split jittering ±30 % around the weight, 20 input features with decile
bins, canary and stable rows drawn from the same input distribution (A/A: random routing) or
with one bin of one feature 5 points more frequent on the canary (a router that sends one kind
of client to the canary). The check is `roost_operator.sequential` at `ROUTING_ALPHA`, exactly
as `roost_operator.routing.check_routing` runs it (per bin, two-sided against 0, Bonferroni
over bins), vectorised over rollouts. Prints the false-pause rate with its one-sided 95 %
Clopper-Pearson upper bound, the power and the median time to the pause. Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from roost_operator import sequential as sq
from roost_operator.routing import ROUTING_ALPHA
from simstats import cp_upper

FEATURES, BINS, INTERVAL = 20, 10, 10.0
WEIGHTS = (0.1, 0.3, 0.5)
LOOKS_PER_STEP = 12


def simulate(sims: int, rps: float, skew: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout: whether it paused, and at which look (-1: never)."""
    rng = np.random.default_rng(seed)
    probs_s = np.full((FEATURES, BINS), 1 / BINS)
    probs_c = probs_s.copy()
    probs_c[0, 0] += skew
    probs_c[0, 1:] -= skew / (BINS - 1)
    state = sq.DiffState.zeros((sims, FEATURES * BINS))
    paused = np.full(sims, -1)
    look = 0
    for w in WEIGHTS:
        for _ in range(LOOKS_PER_STEP):
            n_c = rng.poisson(rps * INTERVAL * (w / WEIGHTS[0]) * rng.uniform(0.7, 1.3, sims))
            n_s = rng.poisson(n_c * (1 - w) / w)
            x_c = rng.multinomial(np.repeat(n_c[:, None], FEATURES, 1), probs_c)
            x_s = rng.multinomial(np.repeat(n_s[:, None], FEATURES, 1), probs_s)
            rows_c = np.repeat(n_c[:, None], FEATURES * BINS, 1)
            rows_s = np.repeat(n_s[:, None], FEATURES * BINS, 1)
            state = sq.update(state, x_c.reshape(sims, -1), rows_c, x_s.reshape(sims, -1), rows_s)
            code, _, _ = sq.judge_many(state, ROUTING_ALPHA, 0.0, 0.0)
            paused = np.where((paused < 0) & (code == sq.FAIL), look, paused)
            look += 1
    return paused >= 0, paused


def table(sims: int) -> list[str]:
    """Markdown rows: A/A false pauses and skew power at 5 and 50 canary requests per second."""
    rows = [
        f"routing check, alpha {ROUTING_ALPHA:g}, {sims} rollouts per cell, {FEATURES} features:",
        "| cell | paused | median time to pause |",
        "|---|---|---|",
    ]
    for i, (name, rps, skew) in enumerate(
        [
            ("A/A random routing, 5 rps", 5.0, 0.0),
            ("A/A random routing, 50 rps", 50.0, 0.0),
            ("one bin +5 pp on the canary, 5 rps", 5.0, 0.05),
            ("one bin +5 pp on the canary, 50 rps", 50.0, 0.05),
        ]
    ):
        hit, at = simulate(sims, rps, skew, seed=2000 + i)
        k = int(hit.sum())
        if skew == 0:
            shown = f"{100 * k / sims:.2f} % (≤{100 * cp_upper(k, sims):.2f})"
        else:
            shown = f"{100 * k / sims:.1f} %"
        when = f"{np.median(at[hit] + 1) * INTERVAL:.0f} s" if k else "-"
        rows.append(f"| {name} | {shown} | {when} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    args = parser.parse_args()
    print("\n".join(table(args.sims)))


if __name__ == "__main__":
    main()
