"""Live drift tracking against a reference profile, exported as Prometheus metrics.

:class:`DriftMonitor` is fed every onnxruntime batch (inputs and outputs) by the server.  It
keeps the batch's arrays (references, no copy) and bins the pending rows together once
:data:`FLUSH_ROWS` rows or :data:`FLUSH_BATCHES` batches are pending, or when anything reads
the window (a scrape), so the figures read are always exact while a one-row request pays for
an append instead of a dozen small numpy calls.  Binning maps each row to one bin per feature
and updates a sliding window of bin counts
(:class:`roost_serving.drift.BinnedWindow`) and the prediction counters: a handful of vectorised
numpy calls, O(rows), no Python loop over rows.  PSI and binned KS are derived from the window's
counts when ``/metrics`` is scraped (the monitor is a custom collector on the injected
registry), so the hot path never pays for statistics nobody reads.

Series (labels ``model``, ``revision``; see the contract in ``docs/architecture.md``):

- ``roost_feature_psi{feature}`` / ``roost_feature_ks{feature}``: one per profiled feature
  (names only from the profile, at most :data:`MAX_FEATURES`); absent while the window holds no
  value for that feature, so an idle pod never reports a misleading 0.
- ``roost_drift_window_rows``: rows currently in the window.
- ``roost_predictions_total{bin}``: cumulative predictions per class label (classifier) or
  per bin index ``0..n`` of the profile's output edges (regressor); anything else is ``other``.
- ``roost_feature_bin_total{feature,bin}``: cumulative rows per feature bin (index ``0..k`` of
  the profile's bins, or ``missing``), beside the sliding window: the operator's drift gate
  accumulates their increases over a rollout, so its evidence never mixes in rows from before
  the step the way the window does.
- ``roost_feature_reference_share{feature,bin}``: the profile's share of each bin, so the
  operator judges drift without fetching the profile itself.
- ``roost_feature_bins_info{feature,digest}``: a hash of each feature's bins, so the operator
  compares canary and stable inputs bin by bin only where both profiles bin alike.
- ``roost_prediction_bin_upper{bin}`` (regressors): each output bin's upper edge, so the
  operator can tell whether canary and stable bin their predictions alike (a retrained
  profile has other edges, and bin ``i`` of one is then not bin ``i`` of the other).
  Regressors also count their predictions on the *stable's* edges once the operator pushed
  them: :mod:`roost_serving.compare` (``roost_prediction_compare_total``), ``.compare`` here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from roost_serving.compare import CompareBins
from roost_serving.drift import (
    BinnedWindow,
    ClassLookup,
    binned_ks,
    bins_digest,
    category_indices,
    psi,
)
from roost_serving.profile import (
    CategoricalFeature,
    ClassificationPrediction,
    NumericFeature,
    Profile,
    RegressionPrediction,
)

__all__ = ["MAX_FEATURES", "DriftMonitor"]

#: Features beyond this many (in profile order) are not tracked: bounded label cardinality.
MAX_FEATURES = 64
#: Pending rows (or batches) that trigger binning on the observing thread.
FLUSH_ROWS = 256
FLUSH_BATCHES = 64

# Above this many element comparisons per batch, per-column searchsorted beats broadcasting.
_BROADCAST_LIMIT = 1 << 18
# From this many rows on, comparing column-major (features, edges, rows) is faster: the count
# over edges becomes a few long vector additions instead of many length-`edges` reductions
# (about half the time of a 64-row batch); below it, the row-major form has less set-up.
_COLUMN_MAJOR_ROWS = 16

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _NumericGroup:
    """Numeric features read from the same input tensor, binned together by broadcasting."""

    input: str
    features: IntArray  # positions in the window's columns
    columns: IntArray  # columns of the input tensor
    edges: npt.NDArray[np.float64]  # (k, max_edges), padded with +inf (never exceeded)
    ragged: tuple[npt.NDArray[np.float64], ...]  # unpadded edges, for the searchsorted path
    offsets: IntArray  # first global slot of each feature
    missing: IntArray  # slot counting NaN / absent values of each feature
    take: slice | IntArray  # the columns, as a slice when contiguous (a view, no copy)
    width: int  # the input must have at least this many columns


@dataclass(frozen=True)
class _CategoricalTracker:
    input: str
    feature: int
    column: int
    categories: npt.NDArray[np.str_]
    offset: int
    missing: int


class DriftMonitor(Collector):
    """Sliding-window drift and prediction-distribution metrics for one served model.

    ``profile=None`` (no ``--profile``) turns drift tracking off: :meth:`observe` does nothing
    and no drift series are exported.  :meth:`observe` is thread-safe; the lock is held for the
    append and for binning pending rows, never while computing statistics for a scrape.
    """

    def __init__(
        self,
        profile: Profile | None,
        registry: CollectorRegistry,
        model: str,
        revision: str,
        window: int,
    ) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least 1 row")
        self._labels = [model, revision]
        self._lock = threading.Lock()
        self.profile = profile
        features = profile.features if profile is not None else ()
        if len(features) > MAX_FEATURES:
            log.warning(
                "profile has %d features; drift is tracked for the first %d only",
                len(features),
                MAX_FEATURES,
            )
        self._features = features[:MAX_FEATURES]
        self._plan_layout()
        self._window = BinnedWindow(window, len(self._features), self._n_slots)
        self._bin_totals = np.zeros(self._n_slots, dtype=np.int64)
        self._plan_prediction()
        # Regressors only: class labels are the same for every revision, output edges are not.
        self.compare: CompareBins | None = None
        if isinstance(self._pred, RegressionPrediction):
            self.compare = CompareBins(model, revision)
        # Arrays to keep per batch: every tracked input, then the prediction output.
        self._kept = sorted({g.input for g in self._numeric} | {c.input for c in self._categorical})
        self._pending: list[tuple[int, tuple[np.ndarray[Any, Any] | None, ...]]] = []
        self._pending_key: tuple[object, ...] = ()
        self._pending_rows = 0
        if profile is not None:
            registry.register(self)
        if self.compare is not None:
            registry.register(self.compare)

    # ------------------------------------------------------------------ set-up

    def _plan_layout(self) -> None:
        """Give each feature a contiguous run of global slots; missing slots follow them all."""
        n_bins = [
            len(f.edges) + 1 if isinstance(f, NumericFeature) else len(f.categories) + 1
            for f in self._features
        ]
        self._offsets = np.concatenate([[0], np.cumsum(n_bins)]).astype(np.int64)
        real = int(self._offsets[-1])
        self._n_slots = real + len(self._features)
        # Which bins a feature has, as a short hash: two profiles with the same shares may bin
        # on other edges (quantile bins always hold 10 %), so the operator's routing check
        # compares canary and stable inputs only where this digest is the same.
        self._digests = [
            bins_digest(f.edges if isinstance(f, NumericFeature) else f.categories)
            for f in self._features
        ]
        self._reference = [
            np.asarray(
                f.frequencies + ((f.other_frequency,) if isinstance(f, CategoricalFeature) else ()),
                dtype=np.float64,
            )
            for f in self._features
        ]
        by_input: dict[str, list[int]] = {}
        self._categorical: list[_CategoricalTracker] = []
        for i, f in enumerate(self._features):
            if isinstance(f, NumericFeature):
                by_input.setdefault(f.input, []).append(i)
            else:
                cats = np.asarray(f.categories, dtype=str)
                self._categorical.append(
                    _CategoricalTracker(
                        f.input, i, f.column or 0, cats, int(self._offsets[i]), real + i
                    )
                )
        self._numeric: list[_NumericGroup] = []
        self._one_group = False
        for name, idx in by_input.items():
            feats = [self._features[i] for i in idx]
            cols = np.asarray([f.column or 0 for f in feats], dtype=np.int64)
            ragged = tuple(np.asarray(f.edges, dtype=np.float64) for f in feats)  # type: ignore[union-attr]
            width = max((e.size for e in ragged), default=0)
            padded = np.full((len(idx), max(width, 1)), np.inf)
            for row, e in enumerate(ragged):
                padded[row, : e.size] = e
            self._numeric.append(
                _NumericGroup(
                    input=name,
                    features=np.asarray(idx, dtype=np.int64),
                    columns=cols,
                    edges=padded,
                    ragged=ragged,
                    offsets=self._offsets[idx],
                    missing=real + np.asarray(idx, dtype=np.int64),
                    take=_as_slice(cols),
                    width=int(cols.max()) + 1,
                )
            )

        self._one_group = (
            len(self._numeric) == 1
            and not self._categorical
            and self._numeric[0].features.tolist() == list(range(len(self._features)))
        )

    def _plan_prediction(self) -> None:
        pred = self.profile.prediction if self.profile is not None else None
        self._pred = pred
        self._pred_edges: npt.NDArray[np.float64] | None = None
        self._lookup: ClassLookup | None = None
        if isinstance(pred, ClassificationPrediction):
            self._bins = list(pred.classes)
            self._lookup = ClassLookup(pred.classes)
        elif isinstance(pred, RegressionPrediction):
            self._bins = [str(i) for i in range(len(pred.frequencies))]
            self._pred_edges = np.asarray(pred.edges, dtype=np.float64)
        else:
            self._bins = []
        self._bins.append("other")
        self._pred_counts = np.zeros(len(self._bins), dtype=np.int64)

    # ------------------------------------------------------------------ hot path

    def observe(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Mapping[str, np.ndarray[Any, Any]],
    ) -> None:
        """Account one onnxruntime batch: ``inputs`` as fed, ``outputs`` as returned."""
        if self.profile is None:
            return
        n = _rows(inputs, outputs)
        if n == 0:
            return
        # Plain loops: this runs once per request, and generator expressions cost more here
        # than the rest of the append.
        kept = [inputs.get(name) for name in self._kept]
        kept.append(outputs.get(self._pred.output) if self._pred is not None else None)
        parts: list[object] = []
        for array in kept:
            if array is None:
                parts.append(None)
                continue
            shape = array.shape
            if not shape or shape[0] != n:
                # Not row-aligned, so not concatenable with other batches: account it now.
                with self._lock:
                    self._flush_locked()
                    self._account(inputs, outputs, n)
                return
            parts.append((array.dtype, shape[1:]))
        key = tuple(parts)
        with self._lock:
            if self._pending and key != self._pending_key:
                self._flush_locked()
            self._pending.append((n, tuple(kept)))
            self._pending_key = key
            self._pending_rows += n
            if self._pending_rows >= FLUSH_ROWS or len(self._pending) >= FLUSH_BATCHES:
                self._flush_locked()

    def flush(self) -> None:
        """Bin every pending row into the window now (reads do this themselves)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        columns = list(zip(*(arrays for _, arrays in pending), strict=True))
        joined = [
            None if parts[0] is None else parts[0] if len(parts) == 1 else np.concatenate(parts)
            for parts in columns
        ]
        inputs = {name: a for name, a in zip(self._kept, joined, strict=False) if a is not None}
        outputs = {}
        if self._pred is not None and joined[-1] is not None:
            outputs[self._pred.output] = joined[-1]
        self._account(inputs, outputs, sum(n for n, _ in pending))

    def _account(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Mapping[str, np.ndarray[Any, Any]],
        n: int,
    ) -> None:
        """Bin ``n`` rows into the window and count their predictions (lock held)."""
        if self._one_group:
            # The common case (one 2-D numeric input holding every feature in order): the
            # binned matrix already is the window row, no scatter needed.
            slots = self._bin_numeric(self._numeric[0], inputs.get(self._numeric[0].input), n)
        else:
            slots = self._gather(inputs, n)
        pred_bins = self._prediction_bins(outputs, n)
        added = self._window.push(slots)
        self._bin_totals += added[: self._n_slots]
        if pred_bins is not None:
            self._pred_counts += np.bincount(pred_bins, minlength=self._pred_counts.size)
        if self.compare is not None and self._pred is not None:
            self.compare.observe(outputs.get(self._pred.output))

    def _gather(self, inputs: Mapping[str, npt.NDArray[Any]], n: int) -> IntArray:
        slots = np.empty((n, len(self._features)), dtype=np.int64)
        for g in self._numeric:
            slots[:, g.features] = self._bin_numeric(g, inputs.get(g.input), n)
        for c in self._categorical:
            arr = inputs.get(c.input)
            if arr is None or arr.size == 0 or arr.size % n != 0:
                slots[:, c.feature] = c.missing
                continue
            values = np.asarray(arr).reshape(n, -1)[:, c.column]
            slots[:, c.feature] = c.offset + category_indices(values, c.categories)
        return slots

    def _bin_numeric(self, g: _NumericGroup, arr: npt.NDArray[Any] | None, n: int) -> IntArray:
        if arr is None or arr.size == 0 or arr.size % n != 0 or arr.dtype.kind not in "fiub":
            # Absent or unusable input (the model would have rejected it anyway): count the
            # rows as missing for these features instead of guessing bins.
            return np.broadcast_to(g.missing, (n, g.missing.size))
        matrix = arr.reshape(n, -1)
        if g.width > matrix.shape[1]:
            return np.broadcast_to(g.missing, (n, g.missing.size))
        x = matrix[:, g.take]
        # Counting the comparisons in bytes is three times faster than numpy's default for
        # booleans (int64); a byte holds the count while there are fewer than 256 edges.
        count = np.uint8 if g.edges.shape[1] < 256 else np.int64
        if x.size * g.edges.shape[1] <= _BROADCAST_LIMIT and n >= _COLUMN_MAJOR_ROWS:
            # Number of edges strictly below v == index of v's right-closed bin.
            columns = np.ascontiguousarray(x.T, dtype=np.float64)
            local = (columns[:, None, :] > g.edges[:, :, None]).sum(axis=1, dtype=count).T
        elif x.size * g.edges.shape[1] <= _BROADCAST_LIMIT:
            local = (x[:, :, None] > g.edges[None, :, :]).sum(axis=2, dtype=count)
        else:
            local = np.column_stack(
                [np.searchsorted(e, x[:, j], side="left") for j, e in enumerate(g.ragged)]
            )
        out = local + g.offsets
        if x.dtype.kind == "f":
            nan = np.isnan(x)
            if nan.any():
                out = np.where(nan, g.missing, out)
        result: IntArray = out.astype(np.int64, copy=False)
        return result

    def _prediction_bins(self, outputs: Mapping[str, npt.NDArray[Any]], n: int) -> IntArray | None:
        pred = self._pred
        if pred is None:
            return None
        out = outputs.get(pred.output)
        if out is None:
            return None
        values = np.asarray(out).reshape(-1)
        if self._lookup is not None:
            return self._lookup(values)
        if self._pred_edges is None or values.dtype.kind not in "fiub":
            return np.full(values.size, len(self._bins) - 1, dtype=np.int64)
        idx = np.searchsorted(self._pred_edges, values, side="left")
        # NaN sorts past every edge; route it to "other" rather than the top bin.
        return np.where(np.isnan(values), len(self._bins) - 1, idx).astype(np.int64)

    # ------------------------------------------------------------------ reading

    @property
    def window_rows(self) -> int:
        """Rows currently in the sliding window."""
        self.flush()
        return self._window.rows

    def statistics(self) -> dict[str, tuple[float, float]]:
        """``{feature: (psi, ks)}`` over the current window; features with no values omitted."""
        with self._lock:
            self._flush_locked()
            counts = self._window.counts.copy()
        stats: dict[str, tuple[float, float]] = {}
        for i, f in enumerate(self._features):
            live = counts[self._offsets[i] : self._offsets[i + 1]]
            if live.sum() == 0:
                continue
            stats[f.name] = (psi(self._reference[i], live), binned_ks(self._reference[i], live))
        return stats

    def prediction_counts(self) -> dict[str, int]:
        """Cumulative predictions per ``bin`` label (including ``other``)."""
        with self._lock:
            self._flush_locked()
            counts = self._pred_counts.copy()
        return {b: int(c) for b, c in zip(self._bins, counts, strict=True)}

    def bin_totals(self) -> dict[str, dict[str, int]]:
        """Cumulative rows per feature and bin label (``0..k`` or ``missing``)."""
        with self._lock:
            self._flush_locked()
            totals = self._bin_totals.copy()
        real = int(self._offsets[-1])
        out: dict[str, dict[str, int]] = {}
        for i, f in enumerate(self._features):
            live = totals[self._offsets[i] : self._offsets[i + 1]]
            bins = {str(b): int(c) for b, c in enumerate(live)}
            bins["missing"] = int(totals[real + i])
            out[f.name] = bins
        return out

    def describe(self) -> Iterable[Metric]:
        """Metric families without samples, so registering never runs a scrape."""
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        """Compute the drift series from the current window (called on every scrape)."""
        psi_f, ks_f, rows_f, pred_f, bins_f, ref_f, edges_f, digest_f = self._families()
        for name, (p, k) in self.statistics().items():
            psi_f.add_metric([*self._labels, name], p)
            ks_f.add_metric([*self._labels, name], k)
        rows_f.add_metric(self._labels, float(self.window_rows))
        for b, c in self.prediction_counts().items():
            pred_f.add_metric([*self._labels, b], float(c))
        for i, (name, bins) in enumerate(self.bin_totals().items()):
            ref = self._reference[i]
            share = ref / ref.sum() if ref.sum() > 0 else ref
            for b, c in bins.items():
                bins_f.add_metric([*self._labels, name, b], float(c))
                if b != "missing":
                    ref_f.add_metric([*self._labels, name, b], float(share[int(b)]))
            digest_f.add_metric([*self._labels, name, self._digests[i]], 1.0)
        if self._pred_edges is not None:
            uppers = [*self._pred_edges.tolist(), float("inf")]
            for b, upper in zip(self._bins, uppers, strict=False):
                edges_f.add_metric([*self._labels, b], upper)
        return [psi_f, ks_f, rows_f, pred_f, bins_f, ref_f, edges_f, digest_f]

    def _families(self) -> tuple[GaugeMetricFamily | CounterMetricFamily, ...]:
        base = ["model", "revision"]
        return (
            GaugeMetricFamily(
                "roost_feature_psi",
                "Population stability index of the feature over the drift window vs the profile",
                labels=[*base, "feature"],
            ),
            GaugeMetricFamily(
                "roost_feature_ks",
                "Binned Kolmogorov-Smirnov statistic of the feature over the drift window",
                labels=[*base, "feature"],
            ),
            GaugeMetricFamily(
                "roost_drift_window_rows", "Rows currently in the drift window", labels=base
            ),
            CounterMetricFamily(
                "roost_predictions",
                "Predictions per class label (classifier) or output bin (regressor)",
                labels=[*base, "bin"],
            ),
            CounterMetricFamily(
                "roost_feature_bin",
                "Rows per feature bin of the reference profile, cumulative since start",
                labels=[*base, "feature", "bin"],
            ),
            GaugeMetricFamily(
                "roost_feature_reference_share",
                "The reference profile's share of rows in each feature bin",
                labels=[*base, "feature", "bin"],
            ),
            GaugeMetricFamily(
                "roost_prediction_bin_upper",
                "Upper edge of each output bin of roost_predictions_total (regressors)",
                labels=[*base, "bin"],
            ),
            GaugeMetricFamily(
                "roost_feature_bins_info",
                "1 for the hash of each feature's profile bins (edges or categories)",
                labels=[*base, "feature", "digest"],
            ),
        )


def _as_slice(columns: IntArray) -> slice | IntArray:
    start = int(columns[0])
    if columns.tolist() == list(range(start, start + columns.size)):
        return slice(start, start + columns.size)
    return columns


def _rows(inputs: Mapping[str, npt.NDArray[Any]], outputs: Mapping[str, npt.NDArray[Any]]) -> int:
    """Batch size: the leading dimension of the first input (or output) tensor."""
    for arrays in (inputs, outputs):
        for arr in arrays.values():
            # ``arr.shape`` for arrays (every batch the server sees): np.shape's call costs
            # more than the rest of a one-row append.
            shape = arr.shape if isinstance(arr, np.ndarray) else np.shape(arr)
            return int(shape[0]) if shape else 1
    return 0
