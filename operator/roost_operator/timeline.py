"""A recorded timeline of one ModelDeployment's rollouts, and its picture.

`kubectl roost watch NAME --record FILE` appends one JSON sample per poll of the object's status
(canary weight, revisions, the last analysis' gate values and thresholds, outcomes); extra
client-side figures (e.g. request and error rates a load generator saw) may ride along in
`extra`. `kubectl roost history NAME --plot out.png --timeline FILE` draws it: canary weight,
request rate, error rate, p99 latency, drift and divergence against their thresholds, with
promotions and rollbacks marked.

Sampling is pure (a status dict in, a sample dict out), so it is unit-tested without a cluster;
matplotlib is imported only when drawing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roost_operator.times import parse_time

# Gate name (roost_operator.verdicts) -> (panel title, unit scale, unit label). Sequential
# gates draw their estimate with its confidence band against the margin; a point check
# (latencyP99) draws its value against its threshold.
PANELS: tuple[tuple[str, str, float, str], ...] = (
    ("errorRate", "5xx share, canary minus stable", 100.0, "pp"),
    ("latency", "share above ratio x stable's quantile, canary minus stable", 100.0, "pp"),
    ("drift", "input bin share minus profile's (largest change)", 100.0, "pp"),
    ("divergence", "prediction bin share, canary minus stable (largest change)", 100.0, "pp"),
    ("shadowDisagreement", "shadow step: rows where the canary's answer differs", 100.0, "%"),
    ("accuracy", "wrong-answer share, canary minus stable (labelled in time)", 100.0, "pp"),
)
TWO_SIDED = {"drift", "divergence"}
OUTCOME_COLOURS = {"Promoted": "#2a9d4b", "RolledBack": "#d62728", "Aborted": "#ff7f0e"}


def get_path(obj: Mapping[str, Any], *path: str) -> Any:
    """`obj[path[0]][path[1]]...`, or None where a step is missing or not a mapping."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def sample(
    md: Mapping[str, Any], now: datetime, extra: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """One timeline sample from a ModelDeployment object as read from the API."""
    status = md.get("status") or {}
    canary = status.get("canary") or {}
    analysis = canary.get("lastAnalysis") or {}
    gates = {
        str(g["name"]): {
            "value": g.get("value"),
            "threshold": g.get("threshold"),
            "verdict": g.get("verdict"),
            "estimate": g.get("estimate"),
            "lower": g.get("lower"),
            "upper": g.get("upper"),
        }
        for g in analysis.get("gates") or []
        if isinstance(g, Mapping) and "name" in g
    }
    steps = get_path(md, "spec", "rollout", "steps") or []
    step = canary.get("step")
    current = steps[step] if isinstance(step, int) and 0 <= step < len(steps) else {}
    shadow = current.get("shadow") if isinstance(current, Mapping) and canary else None
    return {
        "time": now.astimezone(UTC).isoformat(),
        "stable": get_path(status, "stable", "revision"),
        "canary": canary.get("revision"),
        "weight": int(canary.get("weight") or 0),
        "shadow": int(shadow) if isinstance(shadow, int) else 0,
        "step": canary.get("step"),
        "analysisTime": analysis.get("time"),
        "verdict": analysis.get("verdict"),
        "canaryRequests": analysis.get("canaryRequests"),
        "gates": gates,
        "history": [
            {
                "revision": h.get("revision"),
                "outcome": h.get("outcome"),
                "reason": h.get("reason"),
                "finishedAt": h.get("finishedAt"),
            }
            for h in status.get("history") or []
        ],
        "extra": dict(extra or {}),
    }


def outcomes(samples: Sequence[Mapping[str, Any]]) -> list[tuple[datetime, str, str]]:
    """(time, outcome, revision) for each history entry the first time a sample shows it.

    Entries are told apart by (revision, outcome, finishedAt), not by position: the status
    keeps only the last 10, so a full history shifts as new entries arrive.
    """

    def keys(s: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        return [
            (str(h.get("revision")), str(h.get("outcome")), str(h.get("finishedAt")))
            for h in s["history"]
        ]

    seen = set(keys(samples[0])) if samples else set()
    found: list[tuple[datetime, str, str]] = []
    for s in samples[1:]:
        for key in keys(s):
            if key not in seen:
                seen.add(key)
                found.append((_when(s), key[1], key[0]))
    return found


def _when(s: Mapping[str, Any]) -> datetime:
    t = parse_time(s["time"])
    if t is None:
        raise ValueError(f"a recorded sample has no RFC 3339 time: {s['time']!r}")
    return t


def append(path: Path, s: Mapping[str, Any]) -> None:
    """Append one sample as a JSON line."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(s, sort_keys=True) + "\n")


def load(path: Path) -> list[dict[str, Any]]:
    """All samples of a recorded timeline."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(
    samples: Iterable[Mapping[str, Any]], gate: str, key: str
) -> tuple[list[datetime], list[float]]:
    # One point per analysis, not per poll: the gate value only changes when an analysis runs.
    # A NaN between two canaries breaks the line, so one rollout's values never join the next's.
    times: list[datetime] = []
    values: list[float] = []
    last, canary = None, None
    for s in samples:
        g = s["gates"].get(gate)
        if g is None or g.get(key) is None or s.get("analysisTime") == last:
            continue
        last = s.get("analysisTime")
        if values and s.get("canary") != canary:
            times.append(_when(s))
            values.append(math.nan)
        canary = s.get("canary")
        times.append(_when(s))
        values.append(float(g[key]))
    return times, values


def _mark_shadow(
    axes: Any, times: Sequence[datetime], samples: Sequence[Mapping[str, Any]]
) -> None:
    """Shade the shadow step's span on every panel: copies only, no client traffic."""
    labelled = False
    start: datetime | None = None
    for i, s in enumerate(samples):
        on = bool(s.get("shadow"))
        if on and start is None:
            start = times[i]
        last = i == len(samples) - 1
        if start is not None and (not on or last):
            for ax in axes:
                ax.axvspan(start, times[i], color="#9467bd", alpha=0.12, linewidth=0)
            if not labelled:
                axes[0].annotate(
                    "shadow (copies only)", (start, 95), fontsize=7, color="#9467bd", va="top"
                )
                labelled = True
            start = None


def plot(samples: Sequence[Mapping[str, Any]], out: Path, *, title: str = "") -> None:
    """Draw the timeline: weight and traffic on top, one panel per gate below."""
    if not samples:
        raise ValueError("the timeline has no samples to draw")
    import matplotlib

    matplotlib.use("Agg")  # a file backend: the plugin and demo run without a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS) + 2, 1, figsize=(10, 2.0 * (len(PANELS) + 2)), sharex=True)
    try:
        times = [_when(s) for s in samples]
        ax = axes[0]
        ax.step(times, [s["weight"] for s in samples], where="post", color="#1f77b4")
        ax.set_ylabel("canary weight %")
        ax.set_ylim(-5, 105)
        _mark_shadow(axes, times, samples)
        ax.set_title(f"roost rollout timeline: {title}" if title else "roost rollout timeline")
        ax = axes[1]
        for key, colour in (("requestRate", "#1f77b4"), ("errorRate", "#d62728")):
            pts = [
                (t, s["extra"][key])
                for t, s in zip(times, samples, strict=True)
                if key in s["extra"]
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, label=key)
        ax.set_ylabel("client req/s, errors/s")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="small", frameon=False)
        for ax, (gate, label, scale, unit) in zip(axes[2:], PANELS, strict=True):
            t, v = _series(samples, gate, "estimate")
            if not v:
                t, v = _series(samples, gate, "value")
            ax.plot(t, [x * scale for x in v], marker="o", markersize=3, color="#444444")
            lt, lo = _series(samples, gate, "lower")
            _, hi = _series(samples, gate, "upper")
            if lo and len(lo) == len(hi):
                ax.fill_between(
                    lt, [x * scale for x in lo], [x * scale for x in hi],
                    color="#1f77b4", alpha=0.2, label="confidence interval",
                )  # fmt: skip
            tt, th = _series(samples, gate, "threshold")
            if th:
                ax.step(
                    tt,
                    [x * scale for x in th],
                    where="post",
                    color="#d62728",
                    linestyle="--",
                    label="margin",
                )
                if gate in TWO_SIDED:
                    ax.step(tt, [-x * scale for x in th], where="post", color="#d62728",
                            linestyle="--")  # fmt: skip
                ax.legend(loc="upper left", fontsize="small", frameon=False)
            ax.set_ylabel(unit)
            ax.set_title(label, fontsize="small", loc="left")
        for when, outcome, revision in outcomes(samples):
            colour = OUTCOME_COLOURS.get(outcome, "#7f7f7f")
            for ax in axes:
                ax.axvline(when, color=colour, linestyle=":", linewidth=1.5)
            axes[0].annotate(
                f"{outcome} {revision}",
                (when, 100),
                rotation=90,
                fontsize=7,
                color=colour,
                va="top",
                ha="right",
            )
        axes[-1].set_xlabel("time (UTC)")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
