"""The shadow-gate simulation's vectorised gate decides exactly as `judge_shadow` does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_shadow_gate.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_shadow_gate", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_shadow_gate"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("rate", "clustered"), [(0.0, False), (0.05, True), (0.6, False)])
def test_vectorised_gate_agrees_with_judge_shadow(
    bench: ModuleType, rate: float, clustered: bool
) -> None:
    cell = bench.Cell("cell", rate, 20, clustered=clustered)
    x, n = bench.draw(cell, np.random.default_rng(3), 25)
    result = bench.simulate(cell, x, n, 0.05)
    real = bench.real_path(cell, x, n, 0.05)
    vectorised = [(int(o), int(a)) for o, a in zip(result["outcome"], result["at"], strict=True)]
    assert vectorised == real
    if rate == 0.6:
        assert all(o == -1 for o, _ in real)  # a one-class model is always rolled back
    if rate == 0.0:
        assert all(o == 1 for o, _ in real)  # an identical one always passes
