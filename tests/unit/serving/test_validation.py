"""`roost_serving.validation` (pure) and `roost validate` on the example models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from roost_serving.cli import main
from roost_serving.protocol import TensorSpec
from roost_serving.validation import GoldenThresholds, compare_outputs, compare_signatures

X13 = TensorSpec("X", "FP32", (-1, 13))
OUT = (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3)))


def test_same_signature_is_compatible() -> None:
    report = compare_signatures([X13], OUT, [X13], OUT)
    assert report.ok
    assert report.problems == ()


def test_each_difference_is_one_message() -> None:
    cand_in = [TensorSpec("X", "FP32", (-1, 12)), TensorSpec("extra", "FP32", (-1, 1))]
    cand_out = [TensorSpec("label", "FP32", (-1,))]
    report = compare_signatures(cand_in, cand_out, [X13], OUT)
    assert set(report.problems) == {
        "input X has 12 features, stable has 13",
        "input extra is new: clients of the stable model do not send it",
        "output label is FP32, stable has INT64",
        "output probabilities of the stable model is missing from the candidate",
    }
    assert not report.ok


def test_datatype_rank_and_missing_inputs() -> None:
    report = compare_signatures(
        [TensorSpec("X", "FP64", (-1, 13, 1))], OUT, [X13, TensorSpec("ids", "INT64", (-1,))], OUT
    )
    assert "input X is FP64, stable has FP32" in report.problems
    assert "input X has shape [?, 13, 1], stable has [?, 13]" in report.problems
    assert "input ids of the stable model is missing from the candidate" in report.problems


def test_declared_interface_change_turns_problems_into_notes() -> None:
    report = compare_signatures(
        [TensorSpec("X", "FP32", (-1, 12))], OUT, [X13], OUT, allow_interface_change=True
    )
    assert report.ok
    assert report.notes == ("input X has 12 features, stable has 13",)


def _outputs(labels: list[int], p: float = 0.9) -> dict[str, np.ndarray]:
    probs = np.full((len(labels), 3), (1 - p) / 2, dtype=np.float32)
    probs[np.arange(len(labels)), labels] = p
    return {"label": np.array(labels, dtype=np.int64), "probabilities": probs}


def test_golden_agreement_error_and_accuracy() -> None:
    stable = _outputs([0, 1, 2, 1] * 25)
    same = compare_outputs(_outputs([0, 1, 2, 1] * 25, 0.8), stable, np.array([0, 1, 2, 1] * 25))
    assert same.ok
    assert same.agreement == 1.0
    assert same.max_abs_error == pytest.approx(0.1, abs=1e-6)
    assert same.candidate_accuracy == same.stable_accuracy == 1.0
    strict = compare_outputs(
        _outputs([0, 1, 2, 1] * 25, 0.8), stable, None, GoldenThresholds(max_abs_error=0.05)
    )
    assert strict.problems == ("float outputs differ by up to 0.1, more than 0.05",)
    constant = compare_outputs(_outputs([2] * 100), stable, np.array([0, 1, 2, 1] * 25))
    assert not constant.ok
    assert (
        "agrees with the stable model on 25.0% of 100 rows, less than 95.0%" in constant.problems[0]
    )
    assert "candidate accuracy 25.0%" in constant.problems[1]


def test_no_rows_is_a_failure_not_a_pass() -> None:
    report = compare_outputs({}, {})
    assert report.problems == ("no golden rows to compare",)


def _golden(path: Path, example: Path) -> Path:
    rows = json.loads((example / "sample.json").read_text())["rows"][:60]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(13)])
        w.writerows(rows)
    return path


def test_cli_on_example_models(
    example_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = str(example_models["wine-v1"] / "model.onnx")
    golden = str(_golden(tmp_path / "golden.csv", example_models["wine-v1"]))

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as e:
            main(["validate", "--stable", v1, *args])
        return int(e.value.code or 0)

    assert (
        run("--candidate", str(example_models["wine-v2"] / "model.onnx"), "--golden", golden) == 0
    )
    assert "label agreement" in capsys.readouterr().out
    bad = str(example_models["wine-bad-signature"] / "model.onnx")
    assert run("--candidate", bad) == 1
    assert "input X has 12 features, stable has 13" in capsys.readouterr().err
    assert run("--candidate", bad, "--allow-interface-change") == 0
    constant = str(example_models["wine-constant"] / "model.onnx")
    assert run("--candidate", constant, "--golden", golden) == 1
    assert "agrees with the stable model on" in capsys.readouterr().err
    assert run("--candidate", str(tmp_path / "missing.onnx")) == 2
    # Without a golden set: the rows `roost profile` sampled, as the operator sends them.
    profile = str(example_models["wine-v2"] / "profile.json")
    v2 = str(example_models["wine-v2"] / "model.onnx")
    assert run("--candidate", v2, "--profile", profile) == 0
    assert "profile sample: 64 rows, label agreement" in capsys.readouterr().out
    assert run("--candidate", constant, "--profile", profile) == 1
    assert "profile sample: the candidate agrees with the stable model on" in (
        capsys.readouterr().err
    )
