"""The recorded rollout timeline: samples from real-shaped status, outcomes, and the picture."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from roost_operator import timeline

T0 = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)


def md(weight: int, analysis_time: str | None, history: list[dict[str, Any]]) -> dict[str, Any]:
    canary: dict[str, Any] = {"revision": "8c01d2e4aa", "weight": weight, "step": 1}
    if analysis_time:
        canary["lastAnalysis"] = {
            "time": analysis_time,
            "verdict": "pass",
            "canaryRequests": 120,
            "gates": [
                {"name": "errorRate", "value": 0.01, "threshold": 0.05, "verdict": "pass"},
                {"name": "drift", "threshold": 0.25, "verdict": "inconclusive"},
            ],
        }
    return {"status": {"stable": {"revision": "3f2a9c1b7d"}, "canary": canary, "history": history}}


def test_sample_reads_weight_revisions_and_gates() -> None:
    s = timeline.sample(md(25, "2026-11-22T08:00:05Z", []), T0, {"requestRate": 40.0})
    assert s["stable"] == "3f2a9c1b7d"
    assert s["canary"] == "8c01d2e4aa"
    assert s["weight"] == 25
    assert s["gates"]["errorRate"] == {
        "value": 0.01,
        "threshold": 0.05,
        "verdict": "pass",
        "estimate": None,
        "lower": None,
        "upper": None,
    }
    assert s["gates"]["drift"]["value"] is None
    assert s["extra"] == {"requestRate": 40.0}


def test_sample_of_an_object_without_status() -> None:
    s = timeline.sample({"spec": {}}, T0)
    assert s["weight"] == 0
    assert s["canary"] is None
    assert s["gates"] == {}


def test_outcomes_are_reported_once_when_they_first_appear() -> None:
    promoted = {"revision": "8c01d2e4aa", "outcome": "Promoted", "reason": "all steps passed"}
    samples = [
        timeline.sample(md(25, None, []), T0),
        timeline.sample(md(50, None, []), T0 + timedelta(seconds=1)),
        timeline.sample(md(0, None, [promoted]), T0 + timedelta(seconds=2)),
        timeline.sample(md(0, None, [promoted]), T0 + timedelta(seconds=3)),
    ]
    assert timeline.outcomes(samples) == [(T0 + timedelta(seconds=2), "Promoted", "8c01d2e4aa")]


def test_outcomes_are_found_when_the_capped_history_shifts() -> None:
    def entry(i: int) -> dict[str, Any]:
        return {
            "revision": f"rev{i}",
            "outcome": "Promoted",
            "finishedAt": f"2026-11-22T08:{i:02d}:00Z",
        }

    full = [entry(i) for i in range(10)]
    shifted = [entry(i) for i in range(1, 11)]
    samples = [timeline.sample(md(0, None, full), T0), timeline.sample(md(0, None, shifted), T0)]
    assert timeline.outcomes(samples) == [(T0, "Promoted", "rev10")]


def test_record_load_and_plot_round_trip(tmp_path: Path) -> None:
    record = tmp_path / "timeline.jsonl"
    history: list[dict[str, Any]] = []
    for i in range(12):
        if i == 10:
            history = [{"revision": "8c01d2e4aa", "outcome": "RolledBack", "reason": "drift"}]
        at = T0 + timedelta(seconds=i)
        stamp = (T0 + timedelta(seconds=i - i % 3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        timeline.append(record, timeline.sample(md(25 * (i // 4), stamp, history), at))
    samples = timeline.load(record)
    assert len(samples) == 12
    out = tmp_path / "timeline.png"
    timeline.plot(samples, out, title="wine")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_gate_series_has_one_point_per_analysis_and_breaks_between_canaries() -> None:
    first = md(25, "2026-11-22T08:00:05Z", [])
    again = md(25, "2026-11-22T08:00:05Z", [])  # polled twice, same analysis
    later = md(50, "2026-11-22T08:00:10Z", [])
    other = md(25, "2026-11-22T08:00:20Z", [])
    other["status"]["canary"]["revision"] = "64f6131139"
    samples = [
        timeline.sample(m, T0 + timedelta(seconds=i))
        for i, m in enumerate([first, again, later, other])
    ]
    times, values = timeline._series(samples, "errorRate", "value")
    assert len(times) == len(values) == 4
    assert values[:2] == [0.01, 0.01]
    assert math.isnan(values[2])  # the gap: the next canary's line starts afresh
    assert values[3] == 0.01
    assert times[2] == times[3] == T0 + timedelta(seconds=3)


def test_sequential_gates_are_drawn_with_their_interval_and_margin(tmp_path: Path) -> None:
    samples = []
    for i in range(6):
        stamp = (T0 + timedelta(seconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = md(25, stamp, [])
        obj["status"]["canary"]["lastAnalysis"]["gates"] = [
            {"name": "errorRate", "estimate": 0.001, "lower": -0.01 / (i + 1),
             "upper": 0.012 / (i + 1), "threshold": 0.005, "verdict": "inconclusive"},
            {"name": "divergence", "estimate": 0.0, "lower": -0.05, "upper": 0.05,
             "threshold": 0.05, "value": 0.01, "verdict": "pass"},
        ]  # fmt: skip
        samples.append(timeline.sample(obj, T0 + timedelta(seconds=10 * i)))
    assert samples[0]["gates"]["errorRate"]["upper"] == 0.012
    times, lows = timeline._series(samples, "errorRate", "lower")
    assert len(times) == 6
    assert lows[-1] == -0.01 / 6
    out = tmp_path / "sequential.png"
    timeline.plot(samples, out, title="wine")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_shadow_step_is_sampled_and_shaded(tmp_path: Path) -> None:
    samples = []
    for i in range(8):
        stamp = (T0 + timedelta(seconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = md(0 if i < 5 else 50, stamp, [])
        obj["spec"] = {"rollout": {"steps": [{"shadow": 100}, {"weight": 50}]}}
        obj["status"]["canary"]["step"] = 0 if i < 5 else 1
        obj["status"]["canary"]["lastAnalysis"]["gates"] = [
            {"name": "shadowDisagreement", "estimate": 0.01, "lower": 0.0, "upper": 0.03,
             "threshold": 0.05, "verdict": "pass"},
        ]  # fmt: skip
        samples.append(timeline.sample(obj, T0 + timedelta(seconds=10 * i)))
    assert [s["shadow"] for s in samples] == [100] * 5 + [0] * 3
    assert timeline.sample({"spec": {}}, T0)["shadow"] == 0
    out = tmp_path / "shadow.png"
    timeline.plot(samples, out, title="wine")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
