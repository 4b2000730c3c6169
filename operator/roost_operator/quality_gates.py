"""The accuracy and error gates: canary against stable on ground truth joined to predictions.

Pure (numpy and `roost_operator.sequential`): no I/O, no Kubernetes. Each serving pod joins
labels to its own predictions (``roost_serving.quality``) and counts a prediction for these
gates once, when it is the *label horizon* old (``--label-horizon``): the row itself
(``roost_quality_horizon_predictions_total``), whether its label arrived within the horizon
(``_labelled_total``), whether it was right (``_correct_total``, classifiers) and its absolute
error (``_abs_error`` histogram, regressors). One analysis interval therefore holds, for both
revisions, the predictions made during the same earlier interval, each of which had exactly
the horizon for its label to arrive: a label that is slow to come cannot favour the revision
whose predictions are older, and late labels (after the horizon) never count. docs/analysis.md
("Accuracy") states what remains (labels whose *arrival* depends on the prediction itself).

- ``accuracy`` (classifiers): the canary's share of *wrong* labelled predictions minus the
  stable's, one-sided against ``+maxDropVsStable``: an accuracy drop of at most that much is
  tolerated. The test is the error-rate gate's difference of proportions with the labelled
  rows as trials.
- ``error`` (regressors): the share of labelled predictions whose absolute error exceeds
  ``E``, canary minus stable, one-sided against ``+maxIncreaseVsStable``, where ``E`` is the
  bucket bound at the stable's `quantile` absolute error *in earlier intervals* (so it is
  fixed before the interval's data is seen, as the latency gate's edge). Both arms are judged
  against the same ``E``, so the null holds at exactly the margin whatever the error scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roost_operator import sequential as sq
from roost_operator.gatespec import AccuracyGate, GatesSpec, QualityErrorGate
from roost_operator.histograms import count_above, quantile_edge


@dataclass(frozen=True)
class Quality:
    """One revision's horizon cohort in one interval, summed over its pods."""

    matured: float = 0.0
    """Predicted rows that reached the horizon (labelled or not)."""
    labelled: float = 0.0
    """Of those, rows whose label arrived within the horizon."""
    correct: float = 0.0
    """Of those, rows predicted right (classifiers)."""
    error_buckets: Mapping[float, float] = field(default_factory=dict)
    """Cumulative absolute-error bucket counts by upper bound (regressors)."""


@dataclass(frozen=True)
class QualityVerdict:
    """One quality gate judged (turned into a `verdicts.GateVerdict` by the caller)."""

    name: str
    mode: str
    verdict: str
    estimate: float
    lower: float
    upper: float
    margin: float
    effect: float | None
    words: str


def _pp(v: float) -> str:
    return f"{100 * v:+.2f} pp".replace("-", "\N{MINUS SIGN}") if math.isfinite(v) else "n/a"


def _bounds(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"[interval after {sq.MIN_INTERVALS} intervals with labels]"
    return f"[{_pp(lo)[:-3]}, {_pp(hi)}]"


def _outcome(verdict: str, alpha: float) -> str:
    pct = f"{100 * (1 - alpha):.4g} % confidence"
    return {"pass": f"within margin, {pct}", "fail": f"worse than margin, {pct}"}.get(
        verdict, "not sure yet"
    )


def _totals(raw: Any, canary: Quality, stable: Quality) -> dict[str, float]:
    base = raw if isinstance(raw, Mapping) else {}
    out = {}
    for side, q in (("canary", canary), ("stable", stable)):
        for what in ("matured", "labelled", "correct"):
            key = f"{side}_{what}"
            out[key] = float(base.get(key) or 0.0) + float(getattr(q, what))
    return out


def _label_rates(t: Mapping[str, float]) -> str:
    def rate(side: str) -> str:
        n = t[f"{side}_matured"]
        return f"{100 * t[f'{side}_labelled'] / n:.0f} %" if n else "-"

    return (
        f"labelled within the horizon: canary {int(t['canary_labelled'])} ({rate('canary')}), "
        f"stable {int(t['stable_labelled'])} ({rate('stable')})"
    )


def accuracy_gate(
    evidence: dict[str, Any], canary: Quality, stable: Quality, gate: AccuracyGate, alpha: float
) -> QualityVerdict:
    """Wrong share of labelled predictions, canary minus stable, against ``+max_drop``."""
    raw = evidence.get("accuracy") or {}
    state = sq.DiffState.from_status(raw.get("state"), 1)
    wrong_c = max(canary.labelled - canary.correct, 0.0)
    wrong_s = max(stable.labelled - stable.correct, 0.0)
    state = sq.update(state, [wrong_c], [canary.labelled], [wrong_s], [stable.labelled])
    totals = _totals(raw.get("totals"), canary, stable)
    evidence["accuracy"] = {"state": state.to_status(), "totals": totals}
    code, lower, upper = sq.judge_many(state, alpha, gate.max_drop)
    verdict = sq.VERDICTS[int(code)]
    est, lo, hi = float(state.estimate[0]), float(lower[0]), float(upper[0])
    acc = {
        side: totals[f"{side}_correct"] / totals[f"{side}_labelled"]
        if totals[f"{side}_labelled"]
        else math.nan
        for side in ("canary", "stable")
    }
    effect = acc["stable"] - acc["canary"]
    words = (
        f"accuracy: canary {100 * acc['canary']:.1f} % vs stable {100 * acc['stable']:.1f} %, "
        f"drop {_pp(est)} {_bounds(lo, hi)}, margin {_pp(gate.max_drop)}: "
        f"{_outcome(verdict, alpha)} ({_label_rates(totals)})"
    )
    if not totals["canary_labelled"] or not totals["stable_labelled"]:
        words = (
            f"accuracy: no labelled predictions past the label horizon from "
            f"{'canary' if not totals['canary_labelled'] else 'stable'} yet (is feedback sent "
            f"to POST /v2/models/<name>/feedback?); {_label_rates(totals)}"
        )
    return QualityVerdict(
        "accuracy", gate.mode, verdict, est, lo, hi, gate.max_drop,
        effect if math.isfinite(effect) else None, words,
    )  # fmt: skip


def error_gate(
    evidence: dict[str, Any],
    canary: Quality,
    stable: Quality,
    gate: QualityErrorGate,
    alpha: float,
) -> QualityVerdict:
    """Share of labelled rows with error above the stable's quantile error, canary minus
    stable, against ``+max_increase``."""
    raw = evidence.get("error") or {}
    state = sq.DiffState.from_status(raw.get("state"), 1)
    past = {float(k): float(v) for k, v in (raw.get("stable") or {}).items()}
    edge = quantile_edge(past, gate.quantile)
    n_c = canary.error_buckets.get(math.inf, 0.0)
    n_s = stable.error_buckets.get(math.inf, 0.0)
    if edge is not None and math.isfinite(edge) and n_c > 0 and n_s > 0:
        state = sq.update(
            state,
            [count_above(canary.error_buckets, edge)],
            [n_c],
            [count_above(stable.error_buckets, edge)],
            [n_s],
        )
    for b, n in stable.error_buckets.items():
        past[b] = past.get(b, 0.0) + n
    totals = _totals(raw.get("totals"), canary, stable)
    evidence["error"] = {
        "state": state.to_status(),
        "stable": {str(k): v for k, v in past.items()},
        "totals": totals,
    }
    code, lower, upper = sq.judge_many(state, alpha, gate.max_increase)
    verdict = sq.VERDICTS[int(code)]
    est, lo, hi = float(state.estimate[0]), float(lower[0]), float(upper[0])
    shown = f"{edge:g}" if edge is not None and math.isfinite(edge) else "(not known yet)"
    words = (
        f"error: share with |error| above the stable's p{100 * gate.quantile:g} {shown}, "
        f"canary minus stable {_pp(est)} {_bounds(lo, hi)}, margin {_pp(gate.max_increase)}: "
        f"{_outcome(verdict, alpha)} ({_label_rates(totals)})"
    )
    return QualityVerdict("error", gate.mode, verdict, est, lo, hi, gate.max_increase, None, words)


def judge_quality(
    evidence: dict[str, Any], canary: Quality, stable: Quality, gates: GatesSpec, alpha: float
) -> list[QualityVerdict]:
    """Every configured quality gate on one interval (`alpha`: each gate's share)."""
    out = []
    if gates.accuracy is not None:
        out.append(accuracy_gate(evidence, canary, stable, gates.accuracy, alpha))
    if gates.error is not None:
        out.append(error_gate(evidence, canary, stable, gates.error, alpha))
    return out
