"""Tabular input for `roost profile` and `roost export`: CSV or Parquet files, DataFrames, arrays.

CSV is parsed with the standard library rather than pandas, so the serving image needs no
pandas; Parquet needs the optional pyarrow (`roost[parquet]`). Paths may be fsspec URIs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt


class ProfileError(ValueError):
    """A profile that cannot be read, is malformed, or cannot be built from the given data."""


#: Column name -> 1-D array, in column order.
Table = dict[str, npt.NDArray[Any]]


def _csv_column(raw: list[str]) -> npt.NDArray[Any]:
    """Numeric column as float64 (empty cells -> NaN) if every cell parses, else strings."""
    try:
        return np.array([float(v) if v.strip() else np.nan for v in raw], dtype=np.float64)
    except ValueError:
        return np.array(raw, dtype=object)


def read_table(path: str) -> Table:
    """Read CSV (header row required) or Parquet (needs pyarrow) from a path or fsspec URI.

    Parsed with the standard library rather than pandas so the serving image needs no pandas.
    """
    if path.endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ProfileError(
                "reading Parquet needs pyarrow: pip install 'roost[parquet]'"
            ) from None
        with fsspec.open(path, "rb") as fh:
            pa_table = pq.read_table(fh)
        return {
            str(n): np.asarray(c.to_numpy(zero_copy_only=False))
            for n, c in zip(pa_table.column_names, pa_table.columns, strict=True)
        }
    with fsspec.open(path, "rb") as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
        rows = list(csv.reader(text))
    if not rows:
        raise ProfileError(f"{path} is empty: expected a header row and data rows")
    header, body = rows[0], [r for r in rows[1:] if r]
    if len(set(header)) != len(header):
        raise ProfileError(f"{path}: column names in the header row must be unique")
    for lineno, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ProfileError(f"{path}: row {lineno} has {len(r)} cells, the header {len(header)}")
    columns = list(zip(*body, strict=True)) if body else [() for _ in header]
    return {name: _csv_column(list(col)) for name, col in zip(header, columns, strict=True)}


def as_table(data: Any, feature_names: Sequence[str] | None = None) -> Table:
    """Normalise a pandas DataFrame, 2-D array or mapping of columns into a :data:`Table`."""
    if hasattr(data, "columns") and hasattr(data, "__getitem__") and not isinstance(data, Mapping):
        # pandas DataFrame (duck-typed so pandas stays an optional dependency)
        return {str(c): np.asarray(data[c].to_numpy()) for c in data.columns}
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v).reshape(-1) for k, v in data.items()}
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise ProfileError(f"expected 2-D data (rows x features), got shape {arr.shape}")
    names = (
        list(feature_names) if feature_names is not None else [f"f{i}" for i in range(arr.shape[1])]
    )
    if len(names) != arr.shape[1]:
        raise ProfileError(f"{len(names)} feature names for {arr.shape[1]} columns")
    return {n: arr[:, i] for i, n in enumerate(names)}
