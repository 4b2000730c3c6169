"""Regressor predictions binned on the stable revision's output edges (the ``compare`` section).

Each revision bins its own predictions with its own profile's output edges
(``roost_predictions_total``); after a retrain bin ``i`` of the canary is then not bin ``i`` of
the stable, and the operator could not compare them. The operator therefore pushes the stable's
edges to every pod of every revision at run time (``PUT /v2/roost/runtime``, section
``compare``: ``{"version": "<hash>", "edges": [e0, e1, ...]}``; see :mod:`roost_serving.runtime`),
and this module counts every prediction a second time on those edges:

- ``roost_prediction_compare_total{bin}``: predictions per bin ``0..len(edges)`` of the pushed
  edges (right-closed, like the profile's bins), NaN and non-numeric outputs as ``other``.
  Cumulative and never smaller: new edges keep counting on the same series (bins are only
  ever added), so the operator's counter-reset detection never mistakes a push for a restart.
- ``roost_prediction_compare_info{version}``: 1 for the version of the edges in use. The
  operator uses an interval's counts only when the pod held the same version at both ends,
  and only the version of the stable's own edges.

Nothing is exported until the first push, so a pod the operator has not reached yet reports
no compare series rather than counts on some other binning.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MAX_EDGES", "CompareBins", "CompareError", "parse_section"]

#: Edges beyond this many are refused: bounded label cardinality (profiles hold ~10-50).
MAX_EDGES = 256
#: Versions are short hashes; anything longer is not one of the operator's.
MAX_VERSION = 64


class CompareError(ValueError):
    """A ``compare`` section that cannot be used; the message says what is wrong."""


def parse_section(section: Mapping[str, Any]) -> tuple[str, npt.NDArray[np.float64]]:
    """``(version, edges)`` of a ``compare`` section, or `CompareError` saying why not."""
    version = section.get("version")
    edges = section.get("edges")
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION:
        raise CompareError(f"compare.version must be a string of 1-{MAX_VERSION} characters")
    if not isinstance(edges, list) or len(edges) > MAX_EDGES:
        raise CompareError(f"compare.edges must be a list of at most {MAX_EDGES} numbers")
    if not all(isinstance(e, int | float) and not isinstance(e, bool) for e in edges):
        raise CompareError("compare.edges must hold numbers only")
    values = np.asarray(edges, dtype=np.float64)
    if not np.isfinite(values).all() or (np.diff(values) <= 0).any():
        raise CompareError("compare.edges must be finite and strictly increasing")
    return version, values


class CompareBins(Collector):
    """Counts of predictions on the pushed edges; a collector on the server's registry.

    `observe` is called with every batch's prediction output (thread-safe; one searchsorted
    and one bincount per batch). `apply` takes a ``compare`` section (the runtime holder's
    subscription callback); `None` (section withdrawn) stops counting but keeps the series.
    """

    def __init__(self, model: str, revision: str) -> None:
        self._labels = [model, revision]
        self._lock = threading.Lock()
        self._version: str | None = None
        self._edges: npt.NDArray[np.float64] | None = None
        # Bin label -> count. Series are only ever added (a push never removes one), so the
        # operator never reads a vanished series as a restart.
        self._counts: dict[str, int] = {}

    @property
    def version(self) -> str | None:
        """The version of the edges in use (None before the first push)."""
        return self._version

    def apply(self, section: Mapping[str, Any] | None) -> None:
        """Use the edges of a ``compare`` section from now on (`CompareError` if unusable)."""
        if section is None:
            with self._lock:
                self._version, self._edges = None, None
            return
        version, edges = parse_section(section)
        with self._lock:
            self._version, self._edges = version, edges
            for b in ("other", *(str(i) for i in range(edges.size + 1))):
                self._counts.setdefault(b, 0)

    def observe(self, values: npt.NDArray[Any] | None) -> None:
        """Count one batch's predictions on the current edges (nothing before a push)."""
        if self._edges is None or values is None:  # no push yet: not even the lock
            return
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        with self._lock:
            edges = self._edges
            if edges is None:
                return
            if flat.dtype.kind not in "fiub":
                self._counts["other"] += int(flat.size)
                return
            numeric = flat.astype(np.float64, copy=False)
            idx = np.searchsorted(edges, numeric, side="left")
            # NaN sorts past every edge: "other", as the profile's own prediction bins do it.
            idx = np.where(np.isnan(numeric), edges.size + 1, idx)
            counts = np.bincount(idx, minlength=edges.size + 2)
            for i, c in enumerate(counts[: edges.size + 1].tolist()):
                if c:
                    self._counts[str(i)] += int(c)
            self._counts["other"] += int(counts[edges.size + 1])

    def counts(self) -> dict[str, int]:
        """Cumulative predictions per bin label, every bin ever pushed included."""
        with self._lock:
            return dict(self._counts)

    def describe(self) -> Iterable[Metric]:
        """Metric families without samples, so registering never runs a scrape."""
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        """The counts and the version in use (nothing before the first push)."""
        total, info = self._families()
        with self._lock:
            counts, version = dict(self._counts), self._version
        for b, c in sorted(counts.items(), key=lambda kv: _order(kv[0])):
            total.add_metric([*self._labels, b], float(c))
        if version is not None:
            info.add_metric([*self._labels, version], 1.0)
        return [total, info]

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        base = ["model", "revision"]
        return (
            CounterMetricFamily(
                "roost_prediction_compare",
                "Predictions per bin of the stable revision's output edges (pushed at run time)",
                labels=[*base, "bin"],
            ),
            GaugeMetricFamily(
                "roost_prediction_compare_info",
                "1 for the version of the pushed output edges roost_prediction_compare_total uses",
                labels=[*base, "version"],
            ),
        )


def _order(label: str) -> float:
    return float(label) if label.isdigit() else math.inf
