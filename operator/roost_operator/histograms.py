"""Cumulative histogram buckets (Prometheus ``le`` bounds): a quantile's edge and the count
above a bound, shared by the latency gate and the regressors' error gate."""

from __future__ import annotations

import math
from collections.abc import Mapping


def quantile_edge(buckets: Mapping[float, float], q: float) -> float | None:
    """Smallest bucket bound holding at least `q` of the observations (None when empty)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    return next((b for b in bounds if buckets[b] >= q * total), None)


def count_above(buckets: Mapping[float, float], bound: float) -> float:
    """Observations above `bound` (a bucket bound, up to float rounding) in cumulative buckets."""
    total = buckets.get(math.inf, 0.0)
    at = max((c for b, c in buckets.items() if b <= bound * (1 + 1e-6)), default=0.0)
    return max(total - at, 0.0)
