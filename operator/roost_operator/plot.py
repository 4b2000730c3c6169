"""Timeline picture of a ModelDeployment's recorded rollouts (`kubectl roost history --plot`).

matplotlib is imported only when a plot is asked for: it is an optional extra (`roost[plot]`)
and slow to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from roost_operator.times import parse_time, utc

# Marker and colour per outcome; the colours read on white and in greyscale alike.
OUTCOME_STYLE: dict[str, tuple[str, str]] = {
    "Promoted": ("^", "#2a9d4b"),
    "RolledBack": ("X", "#d62728"),
    "Aborted": ("s", "#ff7f0e"),
    "Superseded": ("o", "#7f7f7f"),
}


def time_axis(ax: Any) -> None:
    """Tick labels that tell the ticks apart over the axis' span, seconds to months.

    A fixed ``%m-%d %H:%M`` labels every tick of a two-minute rollout alike, so the format
    follows the span: seconds under an hour, minutes under two days, the date beyond.
    """
    import matplotlib.dates as mdates

    low, high = ax.get_xlim()
    span_days = abs(high - low)  # matplotlib's date unit is the day
    fmt = "%H:%M:%S" if span_days < 1 / 24 else "%H:%M" if span_days < 2 else "%m-%d %H:%M"
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=8))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))  # type: ignore[no-untyped-call]


def _utc(t: datetime) -> datetime:
    # numpy's datetime64 takes naive datetimes only; the history is in UTC.
    return utc(t).replace(tzinfo=None)


def plot_history(history: Sequence[Mapping[str, Any]], out: Path, *, title: str = "") -> None:
    """Draw one row per revision: a bar from start to finish and a marker for the outcome."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("plotting needs matplotlib: pip install 'roost[plot]'") from e
    # A file backend: the plugin runs in terminals without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    revisions: list[str] = []
    for entry in history:
        rev = str(entry.get("revision", "?"))
        if rev not in revisions:
            revisions.append(rev)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * max(len(revisions), 1)))
    try:
        seen: set[str] = set()
        for entry in history:
            start, end = parse_time(entry.get("startedAt")), parse_time(entry.get("finishedAt"))
            if end is None:
                continue
            y = revisions.index(str(entry.get("revision", "?")))
            outcome = str(entry.get("outcome", ""))
            marker, colour = OUTCOME_STYLE.get(outcome, ("d", "#1f77b4"))
            if start is not None:
                span = np.array([_utc(start), _utc(end)], dtype="datetime64[s]")
                ax.plot(span, [y, y], color=colour, linewidth=3, alpha=0.4)
            ax.scatter(
                np.array([_utc(end)], dtype="datetime64[s]"),
                [y],
                marker=marker,
                color=colour,
                s=90,
                zorder=3,
                label=outcome if outcome not in seen else None,
            )
            seen.add(outcome)
        ax.set_yticks(range(len(revisions)), revisions)
        ax.set_ylim(-0.7, max(len(revisions), 1) - 0.3)
        time_axis(ax)
        ax.set_xlabel("time (UTC)")
        ax.set_title(f"roost rollouts: {title}" if title else "roost rollouts")
        ax.grid(axis="x", alpha=0.3)
        if seen:
            ax.legend(loc="upper left", fontsize="small", frameon=False)
        fig.tight_layout()
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
