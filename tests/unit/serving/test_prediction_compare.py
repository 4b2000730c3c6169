"""Regressor predictions counted on pushed (the stable's) output edges: roost_serving.compare."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from roost_serving.compare import MAX_EDGES, CompareBins, CompareError, parse_section
from roost_serving.config import Settings
from roost_serving.monitor import DriftMonitor
from roost_serving.profile import (
    ClassificationPrediction,
    NumericFeature,
    Profile,
    RegressionPrediction,
)

F0 = NumericFeature("f0", "X", 0, (0.0, 1.0), (0.25, 0.5, 0.25))
OWN = RegressionPrediction("variable", (0.0, 10.0), (0.2, 0.6, 0.2))
LABELS = {"model": "wine", "revision": "abc123"}


def monitor(
    prediction: RegressionPrediction | ClassificationPrediction,
) -> tuple[DriftMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    profile = Profile(rows=10, features=(F0,), prediction=prediction)
    return DriftMonitor(profile, registry, "wine", "abc123", 100), registry


def observe(mon: DriftMonitor, values: list[float]) -> None:
    out = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    mon.observe({"X": np.zeros((len(values), 1), dtype=np.float32)}, {"variable": out})


def compare(reg: CollectorRegistry, *bins: str) -> dict[str, float | None]:
    return {
        b: reg.get_sample_value("roost_prediction_compare_total", {**LABELS, "bin": b})
        for b in bins
    }


def test_nothing_is_exported_before_the_first_push() -> None:
    mon, reg = monitor(OWN)
    observe(mon, [1.0, 2.0])
    text = generate_latest(reg).decode()
    assert "roost_prediction_compare_total{" not in text
    assert "roost_prediction_compare_info{" not in text
    # The profile's own binning is unaffected.
    assert reg.get_sample_value("roost_predictions_total", {**LABELS, "bin": "1"}) == 2


def test_predictions_are_binned_on_the_pushed_edges_not_the_profiles() -> None:
    mon, reg = monitor(OWN)  # own edges (0, 10]: 3 bins
    assert mon.compare is not None
    mon.compare.apply({"version": "v1", "edges": [-1.0, 2.0, 4.0, 8.0]})  # the stable's: 5 bins
    observe(mon, [-3.0, -1.0, 0.0, 2.0, 3.0, 4.0, 8.0, 9.0, 100.0, float("nan")])
    # Right-closed like the profile's bins: -1 is in bin 0, 2 in bin 1, 8 in bin 3.
    assert compare(reg, "0", "1", "2", "3", "4", "other") == {
        "0": 2,
        "1": 2,
        "2": 2,
        "3": 1,
        "4": 2,
        "other": 1,
    }
    info = reg.get_sample_value("roost_prediction_compare_info", {**LABELS, "version": "v1"})
    assert info == 1
    # The same predictions on the pod's own 3 bins.
    own = {b: reg.get_sample_value("roost_predictions_total", {**LABELS, "bin": b}) for b in "012"}
    assert own == {"0": 3, "1": 5, "2": 1}


def test_pending_rows_are_counted_on_the_edges_in_use_when_read() -> None:
    mon, reg = monitor(OWN)
    assert mon.compare is not None
    mon.compare.apply({"version": "v1", "edges": [5.0]})
    observe(mon, [1.0])  # one row: pending until a read flushes it
    assert compare(reg, "0", "1") == {"0": 1, "1": 0}


def test_new_edges_keep_every_series_and_never_lower_a_count() -> None:
    mon, reg = monitor(OWN)
    assert mon.compare is not None
    mon.compare.apply({"version": "v1", "edges": [1.0, 2.0, 3.0]})
    observe(mon, [0.5, 1.5, 2.5, 3.5] * 64)  # 256 rows: binned at once
    before = compare(reg, "0", "1", "2", "3", "other")
    mon.compare.apply({"version": "v2", "edges": [10.0]})
    observe(mon, [5.0, 50.0] * 128)
    after = compare(reg, "0", "1", "2", "3", "other")
    assert all((after[b] or 0) >= (before[b] or 0) for b in before), (before, after)
    assert after == {"0": 64 + 128, "1": 64 + 128, "2": 64, "3": 64, "other": 0}
    versions = [
        v
        for v in ("v1", "v2")
        if reg.get_sample_value("roost_prediction_compare_info", {**LABELS, "version": v})
    ]
    assert versions == ["v2"]  # only the version in use is shown


def test_withdrawn_section_stops_counting_and_keeps_the_series() -> None:
    mon, reg = monitor(OWN)
    assert mon.compare is not None
    mon.compare.apply({"version": "v1", "edges": [1.0]})
    observe(mon, [0.0] * 256)
    mon.compare.apply(None)
    observe(mon, [0.0] * 256)
    assert compare(reg, "0") == {"0": 256}
    assert mon.compare.version is None


def test_classifiers_have_no_compare_bins() -> None:
    mon, reg = monitor(ClassificationPrediction("label", ("0", "1"), (0.5, 0.5)))
    assert mon.compare is None
    assert "roost_prediction_compare" not in generate_latest(reg).decode()


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"edges": [1.0]}, "compare.version"),
        ({"version": "", "edges": [1.0]}, "compare.version"),
        ({"version": "x" * 65, "edges": [1.0]}, "compare.version"),
        ({"version": "v", "edges": "1,2"}, "list"),
        ({"version": "v", "edges": [0.0] * (MAX_EDGES + 1)}, "at most"),
        ({"version": "v", "edges": [1.0, "2"]}, "numbers only"),
        ({"version": "v", "edges": [True]}, "numbers only"),
        ({"version": "v", "edges": [1.0, float("nan")]}, "finite"),
        ({"version": "v", "edges": [2.0, 1.0]}, "strictly increasing"),
        ({"version": "v", "edges": [1.0, 1.0]}, "strictly increasing"),
    ],
)
def test_unusable_sections_are_refused_with_the_reason(section: dict, words: str) -> None:
    bins = CompareBins("wine", "abc123")
    bins.apply({"version": "good", "edges": [1.0]})
    with pytest.raises(CompareError, match=words):
        bins.apply(section)
    assert bins.version == "good"  # the edges in use stay


def test_parse_section_accepts_integers_and_no_edges() -> None:
    assert parse_section({"version": "v", "edges": [1, 2.5]})[1].tolist() == [1.0, 2.5]
    assert parse_section({"version": "v", "edges": []})[1].size == 0  # one bin holds all


def test_concurrent_batches_and_pushes_lose_no_prediction() -> None:
    bins = CompareBins("wine", "abc123")
    bins.apply({"version": "v1", "edges": [0.5]})
    batch = np.zeros(100, dtype=np.float32)

    def feed() -> None:
        for _ in range(200):
            bins.observe(batch)

    def push() -> None:
        for i in range(200):
            bins.apply({"version": f"v{i % 2}", "edges": [0.5 + i % 2]})

    threads = [threading.Thread(target=feed) for _ in range(4)] + [threading.Thread(target=push)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 0.0 falls in bin 0 of either edge set: every row is counted exactly once.
    assert sum(bins.counts().values()) == 4 * 200 * 100
    assert bins.counts()["0"] == 4 * 200 * 100


def test_roost_serve_counts_on_edges_pushed_through_the_runtime_endpoint(
    start_server: Any, example_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real path: the wine regressor with its profile, the section PUT as the operator does.
    monkeypatch.setenv("ROOST_RUNTIME_TOKEN", "t0ken")
    model = example_models["wine-regressor"]
    server = start_server(
        Settings(
            model=str(model / "model.onnx"),
            profile=str(model / "profile.json"),
            name="wine",
            revision="r1",
        )
    )
    rows = json.loads((model / "sample.json").read_text())["rows"][:40]
    section = {"version": "stable-abc", "edges": [0.0, 1e9]}  # nearly all in bin 1
    doc = {"version": "d1", "sections": {"compare": section}}
    auth = {"Authorization": "Bearer t0ken"}
    assert httpx.put(server.url + "/v2/roost/runtime", json=doc, headers=auth).status_code == 200
    body = {"inputs": [{"name": "X", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                        "data": [v for r in rows for v in r]}]}  # fmt: skip
    r = httpx.post(server.url + "/v2/models/wine/infer", json=body)
    assert r.status_code == 200, r.text
    metrics = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
        for s in f.samples
    }
    labels = {"model": "wine", "revision": "r1"}

    def sample(name: str, **extra: str) -> float | None:
        return metrics.get((name, tuple(sorted({**labels, **extra}.items()))))

    counted = [sample("roost_prediction_compare_total", bin=b) for b in ("0", "1", "2", "other")]
    assert sum(c or 0 for c in counted) == len(rows)
    assert counted[1] == len(rows)  # wine quality predictions are all in (0, 1e9]
    assert sample("roost_prediction_compare_info", version="stable-abc") == 1
    # A section the pod cannot use leaves the edges in use (the subscriber's error is logged).
    bad = {"version": "d2", "sections": {"compare": {"version": "x", "edges": [2.0, 1.0]}}}
    assert httpx.put(server.url + "/v2/roost/runtime", json=bad, headers=auth).status_code == 200
    assert server.plane.monitor.compare.version == "stable-abc"
