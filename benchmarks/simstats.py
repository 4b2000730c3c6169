"""Figures the gate simulations report about themselves (imported from beside this file)."""

from __future__ import annotations

from scipy.stats import beta


def cp_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """Clopper-Pearson upper bound of a rate seen `k` times in `n` simulated rollouts."""
    return 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))
