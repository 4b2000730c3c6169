"""The shadow step, operator side: where stable pods send copies, and the gate that judges it.

Pure (no I/O, no Kubernetes). During a shadow step (``{shadow: 100, pause: 5m}``) the canary
serves no client: the runtime section ``shadow`` (:func:`shadow_section`, pushed by
`roost_operator.runtime_push`) tells the stable pods the canary pods' URLs and the share of
requests to copy, and the stable pods compare the canary's answers with their own for the same
request ids (roost_serving.shadow). Each analysis reads the increases of the stable pods'
``roost_shadow_*`` counters for this canary (:func:`shadow_counts`) and :func:`judge_shadow`
adds them to the rollout's evidence: the disagreement rate (rows that differ or got no usable
answer, over compared rows) against ``gates.shadowDisagreement.maxRate`` with the same
anytime-valid confidence sequence as the traffic gates (docs/analysis.md, "Shadow step").
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from roost_operator import sequential as sq
from roost_operator.gates import AnalysisResult, SeriesKey, Verdict, sum_by
from roost_operator.pods import RevisionPods
from roost_operator.rollout import RolloutState, validation_pending
from roost_operator.spec import AnalysisSpec, ModelDeploymentSpec, ShadowGate
from roost_operator.verdicts import GateVerdict

COPY_TIMEOUT_SECONDS = 2.0
"""How long a stable pod waits for the canary's answer to one copy."""
GATE = "shadowDisagreement"
ROWS = "roost_shadow_rows_total"
DISAGREEMENTS = "roost_shadow_disagreements_total"
REQUESTS = "roost_shadow_requests_total"
DROPPED = "roost_shadow_dropped_total"


def shadow_section(
    spec: ModelDeploymentSpec, state: RolloutState, pods: Mapping[str, RevisionPods]
) -> dict[str, Any] | None:
    """The ``shadow`` runtime section while the canary is in a shadow step with ready pods."""
    c, stable = state.canary, state.stable
    if c is None or stable is None or c.promotion is not None:
        return None
    if validation_pending(spec.rollout, c):
        return None  # copies only once the canary passed its checks before any traffic
    share = spec.rollout.shadow(c.step)
    ready = pods.get(c.revision, RevisionPods()).ready_pods
    if not share or not ready:
        return None
    gate = spec.rollout.analysis.gates.shadow or ShadowGate()
    return {
        "stable": stable.revision,
        "canary": c.revision,
        "targets": [p.url for p in sorted(ready, key=lambda p: p.name)],
        "share": share / 100,
        "tolerance": gate.tolerance,
        "timeoutSeconds": COPY_TIMEOUT_SECONDS,
    }


@dataclass(frozen=True)
class ShadowCounts:
    """What the stable pods compared for one canary during one interval."""

    compared: float = 0.0
    """Copies answered and paired by request id."""
    errors: float = 0.0
    """Copies without a usable answer (errors, timeouts, another id)."""
    rows: float = 0.0
    disagreements: float = 0.0
    """Rows that differ (or errored): the numerator of the disagreement rate."""
    dropped: float = 0.0
    """Copies never sent (the stable's queue was full, binary requests)."""


def shadow_counts(deltas: Sequence[Mapping[SeriesKey, float]], canary: str) -> ShadowCounts:
    """Sum the stable pods' shadow counter increases for copies to `canary`."""
    where = {"canary": canary}
    outcomes: dict[str, float] = {}
    rows = wrong = dropped = 0.0
    for d in deltas:
        for outcome, n in sum_by(d, REQUESTS, "outcome", where).items():
            outcomes[outcome] = outcomes.get(outcome, 0.0) + n
        rows += sum(sum_by(d, ROWS, "canary", where).values())
        wrong += sum(sum_by(d, DISAGREEMENTS, "canary", where).values())
        dropped += sum(sum_by(d, DROPPED, "reason").values())
    return ShadowCounts(
        compared=outcomes.get("compared", 0.0),
        errors=outcomes.get("error", 0.0),
        rows=rows,
        disagreements=wrong,
        dropped=dropped,
    )


Query = Callable[[str, datetime], Awaitable[list[tuple[dict[str, str], float]]]]


async def prometheus_shadow_counts(
    query: Query, selector: str, stable: str, canary: str, window: str, at: datetime
) -> ShadowCounts:
    """`ShadowCounts` from PromQL: increases over `window` of the stable revision's series.

    `selector` holds the namespace and model matchers (already escaped); revisions are
    hashes and need no escaping.
    """
    sel = f'{selector},revision="{stable}"'
    to = f'{sel},canary="{canary}"'
    outcomes, rows, wrong, dropped = await asyncio.gather(
        query(f"sum by (outcome) (increase({REQUESTS}{{{to}}}[{window}]))", at),
        query(f"sum(increase({ROWS}{{{to}}}[{window}]))", at),
        query(f"sum(increase({DISAGREEMENTS}{{{to}}}[{window}]))", at),
        query(f"sum(increase({DROPPED}{{{sel}}}[{window}]))", at),
    )
    by = {labels.get("outcome", ""): v for labels, v in outcomes if math.isfinite(v)}

    def total(series: list[tuple[dict[str, str], float]]) -> float:
        return sum(v for _, v in series if math.isfinite(v))

    return ShadowCounts(
        compared=by.get("compared", 0.0),
        errors=by.get("error", 0.0),
        rows=total(rows),
        disagreements=total(wrong),
        dropped=total(dropped),
    )


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %" if math.isfinite(v) else "n/a"


def judge_shadow(
    spec: AnalysisSpec,
    evidence: Mapping[str, Any] | None,
    counts: ShadowCounts,
    now: datetime,
    notes: Sequence[str] = (),
) -> AnalysisResult:
    """Add one interval's comparisons to the evidence and judge the shadow step.

    Fail: the disagreement rate is above ``maxRate`` with confidence (decisive: the canary is
    rolled back before it served anyone). Pass: below it with confidence, once
    ``minRequests`` copies were compared over the rollout. The gate spends its share of
    `alpha` like every enforced gate.
    """
    gate = spec.gates.shadow or ShadowGate()
    alpha = spec.alpha / max(spec.gates.enforced(), 1)
    ev: dict[str, Any] = dict(evidence or {})
    raw = ev.get("shadow") if isinstance(ev.get("shadow"), Mapping) else {}
    assert isinstance(raw, Mapping)
    state = sq.DiffState.from_status(raw.get("state"), 1)
    if counts.rows > 0:
        # One sample against a known reference of 0: the estimate is the rate itself.
        state = sq.update(state, [counts.disagreements], [counts.rows], None, None, [0.0])
    totals = {
        key: float(raw.get(key) or 0.0) + getattr(counts, key)
        for key in ("compared", "errors", "rows", "disagreements", "dropped")
    }
    ev["shadow"] = {"state": state.to_status(), **totals}
    ev["intervals"] = int(ev.get("intervals") or 0) + 1
    code, lower, upper = sq.judge_many(state, alpha, gate.max_rate)
    judged = sq.VERDICTS[int(code)]
    est, lo, hi = float(state.estimate[0]), float(lower[0]), float(upper[0])
    bounds = (
        f"[{_pct(lo)}, {_pct(hi)}]"
        if math.isfinite(lo) and math.isfinite(hi)
        else (f"[interval after {sq.MIN_INTERVALS} intervals]")
    )
    outcome = {
        "pass": f"within {_pct(gate.max_rate)}, {100 * (1 - alpha):.4g} % confidence",
        "fail": f"above {_pct(gate.max_rate)}, {100 * (1 - alpha):.4g} % confidence",
    }.get(judged, "not sure yet")
    words = (
        f"shadow: canary disagrees on {_pct(est)} {bounds} of {int(totals['rows'])} rows in "
        f"{int(totals['compared'])} compared copies ({int(totals['errors'])} canary errors, "
        f"{int(totals['dropped'])} copies dropped), max {_pct(gate.max_rate)}: {outcome}"
    )
    verdict_gate = GateVerdict(GATE, gate.mode, judged, est, lo, hi, gate.max_rate, None, words)
    verdict: Verdict = "inconclusive"
    enforced = gate.mode == "enforce"
    if enforced and judged == "fail":
        verdict, message = "fail", words
    elif (judged == "pass" or not enforced) and totals["compared"] >= spec.min_requests:
        verdict = "pass"
        message = f"shadow step passed on {int(totals['compared'])} compared copies"
    elif totals["compared"] < spec.min_requests:
        message = (
            f"{int(totals['compared'])} shadow copies compared so far, {spec.min_requests} needed"
        )
    else:
        message = "not sure yet: shadowDisagreement"
    if notes:
        message = "; ".join([message, *notes])
    return AnalysisResult(
        time=now,
        verdict=verdict,
        gates=(verdict_gate,),
        canary_requests=0,  # copies are not client requests: the canary served nobody
        message=message,
        evidence=ev,
        decisive=verdict == "fail",
    )
