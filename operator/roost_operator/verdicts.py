"""The sequential canary-vs-stable gates: one interval's counts in, accumulated evidence out.

Pure (numpy and `roost_operator.sequential`): no I/O, no Kubernetes. The analysis sources
reduce each interval to one `Counts` per revision (increases since the previous analysis);
`judge_interval` adds them to the evidence persisted in ``status.canary.evidence`` and judges
every configured gate against its margin with an anytime-valid confidence sequence
(docs/analysis.md). `alpha` is split evenly over the enforced gates; observe-mode gates are
judged at the same per-gate level but never change the verdict and spend nothing.

Gates:

- ``errorRate``: canary share of 5xx answers other than 503/504 minus the stable's, against
  ``+margin``. 503/504 (overload: shed or deadline) and 4xx (client errors) are counted and
  shown, never judged.
- ``latency``: canary share of requests slower than ``r x L`` minus the stable's share slower
  than ``L``, where ``L`` is the bucket bound at the stable's `quantile` so far (from earlier
  intervals only, so it is predictable) and ``r`` the ratio margin rounded up to a bucket
  ratio. If the canary is exactly ``r`` times slower both shares are equal, so the null holds
  at exactly the margin whatever the stable's distribution.
- ``divergence``: every prediction bin's canary share minus its stable share, two-sided
  against ``±margin``; the JS distance of the accumulated counts is shown as the effect size.
- ``drift``: every feature bin's canary share minus the profile's share, two-sided against
  ``±margin``; PSI of the accumulated counts is shown as the effect size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from roost_serving import drift

from roost_operator import sequential as sq
from roost_operator.compare import edges_from_uppers
from roost_operator.compare import version as compare_version
from roost_operator.histograms import count_above, quantile_edge
from roost_operator.quality_gates import Quality, judge_quality
from roost_operator.routing import check_routing
from roost_operator.spec import (
    AnalysisSpec,
    DivergenceGate,
    DriftGate,
    ErrorRateGate,
    LatencyGate,
)

CLASSES = ("2xx", "4xx", "5xx", "overload")
"""How request codes are shown; only ``5xx`` (server errors) is judged."""


def code_class(code: str) -> str:
    """``5xx`` for server errors, ``overload`` for 503/504, ``4xx``; everything else ``2xx``."""
    if code in ("503", "504"):
        return "overload"
    if code.startswith("5"):
        return "5xx"
    if code.startswith("4"):
        return "4xx"
    return "2xx"


@dataclass(frozen=True)
class Counts:
    """What one revision did during one interval, summed over its pods."""

    requests: Mapping[str, float] = field(default_factory=dict)
    """Infer requests by HTTP status code."""
    buckets: Mapping[float, float] = field(default_factory=dict)
    """Cumulative request-latency bucket counts by upper bound (``inf`` included)."""
    predictions: Mapping[str, float] = field(default_factory=dict)
    """Predictions per class or output bin (bins both revisions share)."""
    feature_bins: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Rows per feature and profile bin (``missing`` apart)."""
    reference: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """The profile's share per feature and bin (gauges: the latest value, not an increase)."""
    prediction_edges: Mapping[str, float] = field(default_factory=dict)
    """Upper edge per output bin of a regressor (gauges); empty for classifiers."""
    compare: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Predictions per version of the pushed (stable's) output edges and bin."""
    binning: Mapping[str, str] = field(default_factory=dict)
    """A hash of each feature's profile bins (gauges): which features both arms bin alike."""
    quality: Quality = field(default_factory=Quality)
    """Labelled predictions of the horizon cohort (the accuracy and error gates)."""

    def by_class(self) -> dict[str, float]:
        """Requests per `CLASSES` entry."""
        out = dict.fromkeys(CLASSES, 0.0)
        for code, n in self.requests.items():
            out[code_class(code)] += n
        return out

    @property
    def total(self) -> float:
        """All infer requests."""
        return float(sum(self.requests.values()))


@dataclass(frozen=True)
class GateVerdict:
    """One gate judged on the evidence so far."""

    name: str
    mode: str
    verdict: str
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    margin: float | None = None
    effect: float | None = None
    """The effect size shown to people (JS distance, PSI, canary/stable quantile ratio)."""
    words: str = ""

    def to_status(self) -> dict[str, Any]:
        """One entry of ``status.canary.lastAnalysis.gates``."""
        out: dict[str, Any] = {"name": self.name, "mode": self.mode, "verdict": self.verdict}
        for key, v in (
            ("estimate", self.estimate),
            ("lower", self.lower),
            ("upper", self.upper),
            ("threshold", self.margin),
            ("value", self.effect),
        ):
            if v is not None and math.isfinite(v):
                out[key] = round(v, 6)
        out["message"] = self.words
        return out


# Why a gate may have nothing to judge, said where the user will look.
_HINTS = {
    "drift": "no roost_feature_bin_total from the canary (is spec.model.profileUri set?)",
    "divergence": "no roost_predictions_total from canary or stable yet",
}


def _pp(v: float) -> str:
    return f"{100 * v:+.2f} pp".replace("-", "\N{MINUS SIGN}")


def _interval(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"[interval after {sq.MIN_INTERVALS} intervals]"
    return f"[{_pp(lo)[:-3]}, {_pp(hi)}]"


def _outcome(verdict: str, confidence: float) -> str:
    pct = f"{100 * confidence:.4g} % confidence"
    if verdict == "pass":
        return f"within margin, {pct}"
    if verdict == "fail":
        return f"worse than margin, {pct}"
    return "not sure yet"


def _diff_state(raw: Any, k: int) -> sq.DiffState:
    return sq.DiffState.from_status(raw, k)


def _error_gate(
    evidence: dict[str, Any],
    key: str,
    what: str,
    canary: Counts,
    stable: Counts,
    margin: float,
    alpha: float,
) -> tuple[str, float, float, float]:
    state = _diff_state(evidence.get(key), 1)
    c, s = canary.by_class(), stable.by_class()
    state = sq.update(state, [c[what]], [canary.total], [s[what]], [stable.total])
    evidence[key] = state.to_status()
    code, lower, upper = sq.judge_many(state, alpha, margin)
    return sq.VERDICTS[int(code)], float(state.estimate[0]), float(lower[0]), float(upper[0])


def _latency_gate(
    evidence: dict[str, Any], canary: Counts, stable: Counts, gate: LatencyGate, alpha: float
) -> tuple[str, float, float, float, float | None]:
    """Fail: two-sample, canary above r x L vs stable above L. Pass: one-sample, canary above
    r x L confidently below 1 - quantile (the canary's quantile is below r x L). Each side
    spends at most `alpha` in its own direction."""
    raw = evidence.get("latency") or {}
    state = _diff_state(raw.get("state"), 1)
    tail = _diff_state(raw.get("tail"), 1)
    past = {float(k): float(v) for k, v in (raw.get("stable") or {}).items()}
    edge = quantile_edge(past, gate.quantile)
    bounds = sorted(b for b in canary.buckets if math.isfinite(b))
    ratio = gate.max_ratio or 1.0
    n_c = canary.buckets.get(math.inf, 0.0)
    if edge is not None and math.isfinite(edge) and n_c > 0:
        # The canary's threshold: the first bound at or above ratio x edge (rounding the
        # ratio up keeps the test valid; the docs state the smallest resolvable ratio).
        scaled = next((b for b in bounds if b >= ratio * edge * (1 - 1e-3)), None)
        if scaled is not None:
            slow = count_above(canary.buckets, scaled)
            n_s = stable.buckets.get(math.inf, 0.0)
            if n_s > 0:
                state = sq.update(state, [slow], [n_c], [count_above(stable.buckets, edge)], [n_s])
            tail = sq.update(tail, [slow], [n_c], None, None, [1 - gate.quantile])
    seen = _add(raw.get("canary"), canary.buckets)
    for b, n in stable.buckets.items():
        past[b] = past.get(b, 0.0) + n
    evidence["latency"] = {
        "state": state.to_status(),
        "tail": tail.to_status(),
        "stable": {str(k): v for k, v in past.items()},
        "canary": {str(k): v for k, v in seen.items()},
    }
    fail, lower, upper = sq.judge_many(state, alpha, 0.0)
    ok, _, _ = sq.judge_many(tail, alpha, 0.0)
    verdict = "fail" if fail == sq.FAIL else "pass" if ok == sq.PASS else "inconclusive"
    c_edge, s_edge = quantile_edge(seen, gate.quantile), quantile_edge(past, gate.quantile)
    effect = c_edge / s_edge if c_edge and s_edge and math.isfinite(c_edge * s_edge) else None
    return verdict, float(state.estimate[0]), float(lower[0]), float(upper[0]), effect


def _add(raw: Any, buckets: Mapping[float, float]) -> dict[float, float]:
    out = {float(k): float(v) for k, v in (raw or {}).items()}
    for b, n in buckets.items():
        out[b] = out.get(b, 0.0) + n
    return out


def _bins_gate(
    evidence: dict[str, Any],
    key: str,
    bins: Sequence[str],
    x_c: Sequence[float],
    n_c: Sequence[float],
    x_s: Sequence[float] | None,
    n_s: Sequence[float] | None,
    reference: Sequence[float] | None,
    margin: float,
    alpha: float,
) -> tuple[str, int, sq.DiffState, Any, Any]:
    """Two-sided per-bin test; the bin set grows (new bins start with no evidence)."""
    raw = evidence.get(key) or {}
    known = [str(b) for b in raw.get("bins") or []]
    old = _diff_state(raw.get("state"), len(known))
    order = known + [b for b in bins if b not in known]
    state = sq.DiffState(
        *(np.concatenate([getattr(old, f), np.zeros(len(order) - len(known))]) for f in sq.FIELDS)
    )
    pos = {b: i for i, b in enumerate(bins)}

    def aligned(values: Sequence[float] | None) -> Any:
        if values is None:
            return None
        return np.asarray([values[pos[b]] if b in pos else 0.0 for b in order])

    n_c_all = np.asarray([n_c[pos[b]] if b in pos else 0.0 for b in order])
    n_s_all = None if n_s is None else np.asarray([n_s[pos[b]] if b in pos else 0.0 for b in order])
    state = sq.update(state, aligned(x_c), n_c_all, aligned(x_s), n_s_all, aligned(reference))
    evidence[key] = {"bins": order, "state": state.to_status()}
    if not order:
        return "inconclusive", 0, state, np.zeros(0), np.zeros(0)
    code, lower, upper = sq.judge_many(state, alpha, margin, -margin)
    # The bin shown: the one furthest outside its margin, or with the largest change.
    est = np.nan_to_num(state.estimate)
    worst = int(np.argmax(np.maximum(lower - margin, -margin - upper) if code != 0 else abs(est)))
    return sq.VERDICTS[int(code)], worst, state, lower, upper


def _same_bins(canary: Counts, stable: Counts) -> bool:
    """Whether both revisions bin predictions alike (class labels always; regressor edges)."""
    a, b = canary.prediction_edges, stable.prediction_edges
    if not a or not b:
        return True
    return a.keys() == b.keys() and all(a[k] == b[k] or math.isclose(a[k], b[k]) for k in a)


def _divergence_gate(
    evidence: dict[str, Any], canary: Counts, stable: Counts, gate: DivergenceGate, alpha: float
) -> GateVerdict:
    key, on, c_bins, s_bins = "divergence", "", canary.predictions, stable.predictions
    if not _same_bins(canary, stable):
        # A retrained regressor's profile has other output edges: bin i of one revision is not
        # bin i of the other. Both arms also count on the stable's edges, pushed to every pod
        # (roost_operator.compare): judge those, for the stable's own edges' version only.
        v = compare_version(edges_from_uppers(stable.prediction_edges))
        key, on = "compare", f" on the stable's bins ({v})"
        c_bins, s_bins = canary.compare.get(v) or {}, stable.compare.get(v) or {}
        if not evidence.get(key) and not (c_bins and s_bins):
            words = (
                "divergence: canary and stable bin predictions with different output edges (a "
                f"retrained profile); waiting for both to count on the stable's edges ({v})"
            )
            return GateVerdict(
                "divergence", gate.mode, "inconclusive", margin=gate.margin, words=words
            )
    bins = sorted(set(c_bins) | set(s_bins))
    nc, ns = sum(c_bins.values()), sum(s_bins.values())
    verdict, worst, state, lower, upper = _bins_gate(
        evidence,
        key,
        bins,
        [c_bins.get(b, 0.0) for b in bins],
        [nc] * len(bins),
        [s_bins.get(b, 0.0) for b in bins],
        [ns] * len(bins),
        None,
        gate.margin,
        alpha,
    )
    order = evidence[key]["bins"]
    js = (
        drift.js_distance(state.x_c, state.x_s)
        if state.x_c.sum() > 0 and state.x_s.sum() > 0
        else None
    )
    return _bins_verdict(
        "divergence", f"predictions {order[worst]!s} share{on}", gate.mode, verdict,
        state, worst, lower, upper, gate.margin, js, "JS", alpha,
    )  # fmt: skip


def _drift_gate(
    evidence: dict[str, Any], canary: Counts, gate: DriftGate, alpha: float
) -> GateVerdict:
    bins, x, n, ref = [], [], [], []
    for feature, counts in sorted(canary.feature_bins.items()):
        shares = canary.reference.get(feature) or {}
        rows = sum(v for b, v in counts.items() if b in shares)
        for b, share in sorted(shares.items()):
            bins.append(f"{feature}/{b}")
            x.append(counts.get(b, 0.0))
            n.append(rows)
            ref.append(share)
    verdict, worst, state, lower, upper = _bins_gate(
        evidence, "drift", bins, x, n, None, None, ref, gate.margin, alpha
    )
    order = evidence["drift"]["bins"]
    feature = order[worst].rsplit("/", 1)[0] if order else ""
    mask = np.asarray([b.rsplit("/", 1)[0] == feature for b in order], dtype=bool)
    psi = (
        drift.psi(state.x_s[mask], state.x_c[mask]) if order and state.x_c[mask].sum() > 0 else None
    )
    return _bins_verdict(
        "drift", f"input {order[worst] if order else '-'} share", gate.mode, verdict,
        state, worst, lower, upper, gate.margin, psi, f"PSI of {feature}", alpha,
    )  # fmt: skip


def _bins_verdict(
    name: str,
    what: str,
    mode: str,
    verdict: str,
    state: sq.DiffState,
    worst: int,
    lower: Any,
    upper: Any,
    margin: float,
    effect: float | None,
    effect_name: str,
    alpha: float,
) -> GateVerdict:
    if state.w.size == 0:
        hint = _HINTS.get(name, "no data yet")
        return GateVerdict(name, mode, "inconclusive", margin=margin, words=f"{name}: {hint}")
    est, lo, hi = float(state.estimate[worst]), float(lower[worst]), float(upper[worst])
    shown = f", {effect_name} {effect:.3f}" if effect is not None else ""
    words = (
        f"{what} {_pp(est) if math.isfinite(est) else 'n/a'} {_interval(lo, hi)}, margin "
        f"±{100 * margin:.3g} pp: {_outcome(verdict, 1 - alpha)}{shown}"
    )
    return GateVerdict(name, mode, verdict, est, lo, hi, margin, effect, words)


@dataclass(frozen=True)
class Judged:
    """One analysis: per-gate verdicts, the rollout's verdict and the evidence to persist."""

    verdict: str
    gates: tuple[GateVerdict, ...]
    evidence: dict[str, Any]
    canary_requests: float
    message: str
    paused: str = ""
    """Why the rollout must pause (the routing check found non-random routing), or empty."""


def judge_interval(
    spec: AnalysisSpec, evidence: Mapping[str, Any] | None, canary: Counts, stable: Counts
) -> Judged:
    """Add one interval to the evidence and judge every configured gate.

    Verdict: ``fail`` if an enforced gate is worse than its margin with confidence; ``pass``
    if every enforced gate is within its margin with confidence and the canary has served
    `spec.min_requests` requests in the rollout; else ``inconclusive``.
    """
    ev: dict[str, Any] = dict(evidence or {})
    g = spec.gates
    alpha = spec.alpha / max(g.enforced(), 1)
    totals = {
        side: _add_classes((ev.get("requests") or {}).get(side), counts.by_class())
        for side, counts in (("canary", canary), ("stable", stable))
    }
    ev["requests"] = totals
    ev["intervals"] = int(ev.get("intervals") or 0) + 1
    out: list[GateVerdict] = []
    if g.error_rate is not None:
        out.extend(_error_gates(ev, canary, stable, g.error_rate, totals["canary"], alpha))
    if g.latency is not None and g.latency.max_ratio is not None:
        verdict, est, lo, hi, ratio = _latency_gate(ev, canary, stable, g.latency, alpha)
        q = f"p{100 * g.latency.quantile:g}"
        shown = f", canary/stable {q} {ratio:.2f}" if ratio is not None else ""
        words = (
            f"latency: share above {g.latency.max_ratio:g}x stable {q}, canary minus stable "
            f"{_pp(est) if math.isfinite(est) else 'n/a'} {_interval(lo, hi)}, margin 0: "
            f"{_outcome(verdict, 1 - alpha)}{shown}"
        )
        out.append(GateVerdict("latency", g.latency.mode, verdict, est, lo, hi, 0.0, ratio, words))
    if g.divergence is not None:
        out.append(_divergence_gate(ev, canary, stable, g.divergence, alpha))
    if g.drift is not None:
        out.append(_drift_gate(ev, canary, g.drift, alpha))
    for qv in judge_quality(ev, canary.quality, stable.quality, g, alpha):
        out.append(GateVerdict(qv.name, qv.mode, qv.verdict, qv.estimate, qv.lower, qv.upper,
                               qv.margin, qv.effect, qv.words))  # fmt: skip
    enforced = [v for v in out if v.mode == "enforce"]
    served = sum(totals["canary"].values())
    routing = check_routing(
        ev,
        canary.feature_bins,
        canary.reference,
        stable.feature_bins,
        stable.reference,
        # Pods export how they bin; hand-made counts (tests, benchmarks) without it compare by
        # the shares alone.
        binning=(canary.binning, stable.binning) if canary.binning or stable.binning else None,
    )
    if routing.features:
        # Shown beside the gates, never as a failing one: a mismatch is no model verdict.
        out.append(GateVerdict("routing", "observe", "inconclusive", words=routing.words))
    if routing.mismatch:
        # Canary and stable did not see the same traffic: no comparison can be trusted, so
        # neither a pass nor a fail; the rollout pauses for a person (rollout.machine).
        return Judged("inconclusive", tuple(out), ev, served, routing.words, routing.words)
    if any(v.verdict == "fail" for v in enforced):
        verdict = "fail"
        message = "; ".join(v.words for v in enforced if v.verdict == "fail")
    elif enforced and all(v.verdict == "pass" for v in enforced) and served >= spec.min_requests:
        verdict = "pass"
        message = f"all gates within margin on {int(served)} canary requests"
    else:
        verdict = "inconclusive"
        waiting = [v.name for v in enforced if v.verdict != "pass"]
        message = (
            f"{int(served)} canary requests so far, {spec.min_requests} needed"
            if served < spec.min_requests
            else "not sure yet: " + ", ".join(waiting)
        )
    return Judged(verdict, tuple(out), ev, served, message)


def _error_gates(
    ev: dict[str, Any],
    canary: Counts,
    stable: Counts,
    gate: ErrorRateGate,
    seen: Mapping[str, float],
    alpha: float,
) -> list[GateVerdict]:
    """``errorRate`` (5xx) and, when asked for, ``clientErrors`` (4xx); they share the gate's
    alpha."""
    tests = [("errorRate", "5xx", gate.margin)]
    if gate.client_error_margin is not None:
        tests.append(("clientErrors", "4xx", gate.client_error_margin))
    share = alpha / len(tests)
    out = []
    for name, what, margin in tests:
        verdict, est, lo, hi = _error_gate(ev, name, what, canary, stable, margin, share)
        words = (
            f"{what} {_pp(est) if math.isfinite(est) else 'n/a'} {_interval(lo, hi)}, margin "
            f"{_pp(margin)}: {_outcome(verdict, 1 - share)} (canary {int(seen['5xx'])} 5xx, "
            f"{int(seen['overload'])} overload 503/504, {int(seen['4xx'])} 4xx of "
            f"{int(sum(seen.values()))})"
        )
        out.append(GateVerdict(name, gate.mode, verdict, est, lo, hi, margin, None, words))
    return out


def _add_classes(raw: Any, counts: Mapping[str, float]) -> dict[str, float]:
    base = raw if isinstance(raw, Mapping) else {}
    return {k: float(base.get(k) or 0.0) + counts.get(k, 0.0) for k in CLASSES}
