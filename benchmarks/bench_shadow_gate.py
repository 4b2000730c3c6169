"""Simulated shadow steps judged by `gates.shadowDisagreement`: false rollbacks and power.

Usage: ``python benchmarks/bench_shadow_gate.py [--sims 4000] [--alpha 0.05] [--quick]``

Every cell simulates `--sims` shadow steps (``{shadow: 100, pause: 2m}``, an analysis every
10 s, a 4-minute progress deadline, `onInconclusive: rollback`, `minRequests` 50 compared
copies). Each interval the stable pods compare ``rps x 10`` copies of one row each with the
canary; each row disagrees with probability `rate` (in clustered cells the rate itself jitters
from interval to interval: a Beta with the same mean and a coefficient of variation of 1, as
bursts of one kind of request give). The gate is `roost_operator.sequential` — the very code
`roost_operator.shadow.judge_shadow` runs — vectorised over steps; the first 25 steps of every
cell also go through `judge_shadow` itself (evidence round-tripped through JSON), and the
``same`` column says how many of them ended alike at the same analysis.

Columns: ``FR`` false rollbacks (cells within the margin: the gate failed although the canary
disagrees at most ``maxRate``), with the one-sided 95 % Clopper-Pearson upper bound;
``power`` (cells above the margin: rolled back by the gate); ``pass`` the step passed;
``deadline`` ended by the deadline without a verdict; median seconds to the rollback and to
the pass. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from scipy.stats import beta

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("operator", "serving")]

from roost_operator import sequential as sq  # noqa: E402
from roost_operator.shadow import ShadowCounts, judge_shadow  # noqa: E402
from roost_operator.spec import parse_spec  # noqa: E402

INTERVAL = 10.0
PAUSE_LOOKS = 12  # 2 minutes
DEADLINE_LOOKS = 24  # 4 minutes
MIN_COPIES = 50
REAL = 25
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cell:
    """One row of the table."""

    name: str
    rate: float
    rps: float
    max_rate: float = 0.05
    clustered: bool = False

    @property
    def within(self) -> bool:
        """Within the margin: a rollback would be a false one."""
        return self.rate <= self.max_rate


CELLS = (
    Cell("identical model", 0.0, 5),
    Cell("identical model", 0.0, 50),
    Cell("1 % disagree", 0.01, 5),
    Cell("1 % disagree", 0.01, 50),
    Cell("at the margin (5 %)", 0.05, 5),
    Cell("at the margin (5 %)", 0.05, 50),
    Cell("at the margin, clustered", 0.05, 50, clustered=True),
    Cell("8 % disagree", 0.08, 50),
    Cell("10 % disagree", 0.10, 5),
    Cell("10 % disagree", 0.10, 50),
    Cell("20 % disagree", 0.20, 5),
    Cell("one-class model (60 %)", 0.60, 5),
    Cell("one-class model (60 %)", 0.60, 50),
)


def draw(cell: Cell, rng: np.random.Generator, sims: int) -> tuple[np.ndarray, np.ndarray]:
    """(disagreements, rows) per simulation and look, shape (sims, DEADLINE_LOOKS)."""
    n = rng.poisson(cell.rps * INTERVAL, size=(sims, DEADLINE_LOOKS)).astype(float)
    p = np.full(n.shape, cell.rate)
    if cell.clustered and 0 < cell.rate < 1:
        # Beta with mean `rate` and coefficient of variation 1: a + b = (1 - rate) / rate - 1.
        total = (1 - cell.rate) / cell.rate - 1
        p = rng.beta(cell.rate * total, (1 - cell.rate) * total, size=n.shape)
    x = rng.binomial(n.astype(int), p).astype(float)
    return x, n


def simulate(cell: Cell, x: np.ndarray, n: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    """Outcome code (fail -1, pass 1, deadline 0) and the look it happened at, per simulation."""
    sims = x.shape[0]
    state = sq.DiffState.zeros((sims, 1))
    outcome = np.full(sims, 0, dtype=int)
    at = np.full(sims, DEADLINE_LOOKS, dtype=int)
    open_ = np.ones(sims, dtype=bool)
    copies = np.zeros(sims)
    for look in range(DEADLINE_LOOKS):
        state = sq.update(state, x[:, look : look + 1], n[:, look : look + 1], None, None, [0.0])
        copies += n[:, look]
        code, _, _ = sq.judge_many(state, alpha, cell.max_rate)
        fail = open_ & (code == sq.FAIL)
        # The step ends with a pass once its pause is over and enough copies were compared.
        ok = open_ & (code == sq.PASS) & (copies >= MIN_COPIES) & (look + 1 >= PAUSE_LOOKS)
        outcome[fail], at[fail] = -1, look + 1
        outcome[ok], at[ok] = 1, look + 1
        open_ &= ~(fail | ok)
    return {"outcome": outcome, "at": at}


def real_path(cell: Cell, x: np.ndarray, n: np.ndarray, alpha: float) -> list[tuple[int, int]]:
    """The first simulations through `judge_shadow`, evidence through JSON: (outcome, look)."""
    gates = {"shadowDisagreement": {"maxRate": cell.max_rate}}
    rollout = {
        "steps": [{"shadow": 100, "pause": "2m"}, {"weight": 50}],
        "analysis": {"alpha": alpha, "minRequests": MIN_COPIES, "gates": gates},
    }
    spec = parse_spec({"model": {"uri": "file:///m.onnx"}, "rollout": rollout})
    analysis = spec.rollout.analysis
    out = []
    for i in range(min(REAL, x.shape[0])):
        evidence = None
        result = (0, DEADLINE_LOOKS)
        for look in range(DEADLINE_LOOKS):
            counts = ShadowCounts(compared=n[i, look], rows=n[i, look], disagreements=x[i, look])
            now = T0 + timedelta(seconds=INTERVAL * look)
            judged = judge_shadow(analysis, evidence, counts, now)
            evidence = json.loads(json.dumps(judged.evidence))
            if judged.verdict == "fail":
                result = (-1, look + 1)
                break
            if judged.verdict == "pass" and look + 1 >= PAUSE_LOOKS:
                result = (1, look + 1)
                break
        out.append(result)
    return out


def upper95(k: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of k/n."""
    return 1.0 if k >= n else float(beta.ppf(0.95, k + 1, n - k))


def main() -> None:
    """Run every cell and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="500 simulations per cell")
    args = parser.parse_args()
    sims = 500 if args.quick else args.sims
    rng = np.random.default_rng(12)
    started = time.monotonic()
    print(
        f"bench_shadow_gate: {sims} shadow steps per cell, alpha {args.alpha}, maxRate 5 %, "
        f"analysis every {INTERVAL:g} s, pause {PAUSE_LOOKS * INTERVAL:g} s, deadline "
        f"{DEADLINE_LOOKS * INTERVAL:g} s"
    )
    header = (
        f"{'cell':<28} {'copies/s':>8} {'FR':>7} {'FR<=':>7} {'power':>7} {'pass':>7} "
        f"{'deadline':>8} {'t fail':>7} {'t pass':>7} {'same':>7}"
    )
    print(header)
    for cell in CELLS:
        x, n = draw(cell, rng, sims)
        result = simulate(cell, x, n, args.alpha)
        outcome, at = result["outcome"], result["at"]
        fails = int((outcome == -1).sum())
        passes, deadlines = (outcome == 1).mean(), (outcome == 0).mean()
        t_fail = f"{np.median(at[outcome == -1]) * INTERVAL:6.0f}s" if fails else f"{'-':>7}"
        t_pass = f"{np.median(at[outcome == 1]) * INTERVAL:6.0f}s" if passes else f"{'-':>7}"
        real = real_path(cell, x, n, args.alpha)
        same = sum(
            1 for i, r in enumerate(real) if r == (int(outcome[i]), int(min(at[i], DEADLINE_LOOKS)))
        )
        fr = f"{fails / sims:7.2%}" if cell.within else f"{'-':>7}"
        bound = f"{upper95(fails, sims):7.2%}" if cell.within else f"{'-':>7}"
        power = f"{fails / sims:7.1%}" if not cell.within else f"{'-':>7}"
        print(
            f"{cell.name:<28} {cell.rps:8g} {fr} {bound} {power} {passes:7.1%} {deadlines:8.1%} "
            f"{t_fail} {t_pass} {same:>3}/{len(real)}"
        )
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
