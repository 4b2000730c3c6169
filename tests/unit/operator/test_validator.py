"""`roost_operator.validator` against real serving apps on loopback sockets (no cluster).

Each "pod" is the real roost app under uvicorn on 127.0.0.1; the validator reads their OIP
metadata and sends them sample rows exactly as it does to pod IPs in a cluster.
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from roost_operator.planner import ValidationRequest
from roost_operator.pods import PodTarget
from roost_operator.validationspec import ValidationSpec, parse_validation
from roost_operator.validator import validate
from roost_serving.app import DataPlane, create_app
from roost_serving.cli import server_config
from roost_serving.config import Settings

RNG = np.random.default_rng(11)
X = RNG.normal(size=(400, 5)).astype(np.float32)
Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)


def _forest(path: Path, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Path:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=seed).fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validator-models")
    # "one-class": trained on labels that are (almost) all 2, so it answers 2 for everything.
    skewed = np.where(RNG.random(len(Y)) < 0.99, 2, Y)
    return {
        "stable": _forest(root / "stable.onnx", X, Y),
        "same": _forest(root / "same.onnx", X, Y),
        "narrow": _forest(root / "narrow.onnx", X[:, :4], Y),
        "one-class": _forest(root / "one-class.onnx", X, skewed),
    }


class _Pod:
    """The real serving app on a loopback socket, standing in for one serving pod."""

    def __init__(self, model: Path) -> None:
        settings = Settings(model=str(model), name="wine")
        self.registry = CollectorRegistry()
        app = create_app(settings, registry=self.registry)
        self.plane: DataPlane = app.state.plane
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(server_config(app, settings, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.plane.ready:
            assert time.monotonic() < deadline
            assert self.plane.load_error is None
            time.sleep(0.01)

    def target(self, name: str) -> PodTarget:
        return PodTarget(name, name, "127.0.0.1", self.port)

    def requests(self, source: str) -> float:
        labels = {"model": "wine", "revision": "", "protocol": "rest", "source": source}
        value = self.registry.get_sample_value("roost_requests_total", {**labels, "code": "200"})
        return value or 0.0  # validation series appear with the first validation request

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def pods(models: dict[str, Path]) -> Iterator[dict[str, _Pod]]:
    started = {name: _Pod(path) for name, path in models.items()}
    yield started
    for pod in started.values():
        pod.stop()


def _request(pods: dict[str, _Pod], canary: str, spec: ValidationSpec, profile: str | None = None):  # type: ignore[no-untyped-def]
    return ValidationRequest(
        model_name="wine",
        canary_revision="c",
        stable_revision="s",
        canary_pods=(pods[canary].target("canary-0"),),
        stable_pods=(pods["stable"].target("stable-0"),),
        validation=spec,
        profile_uri=profile,
    )


def _golden(tmp_path: Path, rows: int = 40) -> str:
    path = tmp_path / "golden.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"f{i}" for i in range(5)] + ["label"])
        for row, label in zip(X[:rows], Y[:rows], strict=True):
            writer.writerow([*row.tolist(), int(label)])
    return str(path)


def test_incompatible_signature_is_refused_with_the_offline_message(
    pods: dict[str, _Pod],
) -> None:
    outcome = asyncio.run(validate(_request(pods, "narrow", ValidationSpec())))
    assert outcome is not None
    assert outcome["result"] == "failed"
    assert outcome["message"] == "input X has 4 features, stable has 5"
    # Metadata only: the refused model never ran a row.
    assert pods["narrow"].requests("validation") == 0.0


def test_declared_interface_change_passes_without_comparing(pods: dict[str, _Pod]) -> None:
    spec = ValidationSpec(allow_interface_change=True)
    outcome = asyncio.run(validate(_request(pods, "narrow", spec)))
    assert outcome is not None
    assert outcome["result"] == "passed"
    assert "input X has 4 features, stable has 5" in outcome["message"]


def test_good_model_passes_on_golden_rows_counted_as_validation(
    pods: dict[str, _Pod], tmp_path: Path
) -> None:
    spec = ValidationSpec(golden_uri=_golden(tmp_path), expected_column="label")
    outcome = asyncio.run(validate(_request(pods, "same", spec)))
    assert outcome is not None
    assert outcome["result"] == "passed", outcome
    assert outcome["rows"] == 40
    assert outcome["agreement"] >= 0.95
    assert outcome["canaryLatencySeconds"] > 0
    # 40 rows in requests of 8, labelled apart from client traffic, and never monitored.
    assert pods["same"].requests("validation") == 5.0
    assert pods["same"].requests("client") == 0.0
    batches = pods["same"].registry.get_sample_value(
        "roost_batch_size_count", {"model": "wine", "revision": ""}
    )
    assert batches == 0.0


def test_one_class_model_fails_on_the_profile_sample(pods: dict[str, _Pod], tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"version": 1, "sample": {"rows": X[:64].tolist()}}))
    outcome = asyncio.run(validate(_request(pods, "one-class", ValidationSpec(), str(profile))))
    assert outcome is not None
    assert outcome["result"] == "failed"
    assert outcome["message"].startswith("profile sample: the candidate agrees with the stable")
    assert outcome["rows"] == 64


def test_latency_bound(pods: dict[str, _Pod], tmp_path: Path) -> None:
    golden = _golden(tmp_path, 24)
    spec = ValidationSpec(golden_uri=golden, expected_column="label", max_latency_seconds=0.0)
    outcome = asyncio.run(validate(_request(pods, "same", spec)))
    assert outcome is not None
    assert outcome["result"] == "failed"
    assert "maxLatency 0s" in outcome["message"]


def test_golden_rows_that_do_not_fit_the_stable_fail(pods: dict[str, _Pod], tmp_path: Path) -> None:
    spec = ValidationSpec(golden_uri=_golden(tmp_path, 8))  # the label column read as a feature
    outcome = asyncio.run(validate(_request(pods, "same", spec)))
    assert outcome is not None
    assert outcome["result"] == "failed"
    assert outcome["message"].startswith("golden set does not fit the stable model")
    assert "has shape [8, 6] but the model expects [-1, 5]" in outcome["message"]


def test_no_rows_anywhere_passes_on_the_signature(pods: dict[str, _Pod]) -> None:
    outcome = asyncio.run(validate(_request(pods, "same", ValidationSpec())))
    assert outcome is not None
    assert outcome["result"] == "passed"
    assert "answers not compared" in outcome["message"]


def test_unreachable_stable_postpones_and_unreachable_canary_fails(
    pods: dict[str, _Pod],
) -> None:
    gone = PodTarget("gone", "gone", "127.0.0.1", 1)
    request = _request(pods, "same", ValidationSpec())
    stable_gone = ValidationRequest(**{**request.__dict__, "stable_pods": (gone,)})
    assert asyncio.run(validate(stable_gone)) is None
    canary_gone = ValidationRequest(**{**request.__dict__, "canary_pods": (gone,)})
    outcome = asyncio.run(validate(canary_gone))
    assert outcome is not None
    assert outcome["result"] == "failed"
    assert "canary pod gone did not answer" in outcome["message"]


def test_parse_validation() -> None:
    assert parse_validation(None) is None
    assert parse_validation({"enabled": False}) is None
    spec = parse_validation(
        {"golden": {"uri": "s3://b/g.csv", "expectedColumn": "y"}, "maxLatency": "250ms"}
    )
    assert spec == ValidationSpec(
        golden_uri="s3://b/g.csv", expected_column="y", max_latency_seconds=0.25
    )
    with pytest.raises(ValueError, match=r"minAgreement must be a number between 0\.0 and 1\.0"):
        parse_validation({"minAgreement": 2})
    with pytest.raises(ValueError, match="rows must be between 1 and 10000"):
        parse_validation({"rows": 0})
