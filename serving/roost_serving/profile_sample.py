"""Sample rows in a reference profile: training rows the operator's validation can send.

`roost profile` keeps up to :data:`SAMPLE_ROWS` rows of the model's single 2-D input, drawn
at random (seeded, so the same data gives the same profile), under ``"sample": {"input": "X",
"rows": [[...], ...]}``. Without a golden set, in-cluster validation
(`roost_operator.validator`) sends these rows to the canary and the stable revision and
compares the answers. Profiles written before the sample existed simply have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from roost_serving.tabular import ProfileError

SAMPLE_ROWS = 64
SEED = 20240917


@dataclass(frozen=True)
class Sample:
    """Training rows of one 2-D model input."""

    input: str
    rows: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"input": self.input, "rows": [list(r) for r in self.rows]}


def draw_sample(input_name: str, matrix: np.ndarray, rows: int = SAMPLE_ROWS) -> Sample | None:
    """Up to ``rows`` rows of ``matrix`` (numeric only; None otherwise), in their data order."""
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiub" or len(matrix) == 0:
        return None
    chosen = np.random.default_rng(SEED).choice(len(matrix), min(rows, len(matrix)), False)
    picked = matrix[np.sort(chosen)].astype(np.float64)
    return Sample(input_name, tuple(tuple(float(v) for v in row) for row in picked))


def parse_sample(raw: Any) -> Sample | None:
    """The ``sample`` key of a profile (absent: None); raises :class:`ProfileError`."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("rows"), list):
        raise ProfileError('profile.sample must be {"input": name, "rows": [[numbers]]}')
    try:
        rows = np.asarray(raw["rows"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError("profile.sample.rows must be rows of numbers of equal length") from None
    if rows.ndim != 2:
        raise ProfileError("profile.sample.rows must be rows of numbers of equal length")
    return Sample(str(raw.get("input", "")), tuple(tuple(float(v) for v in r) for r in rows))
