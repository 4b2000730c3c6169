"""Live model quality: recent predictions joined with ground truth, exported per revision.

:class:`PredictionTable` keeps, for every inference that carried a request id, what the model
answered (one value per row: the class label of a classifier, the value of a regressor) and
when. The table is bounded twice — at most ``max_ids`` ids (the oldest is evicted first) and
ids older than ``ttl`` seconds expire — and remembers a bounded set of ids that expired or were
already labelled, so feedback for them is reported as ``expired`` or ``duplicate`` rather
than ``unknown``. Everything here runs on the event loop (inference results and feedback both
arrive there); a lock guards it anyway, as the gRPC server may call from its own thread.

Series (labels ``model``, ``revision``; docs/architecture.md, "Serving metrics"):

- ``roost_labelled_predictions_total{class}`` / ``roost_correct_predictions_total{class}``:
  rows joined with a label, and those the model got right, per *true* class (classifiers;
  regressors have ``class=""``); counted when the label arrives.
- ``roost_prediction_abs_error``: histogram of ``|prediction - target|`` (regressors).
- ``roost_label_delay_seconds``: histogram of the time from the prediction to its label.
- ``roost_quality_horizon_*``: the accuracy gate's cohort counters (docs/analysis.md,
  "Accuracy"). A prediction enters them once, when it is ``horizon`` seconds old:
  ``_predictions_total`` (every tracked row), ``_labelled_total`` (rows whose label came
  within the horizon), ``_correct_total`` (of those, right), and the
  ``_abs_error`` histogram (regressors). Canary and stable rows counted in the same interval
  were predicted in the same interval and had exactly the same time for their labels to
  arrive, so label delay cannot favour the revision that answered earlier.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Histogram

Outcome = Literal["joined", "late", "duplicate", "expired", "unknown", "invalid"]
"""What one feedback item found: ``joined`` (within the horizon), ``late`` (joined after it:
live metrics only), ``duplicate`` (already labelled), ``expired`` (aged out of the table),
``unknown`` (never seen here), ``invalid`` (wrong number of rows or type of truth)."""
OUTCOMES: tuple[Outcome, ...] = ("joined", "late", "duplicate", "expired", "unknown", "invalid")

ERROR_BUCKETS = tuple(round(0.001 * 2**k, 6) for k in range(24))
"""Absolute-error histogram bounds: 0.001 to about 8,400 in factors of 2."""
DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)  # fmt: skip
MAX_CLASSES = 64
"""Distinct class labels on the per-class series; others are counted as ``other``."""
MAX_ROWS_PER_ID = 1024
"""Requests with more rows are not tracked (counted as untracked ``too_many_rows``)."""

Clock = Callable[[], float]


@dataclass
class _Entry:
    values: npt.NDArray[np.generic]
    at: float
    labelled: bool = False
    horizon_labelled: int = 0
    horizon_correct: int = 0
    horizon_errors: list[float] = field(default_factory=list)


class QualityMetrics:
    """The quality series of one served model revision."""

    def __init__(self, registry: CollectorRegistry, model: str, revision: str) -> None:
        """Register every series on ``registry``."""
        labels = ("model", "revision")
        self.label_values = (model, revision)
        self.labelled = Counter(
            "roost_labelled_predictions",
            "Predicted rows joined with ground truth, by true class (classifiers).",
            (*labels, "class"),
            registry=registry,
        )
        self.correct = Counter(
            "roost_correct_predictions",
            "Labelled rows the model predicted right, by true class (classifiers).",
            (*labels, "class"),
            registry=registry,
        )
        self.abs_error = Histogram(
            "roost_prediction_abs_error",
            "Absolute error of labelled regression predictions.",
            labels,
            buckets=ERROR_BUCKETS,
            registry=registry,
        ).labels(model, revision)
        self.delay = Histogram(
            "roost_label_delay_seconds",
            "Seconds from a prediction to its ground truth arriving.",
            labels,
            buckets=DELAY_BUCKETS,
            registry=registry,
        ).labels(model, revision)
        horizon = "Accuracy-gate cohort: predictions counted once they are the horizon old; "
        self.h_predictions = Counter(
            "roost_quality_horizon_predictions",
            horizon + "every tracked row.",
            labels,
            registry=registry,
        ).labels(model, revision)
        self.h_labelled = Counter(
            "roost_quality_horizon_labelled",
            horizon + "rows labelled within the horizon.",
            labels,
            registry=registry,
        ).labels(model, revision)
        self.h_correct = Counter(
            "roost_quality_horizon_correct",
            horizon + "rows labelled within the horizon and predicted right (classifiers).",
            labels,
            registry=registry,
        ).labels(model, revision)
        self.h_error = Histogram(
            "roost_quality_horizon_abs_error",
            horizon + "absolute error of rows labelled within the horizon (regressors).",
            labels,
            buckets=ERROR_BUCKETS,
            registry=registry,
        ).labels(model, revision)
        untracked = Counter(
            "roost_quality_untracked_predictions",
            "Inferences not kept for the feedback join, by reason.",
            (*labels, "reason"),
            registry=registry,
        )
        # Resolved once: eviction runs on the hot path whenever the table is full.
        self.untracked = {
            reason: untracked.labels(model, revision, reason)
            for reason in ("evicted", "duplicate_id", "too_many_rows")
        }
        self.feedback = Counter(
            "roost_feedback_items",
            "Feedback items by outcome (joined here, late, duplicate, expired, unknown, ...).",
            (*labels, "outcome"),
            registry=registry,
        )
        for outcome in (*OUTCOMES, "forwarded"):
            self.feedback.labels(model, revision, outcome)
        self._classes: set[str] = set()

    def cls(self, label: str) -> str:
        """The bounded ``class`` label value for a true class."""
        if label in self._classes or len(self._classes) < MAX_CLASSES:
            self._classes.add(label)
            return label
        return "other"


def truth_key(value: object) -> str | None:
    """A class label as compared with predictions: ints and integral floats alike, strings
    as they are; None for anything else (lists, dicts, booleans)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return None


class PredictionTable:
    """Bounded, time-expiring table of recent predictions by request id (see module doc)."""

    def __init__(
        self,
        metrics: QualityMetrics,
        horizon: float = 60.0,
        ttl: float = 3600.0,
        max_ids: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        """``horizon``: the gate's label window; ``ttl`` (at least the horizon): how long an id
        can still be joined; ``max_ids``: the table's bound."""
        if horizon <= 0 or ttl < horizon or max_ids < 1:
            raise ValueError("need horizon > 0, ttl >= horizon and max_ids >= 1")
        self.metrics = metrics
        self.horizon, self.ttl, self.max_ids = horizon, ttl, max_ids
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._maturing: deque[tuple[float, str, _Entry]] = deque()
        # Ids no longer joinable, so late feedback is told apart from ids never seen here.
        self._gone: OrderedDict[str, Outcome] = OrderedDict()

    def __len__(self) -> int:
        """Ids held now."""
        return len(self._entries)

    def record(self, request_id: str, values: npt.ArrayLike) -> None:
        """Keep what the model answered for ``request_id`` (one value per row)."""
        flat = np.asarray(values).reshape(-1)
        if flat.size > MAX_ROWS_PER_ID:
            self.metrics.untracked["too_many_rows"].inc()
            return
        now = self._clock()
        with self._lock:
            if request_id in self._entries or request_id in self._gone:
                # A client reusing an id: the first answer keeps it (the join stays exact).
                self.metrics.untracked["duplicate_id"].inc()
                return
            entry = self._entries[request_id] = _Entry(flat.copy(), now)
            self._maturing.append((now, request_id, entry))
            self._sweep(now)

    def sweep(self) -> None:
        """Count the predictions that reached the horizon and expire old ids (scrapes call it,
        so the cohort counters are current when read)."""
        with self._lock:
            self._sweep(self._clock())

    def _sweep(self, now: float) -> None:
        m = self.metrics
        while self._maturing and self._maturing[0][0] + self.horizon <= now:
            _, rid, entry = self._maturing.popleft()
            if self._entries.get(rid) is not entry:
                continue  # evicted by the bound before its horizon: not in the cohort
            m.h_predictions.inc(entry.values.size)
            if entry.horizon_labelled:
                m.h_labelled.inc(entry.horizon_labelled)
                m.h_correct.inc(entry.horizon_correct)
                for err in entry.horizon_errors:
                    m.h_error.observe(err)
        while self._entries:
            rid, entry = next(iter(self._entries.items()))
            over = len(self._entries) > self.max_ids
            if not over and entry.at + self.ttl > now:
                break
            self._entries.popitem(last=False)
            if over:
                m.untracked["evicted"].inc()
            self._forget(rid, "duplicate" if entry.labelled else "expired")

    def _forget(self, rid: str, outcome: Outcome) -> None:
        self._gone[rid] = outcome
        self._gone.move_to_end(rid)
        while len(self._gone) > self.max_ids:
            self._gone.popitem(last=False)

    def holds(self, request_id: str) -> bool:
        """Whether this table knows the id at all (held, expired or already labelled)."""
        with self._lock:
            return request_id in self._entries or request_id in self._gone

    def join(self, request_id: str, truth: object) -> Outcome:
        """Join ground truth (a value, or a list with one value per row) to a prediction."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            entry = self._entries.get(request_id)
            if entry is None:
                return self._gone.get(request_id, "unknown")
            if entry.labelled:
                return "duplicate"
            truths = truth if isinstance(truth, list) else [truth]
            if len(truths) != entry.values.size:
                return "invalid"
            in_horizon = now - entry.at <= self.horizon
            if entry.values.dtype.kind == "f":
                ok = self._join_targets(entry, truths, in_horizon)
            else:
                ok = self._join_labels(entry, truths, in_horizon)
            if not ok:
                return "invalid"
            entry.labelled = True
            self.metrics.delay.observe(max(now - entry.at, 0.0))
            return "joined" if in_horizon else "late"

    def _join_labels(self, entry: _Entry, truths: Sequence[object], in_horizon: bool) -> bool:
        keys = [truth_key(t) for t in truths]
        if any(k is None for k in keys):
            return False
        m = self.metrics
        predicted = [truth_key(v.item()) for v in entry.values]
        right = 0
        for key, pred in zip(keys, predicted, strict=True):
            assert key is not None
            cls = m.cls(key)
            m.labelled.labels(*m.label_values, cls).inc()
            if key == pred:
                right += 1
                m.correct.labels(*m.label_values, cls).inc()
        if in_horizon:
            entry.horizon_labelled, entry.horizon_correct = len(keys), right
        return True

    def _join_targets(self, entry: _Entry, truths: Sequence[object], in_horizon: bool) -> bool:
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in truths):
            return False
        targets = np.asarray(truths, dtype=np.float64)
        errors = np.abs(entry.values.astype(np.float64) - targets)
        if not np.all(np.isfinite(errors)):
            return False
        m = self.metrics
        m.labelled.labels(*m.label_values, "").inc(errors.size)
        for err in errors:
            m.abs_error.observe(float(err))
        if in_horizon:
            entry.horizon_labelled = int(errors.size)
            entry.horizon_errors = [float(e) for e in errors]
        return True
