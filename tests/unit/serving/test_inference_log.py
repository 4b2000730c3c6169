"""The inference log in-process: bounded buffer under a stalled sink, rotation, redaction,
formats read back, CloudEvents, and the real S3 server (versitygw) as a sink."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from log_peers import BlackHole, Receiver
from prometheus_client import CollectorRegistry
from roost_devcluster.s3server import S3Server
from roost_serving.config import ConfigError, Settings
from roost_serving.inference_log import InferenceLog, LogConfig, feedback_record, redaction
from roost_serving.log_reader import examples, log_files, read_log
from roost_serving.log_sinks import CloudEventsSink
from roost_serving.profile import Profile
from roost_serving.protocol import TensorSpec

X = np.arange(26, dtype=np.float32).reshape(2, 13)
OUT = {"label": np.array([1, 0], dtype=np.int64)}


def _log(uri: str, registry: CollectorRegistry | None = None, **options: object) -> InferenceLog:
    config = LogConfig(uri=uri, model="wine", revision="r1", pod="pod-a", **options)  # type: ignore[arg-type]
    log = InferenceLog(config, registry or CollectorRegistry())
    log.start()
    return log


def _count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "roost_log_records_total", {"model": "wine", "revision": "r1", "outcome": outcome}
    )
    return value or 0.0


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _predict(log: InferenceLog, n: int, prefix: str = "r") -> list[bool]:
    return [log.record(f"{prefix}{i}", {"X": X}, OUT, 200, 0.001, "rest") for i in range(n)]


def test_a_stalled_sink_drops_and_counts_and_never_blocks() -> None:
    registry = CollectorRegistry()
    with BlackHole() as hole:
        log = InferenceLog(
            LogConfig(uri=hole.url, model="wine", revision="r1", pod="p", buffer=10),
            registry,
            sink=CloudEventsSink(hole.url, timeout=60.0),  # a write hangs for a minute
        )
        log.start()
        log.flush_soon()  # write at once: the writer is inside the hanging POST quickly
        first = _predict(log, 1)
        _wait(lambda: hole.connections != [], "the writer to connect")
        # Every call returns while the writer hangs; past the buffer, records are dropped.
        accepted = _predict(log, 1000)
        assert first == [True]
        assert sum(accepted) == 10
        assert _count(registry, "dropped") == 990
        assert _count(registry, "written") == 0
        lost = log.close(timeout=0.2)
    assert lost == 11  # the record in the hanging POST and the ten buffered
    assert _count(registry, "lost") == 11
    assert log.record("late", {"X": X}, OUT, 200, 0.001, "rest") is False


def test_files_rotate_by_size_and_every_record_is_written(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = _log(str(tmp_path), registry, rotate_bytes=4096, rotate_seconds=3600.0)
    _predict(log, 100)
    assert log.close(timeout=30.0) == 0
    _, paths = log_files(str(tmp_path))
    sizes = [Path(p).stat().st_size for p in paths]
    assert len(paths) > 5
    assert max(sizes) < 4096 + 1024  # a file closes at the first record past the size
    assert _count(registry, "written") == 100
    frame = read_log(str(tmp_path))
    assert list(frame["id"]) == [f"r{i}" for i in range(100)]
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_file_is_written_when_its_time_is_up_without_a_close(tmp_path: Path) -> None:
    log = _log(str(tmp_path), rotate_seconds=0.3)
    _predict(log, 3)
    _wait(lambda: len(log_files(str(tmp_path))[1]) == 1, "the time-rotated file")
    assert len(read_log(str(tmp_path))) == 3
    _predict(log, 2, prefix="s")
    _wait(lambda: len(log_files(str(tmp_path))[1]) == 2, "the second file")
    assert log.close(timeout=10.0) == 0


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_records_read_back_with_feedback_joined(tmp_path: Path, fmt: str) -> None:
    log = _log(str(tmp_path), format=fmt)
    log.record("a", {"X": X}, OUT, 200, 0.002, "rest")
    log.record("b", {"X": X[:1]}, None, 400, 0.001, "grpc", "bad shape")
    assert log.append(feedback_record("a", [2, 1], model="wine", revision="r1", pod="pod-b"))
    assert log.close(timeout=30.0) == 0
    assert all(p.endswith(f".{fmt}") for p in log_files(str(tmp_path))[1])
    frame = read_log(str(tmp_path))
    assert list(frame["kind"]) == ["prediction", "prediction", "feedback"]
    answered = frame.iloc[0]
    assert (answered["revision"], answered["pod"], answered["status"]) == ("r1", "pod-a", 200)
    assert answered["inputs"]["X"][1][12] == 25.0
    assert frame.iloc[1]["error"] == "bad shape"
    assert frame.iloc[1]["protocol"] == "grpc"
    assert str(frame["time"].dt.tz) == "UTC"
    table = examples(frame, features=[f"f{k}" for k in range(13)])
    assert list(table["ground_truth"]) == [2, 1]
    assert list(table["label"]) == [1, 0]
    assert list(table["f0"]) == [0.0, 13.0]


def test_redaction_masks_a_feature_column_or_a_whole_input(
    tmp_path: Path, example_models: dict[str, Path]
) -> None:
    profile = Profile.load(str(example_models["wine-v1"] / "profile.json"))
    inputs = (TensorSpec("X", "FP32", (-1, 13)),)
    assert redaction(("alcohol", "hue"), inputs, profile) == {"X": (0, 10)}
    assert redaction(("X", "hue"), inputs, profile) == {"X": None}
    with pytest.raises(ValueError, match="neither a model input nor a profile feature"):
        redaction(("alcohol", "alcohl"), inputs, profile)
    log = _log(str(tmp_path), redact={"X": (0, 10)})
    log.record("a", {"X": X}, OUT, 200, 0.002, "rest")
    assert log.close(timeout=30.0) == 0
    rows = read_log(str(tmp_path)).iloc[0]["inputs"]["X"]
    assert [row[0] for row in rows] == [None, None]
    assert [row[10] for row in rows] == [None, None]
    assert rows[0][1] == 1.0
    assert X[0, 0] == 0.0  # the request's own array is untouched


def test_cloudevents_batches_reach_a_receiver() -> None:
    with Receiver() as receiver:
        log = _log(receiver.url)
        log.record("a", {"X": X}, OUT, 200, 0.002, "rest")
        log.append(feedback_record("a", 1, model="wine", revision="r1", pod="pod-a"))
        assert log.close(timeout=30.0) == 0
    content_type, body = receiver.bodies[0]
    assert content_type == "application/cloudevents-batch+json"
    events = orjson.loads(body)
    assert [e["type"] for e in events] == [
        "dev.roost.inference.prediction",
        "dev.roost.inference.feedback",
    ]
    assert events[0]["source"] == "/roost/wine/r1/pod-a"
    assert events[0]["specversion"] == "1.0"
    assert events[0]["data"]["outputs"]["label"] == [1, 0]


def test_a_sink_that_refuses_counts_records_lost() -> None:
    registry = CollectorRegistry()
    log = _log("http://127.0.0.1:9/refused", registry)  # port 9 (discard): refused
    log.record("a", {"X": X}, OUT, 200, 0.002, "rest")
    log.flush_soon()
    _wait(lambda: _count(registry, "lost") == 1, "the failed attempts", timeout=60.0)
    errors = registry.get_sample_value(
        "roost_log_write_errors_total", {"model": "wine", "revision": "r1"}
    )
    assert errors == 3
    assert log.close(timeout=1.0) == 0  # already counted: nothing pending


def test_parquet_files_land_in_the_real_s3_server(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket("unit-log")
    uri = f"{bucket}/inference"
    log = _log(uri, format="parquet")
    _predict(log, 5)
    assert log.close(timeout=60.0) == 0
    keys = s3_server.filesystem().find("unit-log/inference")
    assert keys
    assert all(key.endswith(".parquet") for key in keys)
    frame = read_log(uri, **s3_server.storage_options)
    assert sorted(frame["id"]) == [f"r{i}" for i in range(5)]
    # A second pod writes more; a second read sees them (no stale listing).
    other = _log(uri, format="parquet")
    _predict(other, 3, prefix="s")
    assert other.close(timeout=60.0) == 0
    again = read_log(uri, **s3_server.storage_options)
    assert len(again) == 8


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("log_sample_rate", 1.5, "--log-sample-rate must be between 0 and 1"),
        ("log_format", "csv", "--log-format must be one of jsonl, parquet"),
        ("log_rotate_seconds", 0.0, "--log-rotate-seconds must be a positive"),
    ],
)
def test_bad_log_settings_are_refused(option: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(model="m.onnx", **{option: value})  # type: ignore[arg-type]


def test_sampling_records_about_the_rate(tmp_path: Path) -> None:
    never, always, tenth = (
        _log(str(tmp_path / name), sample_rate=rate)
        for name, rate in (("never", 0.0), ("always", 1.0), ("tenth", 0.1))
    )
    assert not any(never.sampled() for _ in range(1000))
    assert all(always.sampled() for _ in range(1000))
    hits = sum(tenth.sampled() for _ in range(10000))
    assert 800 < hits < 1200  # binomial(10000, 0.1): sd 30, so this bound is ~6.7 sd wide
    for log in (never, always, tenth):
        log.close(timeout=1.0)


def test_a_record_that_cannot_be_encoded_is_lost_alone(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = _log(str(tmp_path), registry)
    log.record("a", {"X": X}, OUT, 200, 0.001, "rest")
    log.append({"kind": "feedback", "id": "b", "time": 1.0, "ground_truth": object()})
    log.record("c", {"X": X}, OUT, 200, 0.001, "rest")
    assert log.close(timeout=30.0) == 0
    assert (_count(registry, "written"), _count(registry, "lost")) == (2, 1)
    assert list(read_log(str(tmp_path))["id"]) == ["a", "c"]
