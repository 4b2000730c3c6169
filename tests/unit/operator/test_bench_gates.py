"""The benchmark's vectorised gates decide exactly as the operator's real path does.

`benchmarks/bench_gates.py` judges most simulated rollouts with a numpy mirror of
`roost_operator.verdicts`; here a few rollouts also go through exposition text, parsing,
counter deltas (with a pod restart) and `judge_interval`, and must end the same way at the
same analysis.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_gates.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gates", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gates"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "cell",
    [
        {"name": "a/a", "kind": "A/A", "rps": 50, "features": 4},
        {"name": "5xx", "kind": "A/B", "rps": 50, "features": 4, "error_delta": 0.02},
        {"name": "slow", "kind": "A/B", "rps": 50, "features": 4, "latency_ratio": 1.6},
    ],
)
def test_vectorised_gates_agree_with_the_real_path(bench: ModuleType, cell: dict) -> None:
    c = bench.Cell(real=6, **cell)
    new, _, kept = bench.run(c, 6, 0.05, seed=7)
    real = bench.real_path(c, kept, 6, 0.05)
    assert real == [(int(new.ended[i]), int(new.look[i])) for i in range(6)]
