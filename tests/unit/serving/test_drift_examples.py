"""The example models behave as the rollout tests need: drift and divergence show up where meant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry
from roost_serving.drift import js_distance
from roost_serving.monitor import DriftMonitor
from roost_serving.profile import ClassificationPrediction, Profile, RegressionPrediction

GATE_PSI = 0.25  # the contract's example drift gate
GATE_JS = 0.3  # the contract's example divergence gate


def traffic(model_dir: Path) -> np.ndarray:
    sample = json.loads((model_dir / "sample.json").read_text())
    assert sample["input"] == "X"
    assert sample["datatype"] == "FP32"
    return np.asarray(sample["rows"], dtype=np.float32)


def serve_traffic(model_dir: Path, rows: np.ndarray, batch: int = 8) -> DriftMonitor:
    """Run the model on the rows in small batches, feeding a drift monitor like the server."""
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    mon = DriftMonitor(
        Profile.load(str(model_dir / "profile.json")), CollectorRegistry(), "wine", "r1", 2000
    )
    for i in range(0, len(rows), batch):
        inputs = {"X": rows[i : i + batch]}
        mon.observe(inputs, dict(zip(names, sess.run(None, inputs), strict=True)))
    return mon


def predicted(monitor: DriftMonitor) -> np.ndarray:
    counts = monitor.prediction_counts()
    return np.asarray([counts[c] for c in ("0", "1", "2")], dtype=np.float64)


def test_example_files_and_signatures(example_models: dict[str, Path]) -> None:
    for name, path in example_models.items():
        sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        width = {"bench-rf20": 20, "wine-bad-signature": 12}.get(name, 13)
        assert (inp.name, inp.type, inp.shape) == ("X", "tensor(float)", [None, width]), name
        prof = Profile.load(str(path / "profile.json"))
        assert len(prof.features) == width
        if name == "wine-regressor":
            # The regressor is profiled over 20 output bins (the e2e A/A canary).
            assert [o.name for o in sess.get_outputs()] == ["variable"], name
            assert isinstance(prof.prediction, RegressionPrediction)
            assert len(prof.prediction.frequencies) == 20
        else:
            assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"], name
            assert isinstance(prof.prediction, ClassificationPrediction)
            assert len(prof.prediction.classes) == 3
        rows = traffic(path)
        assert rows.shape == (400, 20 if name == "bench-rf20" else 13)


def test_live_wine_traffic_is_stable_against_v1_and_v2(example_models: dict[str, Path]) -> None:
    rows = traffic(example_models["wine-v1"])
    for name in ("wine-v1", "wine-v2", "wine-constant"):
        stats = serve_traffic(example_models[name], rows).statistics()
        assert len(stats) == 13
        assert max(p for p, _ in stats.values()) < GATE_PSI, name


def test_drift_flags_the_shifted_models_profile(example_models: dict[str, Path]) -> None:
    rows = traffic(example_models["wine-shifted"])
    stats = serve_traffic(example_models["wine-shifted"], rows).statistics()
    drifted = [name for name, (p, _) in stats.items() if p > GATE_PSI]
    assert len(drifted) >= 10
    assert max(k for _, k in stats.values()) > 0.5


def test_predictions_diverge_only_for_the_bad_models(example_models: dict[str, Path]) -> None:
    rows = traffic(example_models["wine-v1"])
    stable = predicted(serve_traffic(example_models["wine-v1"], rows))
    canary = {
        name: predicted(serve_traffic(example_models[name], rows))
        for name in ("wine-v2", "wine-constant", "wine-shifted")
    }
    assert js_distance(stable, canary["wine-v2"]) < 0.05
    assert js_distance(stable, canary["wine-constant"]) > GATE_JS
    assert canary["wine-constant"][:2].sum() == 0


def test_bad_signature_model_rejects_the_standard_request(example_models: dict[str, Path]) -> None:
    path = example_models["wine-bad-signature"]
    sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Got: 13 Expected: 12"):
        sess.run(None, {"X": traffic(path)[:1]})


def test_build_is_idempotent(example_models: dict[str, Path]) -> None:
    before = {p: p.stat().st_mtime_ns for d in example_models.values() for p in d.iterdir()}
    from conftest import load_builder

    again = load_builder().build_all(next(iter(example_models.values())).parent)
    assert again == example_models
    assert {p: p.stat().st_mtime_ns for d in again.values() for p in d.iterdir()} == before


def test_the_permuted_model_predicts_the_same_mix_but_is_wrong_far_more_often(
    example_models: dict[str, Path],
) -> None:
    """What the accuracy gate's e2e needs: drift and divergence see nothing, labels do."""
    rows = traffic(example_models["wine-v1"])
    labels = np.asarray(
        json.loads((example_models["wine-v1"] / "sample.json").read_text())["labels"]
    )
    stable = serve_traffic(example_models["wine-v1"], rows)
    permuted = serve_traffic(example_models["wine-permuted"], rows)
    mix_s, mix_p = predicted(stable) / len(rows), predicted(permuted) / len(rows)
    assert np.abs(mix_s - mix_p).max() < 0.05
    assert max(p for p, _ in permuted.statistics().values()) < GATE_PSI

    def accuracy(name: str) -> float:
        path = example_models[name] / "model.onnx"
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float((sess.run(["label"], {"X": rows})[0] == labels).mean())

    assert accuracy("wine-v1") > 0.95
    assert accuracy("wine-permuted") < 0.8
