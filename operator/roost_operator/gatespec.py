"""The canary gates' part of the spec: margins, modes and the v1alpha1 names they replace.

Kept apart from `roost_operator.spec` (which re-exports every name) so the gate settings and
their parsing live next to each other; docs/analysis.md says what each margin means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


class GateSpecError(ValueError):
    """A gate setting is wrong; `roost_operator.spec` turns it into a `SpecError`."""


GateMode = Literal["enforce", "observe"]
"""`enforce`: the gate's verdict counts and it spends a share of `alpha`; `observe`: computed,
shown and recorded, never changes the rollout's verdict."""
OnInconclusive = Literal["rollback", "pause", "promote"]
DEFAULT_MIN_DRIFT_ROWS = 200
"""Legacy point check: below this many rows in the drift windows `maxPSI` abstains."""


@dataclass(frozen=True)
class ErrorRateGate:
    """`gates.errorRate`: canary 5xx share (503/504 and 4xx apart) minus the stable's."""

    margin: float = 0.005
    """Largest tolerated excess, as a share (0.005 = 0.5 percentage points)."""
    client_error_margin: float | None = None
    """Opt-in: also test the canary's 4xx share against the stable's with this margin (a
    canary refusing requests the stable accepts); off by default, so malformed requests from
    clients never fail a canary."""
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class LatencyGate:
    """`gates.latency`: canary vs stable latency distribution from the histogram buckets."""

    max_ratio: float | None = None
    """The canary's `quantile` may be at most this many times the stable's (`maxP99Ratio`)."""
    quantile: float = 0.99
    max_p99_seconds: float | None = None
    """Legacy absolute ceiling, a point check on each interval (uses `failureLimit`)."""
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class DivergenceGate:
    """`gates.divergence`: canary vs stable prediction shares per class or output bin."""

    margin: float = 0.05
    """Largest tolerated change of any one bin's share of predictions (0.05 = 5 points)."""
    max_js_distance: float | None = None
    """Legacy: shown beside the test as the effect size; it no longer decides."""
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class DriftGate:
    """`gates.drift`: canary inputs' bin shares against the reference profile's."""

    margin: float = 0.1
    """Largest tolerated change of any feature bin's share against the profile."""
    max_psi: float | None = None
    """Legacy: PSI of the accumulated counts, shown as the effect size."""
    min_rows: int = DEFAULT_MIN_DRIFT_ROWS
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class ShadowGate:
    """`gates.shadowDisagreement`: the canary's paired disagreement rate in a shadow step.

    Judged only during shadow steps, on the stable pods' comparisons of the same requests
    (docs/analysis.md, "Shadow step"); implied with its defaults by any shadow step.
    """

    max_rate: float = 0.05
    """Largest tolerated share of compared rows that disagree (another label; a regressor's
    output beyond `tolerance`; no usable answer)."""
    tolerance: float = 0.0
    """Regressors: the largest |stable - canary| that still agrees."""
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class AccuracyGate:
    """`gates.accuracy` (classifiers): canary share of wrong labelled predictions minus the
    stable's, over predictions whose labels had the same horizon to arrive."""

    max_drop: float = 0.02
    """Largest tolerated accuracy drop against stable (`maxDropVsStable`, 0.02 = 2 points)."""
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class QualityErrorGate:
    """`gates.error` (regressors): canary share of labelled predictions whose absolute error
    exceeds the stable's `quantile` error (so far) minus the stable's share."""

    max_increase: float = 0.05
    """Largest tolerated increase of that share (`maxIncreaseVsStable`, 0.05 = 5 points)."""
    quantile: float = 0.5
    """Which quantile of the stable's absolute error sets the threshold (the median)."""
    mode: GateMode = "enforce"


@dataclass(frozen=True)
class GatesSpec:
    """`spec.rollout.analysis.gates`; a None gate is switched off."""

    error_rate: ErrorRateGate | None = None
    latency: LatencyGate | None = None
    divergence: DivergenceGate | None = None
    drift: DriftGate | None = None
    shadow: ShadowGate | None = None
    """Judged in shadow steps only; not one of the traffic gates `any` asks about."""
    accuracy: AccuracyGate | None = None
    error: QualityErrorGate | None = None

    @property
    def any(self) -> bool:
        """Whether any traffic gate (judging weighted steps) is configured."""
        gates = (self.error_rate, self.latency, self.divergence, self.drift, self.accuracy)
        return any(g is not None for g in (*gates, self.error))

    def enforced(self) -> int:
        """How many gates spend `alpha` (observe-mode gates spend none)."""
        # A latency gate with only the maxP99Seconds point check runs no sequential test.
        latency = self.latency if self.latency and self.latency.max_ratio is not None else None
        traffic = (self.error_rate, latency, self.divergence, self.drift)
        gates = (*traffic, self.shadow, self.accuracy, self.error)
        return sum(1 for g in gates if g is not None and g.mode == "enforce")


def _count(raw: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GateSpecError(f"{where}.{key} must be an integer of at least 1, got {value!r}")
    return value


def _number(raw: Mapping[str, Any], key: str, where: str, lo: float, hi: float) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GateSpecError(f"{where}.{key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise GateSpecError(f"{where}.{key} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _mode(raw: Mapping[str, Any], where: str) -> GateMode:
    mode = raw.get("mode", "enforce")
    if mode not in ("enforce", "observe"):
        raise GateSpecError(f"{where}.mode must be enforce or observe, not {mode!r}")
    return "enforce" if mode == "enforce" else "observe"


def parse_gates(raw: Any) -> GatesSpec:
    """Parse `spec.rollout.analysis.gates`; raises `GateSpecError` saying what to fix."""
    gates = raw if isinstance(raw, Mapping) else {}
    where = "spec.rollout.analysis.gates"
    out: dict[str, Any] = {}
    if isinstance(e := gates.get("errorRate"), Mapping):
        w = f"{where}.errorRate"
        # Legacy `max` (an absolute ceiling on one window) becomes the margin over stable.
        margin = _number(e, "margin", w, 0, 1)
        margin = margin if margin is not None else _number(e, "max", w, 0, 1)
        out["error_rate"] = ErrorRateGate(
            margin=0.005 if margin is None else margin,
            client_error_margin=_number(e, "clientErrorMargin", w, 0, 1),
            mode=_mode(e, w),
        )
    if isinstance(lat := gates.get("latency"), Mapping):
        w = f"{where}.latency"
        ratio = _number(lat, "maxRatio", w, 1, 1e6)
        ratio = ratio if ratio is not None else _number(lat, "maxP99Ratio", w, 1e-9, 1e6)
        seconds = _number(lat, "maxP99Seconds", w, 1e-9, 1e6)
        if ratio is None and seconds is None:
            raise GateSpecError(f"{w} needs maxRatio (or maxP99Ratio), maxP99Seconds or both")
        q = _number(lat, "quantile", w, 0.5, 0.999)
        out["latency"] = LatencyGate(
            max_ratio=None if ratio is None else max(ratio, 1.0),
            quantile=0.99 if q is None else q,
            max_p99_seconds=seconds,
            mode=_mode(lat, w),
        )
    if isinstance(d := gates.get("divergence"), Mapping):
        w = f"{where}.divergence"
        margin = _number(d, "margin", w, 1e-6, 1)
        out["divergence"] = DivergenceGate(
            margin=0.05 if margin is None else margin,
            max_js_distance=_number(d, "maxJSDistance", w, 0, 1),
            mode=_mode(d, w),
        )
    if isinstance(dr := gates.get("drift"), Mapping):
        w = f"{where}.drift"
        margin = _number(dr, "margin", w, 1e-6, 1)
        out["drift"] = DriftGate(
            margin=0.1 if margin is None else margin,
            max_psi=_number(dr, "maxPSI", w, 0, 1e6),
            min_rows=_count(dr, "minRows", w, DEFAULT_MIN_DRIFT_ROWS),
            mode=_mode(dr, w),
        )
    if isinstance(sh := gates.get("shadowDisagreement"), Mapping):
        w = f"{where}.shadowDisagreement"
        rate = _number(sh, "maxRate", w, 0, 1)
        tolerance = _number(sh, "tolerance", w, 0, 1e12)
        out["shadow"] = ShadowGate(
            max_rate=0.05 if rate is None else rate,
            tolerance=0.0 if tolerance is None else tolerance,
            mode=_mode(sh, w),
        )
    if isinstance(acc := gates.get("accuracy"), Mapping):
        w = f"{where}.accuracy"
        drop = _number(acc, "maxDropVsStable", w, 0, 1)
        out["accuracy"] = AccuracyGate(0.02 if drop is None else drop, _mode(acc, w))
    if isinstance(err := gates.get("error"), Mapping):
        w = f"{where}.error"
        rise = _number(err, "maxIncreaseVsStable", w, 0, 1)
        q = _number(err, "quantile", w, 0.05, 0.95)
        out["error"] = QualityErrorGate(
            max_increase=0.05 if rise is None else rise,
            quantile=0.5 if q is None else q,
            mode=_mode(err, w),
        )
    return GatesSpec(**out)
