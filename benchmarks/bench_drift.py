"""Per-batch cost of drift tracking (`DriftMonitor.observe`) and of a /metrics scrape.

Usage: ``python benchmarks/bench_drift.py [--seconds 1.0]``

Uses a 20-feature numeric profile (decile edges, as `roost profile` builds) with a 3-class
prediction, a 2000-row window (the serving default), and batches of 1, 8 and 32 rows as the
dynamic batcher produces them.  Prints microseconds per call and per row; not a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from roost_serving.drift import histogram, quantile_edges
from roost_serving.monitor import DriftMonitor
from roost_serving.profile import ClassificationPrediction, NumericFeature, Profile

N_FEATURES = 20


def make_profile(rng: np.random.Generator) -> Profile:
    """A profile like `roost profile` builds for 20 continuous features."""
    reference = rng.normal(size=(5000, N_FEATURES))
    features = []
    for i in range(N_FEATURES):
        edges = quantile_edges(reference[:, i])
        counts = histogram(reference[:, i], edges)
        freqs = tuple(float(c) / counts.sum() for c in counts)
        features.append(NumericFeature(f"f{i}", "X", i, tuple(float(e) for e in edges), freqs))
    pred = ClassificationPrediction("label", ("0", "1", "2"), (0.3, 0.3, 0.4))
    return Profile(rows=5000, features=tuple(features), prediction=pred)


def time_observe(monitor: DriftMonitor, batch: int, seconds: float) -> tuple[float, int]:
    """Mean seconds per observe() call over pre-generated batches, and the number of calls."""
    rng = np.random.default_rng(batch)
    pool: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = [
        (
            {"X": rng.normal(0.2, 1.1, size=(batch, N_FEATURES)).astype(np.float32)},
            {
                "label": rng.integers(0, 3, size=batch).astype(np.int64),
                "probabilities": rng.random((batch, 3)).astype(np.float32),
            },
        )
        for _ in range(256)
    ]
    for inputs, outputs in pool[:64]:  # warm-up
        monitor.observe(inputs, outputs)
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for inputs, outputs in pool:
            monitor.observe(inputs, outputs)
        calls += len(pool)
    return (time.perf_counter() - started) / calls, calls


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per batch size")
    args = parser.parse_args()
    profile = make_profile(np.random.default_rng(0))
    print(f"DriftMonitor.observe, {N_FEATURES} numeric features, window 2000 rows")
    print(f"{'batch rows':>10} {'calls':>9} {'us/call':>9} {'us/row':>9}")
    for batch in (1, 8, 32):
        registry = CollectorRegistry()
        monitor = DriftMonitor(profile, registry, "bench", "r1", 2000)
        per_call, calls = time_observe(monitor, batch, args.seconds)
        print(f"{batch:>10} {calls:>9} {per_call * 1e6:>9.1f} {per_call * 1e6 / batch:>9.2f}")
    started = time.perf_counter()
    scrapes = 200
    for _ in range(scrapes):
        generate_latest(registry)
    per_scrape = (time.perf_counter() - started) / scrapes
    print(
        f"/metrics scrape of the drift series (PSI + KS for {N_FEATURES} features): "
        f"{per_scrape * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
