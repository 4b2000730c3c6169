"""Drift statistics over binned distributions (pure numpy).

Everything here works on *binned* data: a reference profile stores bin edges and reference
frequencies (see ``docs/architecture.md``), and live traffic is reduced to bin counts.  The
statistics follow the contract exactly:

- PSI = sum over bins of ``(a - e) * ln(a / e)``, both distributions floored at ``1e-4`` and
  renormalised (so an empty bin never yields an infinite PSI);
- binned KS = max over bin edges of ``|CDF_live - CDF_reference|``;
- Jensen-Shannon distance, base 2 (square root of the JS divergence), 0 = identical, 1 = disjoint.

Numeric bins are right-closed: ``(-inf, e0], (e0, e1], ..., (en, +inf)``.

This module must stay free of onnxruntime and HTTP frameworks (import-linter contract), so the
operator-side gate maths and the serving monitor can share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PSI_FLOOR",
    "BinnedWindow",
    "ClassLookup",
    "bin_indices",
    "binned_ks",
    "bins_digest",
    "category_indices",
    "histogram",
    "js_distance",
    "normalise",
    "psi",
    "quantile_edges",
]

#: Frequencies are floored at this value before PSI so that empty bins stay finite.
PSI_FLOOR = 1e-4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def normalise(counts: npt.ArrayLike) -> FloatArray:
    """Return ``counts`` as a float frequency vector summing to 1.

    Raises ``ValueError`` for negative entries, non-finite entries or an all-zero vector, since
    none of those is a distribution and silently returning NaN would hide a bug upstream.
    """
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"expected a non-empty 1-D vector of counts, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("counts must be finite and non-negative")
    total = float(arr.sum())
    if total <= 0:
        raise ValueError("counts sum to zero: there is no distribution to compare")
    return arr / total


def _floored(freq: FloatArray) -> FloatArray:
    floored: FloatArray = np.maximum(freq, PSI_FLOOR)
    out: FloatArray = floored / floored.sum()
    return out


def _check_pair(a: FloatArray, b: FloatArray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"distributions have different numbers of bins: {a.size} vs {b.size}")


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Population stability index of ``actual`` against ``expected``.

    Both arguments are frequency (or count) vectors over the same bins.  Both are normalised,
    floored at :data:`PSI_FLOOR` and renormalised before ``sum((a - e) * ln(a / e))``.
    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    """
    e = _floored(normalise(expected))
    a = _floored(normalise(actual))
    _check_pair(e, a)
    return float(np.sum((a - e) * np.log(a / e)))


def binned_ks(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Kolmogorov-Smirnov statistic on binned data: max over bin edges of |CDF difference|.

    With bins that separate every distinct value this equals the two-sample KS statistic of
    the underlying samples; with coarser bins it is a lower bound of it.
    """
    e = normalise(expected)
    a = normalise(actual)
    _check_pair(e, a)
    return float(np.max(np.abs(np.cumsum(a) - np.cumsum(e))))


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon distance in base 2 between two count or frequency vectors (0..1)."""
    pn = normalise(p)
    qn = normalise(q)
    _check_pair(pn, qn)
    m = 0.5 * (pn + qn)
    # 0 * log(0 / m) is 0 by convention; masking avoids the NaN numpy would produce.
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(pn > 0, pn * np.log2(pn / m), 0.0).sum()
        kl_q = np.where(qn > 0, qn * np.log2(qn / m), 0.0).sum()
    divergence = 0.5 * float(kl_p) + 0.5 * float(kl_q)
    # Rounding can push the divergence a hair outside [0, 1]; clip so sqrt stays defined.
    return float(np.sqrt(min(max(divergence, 0.0), 1.0)))


def quantile_edges(values: npt.ArrayLike, bins: int = 10) -> FloatArray:
    """Inner cut points of ``bins`` quantile bins of ``values`` (NaNs ignored), de-duplicated.

    Deciles by default, as the profile contract specifies.  Features with few distinct values
    yield fewer edges; an all-NaN feature yields none (a single bin).
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or bins == 1:
        return np.empty(0, dtype=np.float64)
    qs = np.arange(1, bins, dtype=np.float64) / bins
    return np.unique(np.quantile(arr, qs))


def bin_indices(values: npt.ArrayLike, edges: npt.ArrayLike) -> IntArray:
    """Right-closed bin index of each value: ``v <= e0`` is bin 0, ``v > e_last`` the last bin.

    NaN values get index ``len(edges) + 1`` (one past the last bin) so callers can count them
    as missing rather than silently putting them in the top bin.
    """
    arr = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, arr, side="left").astype(np.int64)
    nan = np.isnan(arr)
    if nan.any():
        idx[nan] = e.size + 1
    return idx


def histogram(values: npt.ArrayLike, edges: npt.ArrayLike) -> IntArray:
    """Counts of ``values`` in the right-closed bins defined by ``edges`` (NaNs dropped)."""
    n_bins = np.asarray(edges).size + 1
    idx = bin_indices(values, edges).ravel()
    return np.bincount(idx, minlength=n_bins + 1)[:n_bins].astype(np.int64)


def category_indices(values: npt.ArrayLike, categories: npt.ArrayLike) -> IntArray:
    """Index of each value in ``categories`` (compared as strings); unknown -> ``len(categories)``.

    Vectorised with a sorted lookup rather than a Python dict, so the cost per row is a
    binary search in numpy instead of interpreter work.
    """
    cats = np.asarray(categories).astype(str)
    vals = np.asarray(values).astype(str).ravel()
    if cats.size == 0:
        return np.zeros(vals.size, dtype=np.int64)
    order = np.argsort(cats, kind="stable")
    sorted_cats = cats[order]
    pos = np.searchsorted(sorted_cats, vals)
    pos_clipped = np.minimum(pos, cats.size - 1)
    found = sorted_cats[pos_clipped] == vals
    return np.where(found, order[pos_clipped], cats.size).astype(np.int64)


class BinnedWindow:
    """Per-column bin counts of the most recent ``size`` rows, maintained incrementally.

    Each row is stored as one small integer per column (a *global* slot index, i.e. a bin
    index already offset into one flat counts array), in a ring buffer.  Pushing ``n`` rows
    costs O(n * columns): the evicted rows' slots are subtracted and the new rows' slots added
    with ``np.bincount``, so the window never has to be re-histogrammed.

    Empty ring slots hold a reserved "void" slot (index ``n_slots``) so that eviction needs no
    branch for a window that is not yet full.
    """

    def __init__(self, size: int, n_columns: int, n_slots: int) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1 row")
        if n_columns < 0 or n_slots < 0:
            raise ValueError("n_columns and n_slots must be non-negative")
        self.size = size
        self.n_columns = n_columns
        self.n_slots = n_slots
        self._void = n_slots
        self._ring = np.full((size, n_columns), self._void, dtype=np.int64)
        self._counts = np.zeros(n_slots + 1, dtype=np.int64)
        self._counts[self._void] = size * n_columns
        self._head = 0
        self._rows = 0

    @property
    def rows(self) -> int:
        """Rows currently held (at most ``size``)."""
        return self._rows

    @property
    def counts(self) -> IntArray:
        """Counts per global slot over the rows in the window (a read-only view)."""
        view = self._counts[: self.n_slots]
        view.flags.writeable = False
        return view

    def push(self, slots: IntArray) -> IntArray:
        """Add rows given as an ``(n, n_columns)`` array of global slot indices; returns the
        pushed rows' count per slot (``n_slots + 1`` long, the void slot last), which callers
        keeping cumulative totals reuse instead of counting the same rows again."""
        if slots.ndim != 2 or slots.shape[1] != self.n_columns:
            raise ValueError(f"expected shape (n, {self.n_columns}), got {slots.shape}")
        n = slots.shape[0]
        minlength = self.n_slots + 1
        added: IntArray = np.bincount(slots.ravel(), minlength=minlength)
        if n == 0:
            return added
        if n >= self.size:
            # The batch alone fills the window: start over with its last `size` rows.
            self._ring[:] = slots[n - self.size :]
            self._counts = np.bincount(self._ring.ravel(), minlength=minlength)
            self._head = 0
            self._rows = self.size
            return added
        end = self._head + n
        # Slices (views) when the batch does not wrap around the ring: the common case, and
        # cheaper than fancy indexing for the one-row batches of an idle server.
        pos: slice | IntArray = (
            slice(self._head, end) if end <= self.size else np.arange(self._head, end) % self.size
        )
        self._counts -= np.bincount(self._ring[pos].ravel(), minlength=minlength)
        self._counts += added
        self._ring[pos] = slots
        self._head = (self._head + n) % self.size
        self._rows = min(self.size, self._rows + n)
        return added

    def clear(self) -> None:
        """Forget every row."""
        self._ring.fill(self._void)
        self._counts[:] = 0
        self._counts[self._void] = self.size * self.n_columns
        self._head = 0
        self._rows = 0


class ClassLookup:
    """Maps prediction values to bin indices 0..n-1, anything unknown to ``n`` (``other``)."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.n = len(classes)
        self._str = np.asarray(classes, dtype=str)
        try:
            ints = np.asarray([int(c) for c in classes], dtype=np.int64)
        except ValueError:
            ints = None
        # Small non-negative integer classes (0, 1, 2, ...: what skl2onnx classifiers output)
        # get a direct lookup table: one clip and one take per batch.
        self._table: IntArray | None = None
        if ints is not None and ints.size and ints.min() >= 0 and ints.max() < 4096:
            self._table = np.full(int(ints.max()) + 2, self.n, dtype=np.int64)
            self._table[ints] = np.arange(self.n, dtype=np.int64)

    def __call__(self, values: npt.NDArray[Any]) -> IntArray:
        table = self._table
        if table is not None and values.dtype.kind in "iu":
            # Viewed as unsigned, negative labels become huge and clip to the "other" entry.
            idx = np.minimum(values.astype(np.uint64, copy=False), table.size - 1)
            found: IntArray = table[idx]
            return found
        return category_indices(values, self._str)


def bins_digest(bins: Sequence[float] | Sequence[str]) -> str:
    """A short hash of one feature's bins (numeric edges or category names)."""
    text = json.dumps([b if isinstance(b, str) else float(b) for b in bins], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
