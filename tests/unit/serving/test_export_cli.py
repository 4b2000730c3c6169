"""`roost export`: scikit-learn to ONNX, verified on sample rows."""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from roost_serving import export
from sklearn.datasets import load_wine, make_regression
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="roost")
    export.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def write_csv(path: Path, x: np.ndarray, names: list[str]) -> Path:
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def wine_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("export")
    data = load_wine()
    model = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=30, random_state=0)
    )
    model.fit(data.data, data.target)
    joblib.dump(model, root / "model.joblib")
    x_with_target = np.column_stack([data.data, data.target])
    csv = write_csv(root / "wine.csv", x_with_target, [*data.feature_names, "target"])
    return root / "model.joblib", csv, model


def test_export_writes_an_onnx_model_that_predicts_like_scikit_learn(
    wine_pipeline: tuple[Path, Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_path, csv, model = wine_pipeline
    out = tmp_path / "model.onnx"
    code = run_cli(
        "export", str(model_path), "--sample", str(csv), "--exclude", "target", "-o", str(out)
    )
    assert code == 0, capsys.readouterr().err
    assert "178 of 178 sample predictions agree" in capsys.readouterr().err
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("X", "tensor(float)", 13)
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    x = load_wine().data.astype(np.float32)
    label, proba = sess.run(None, {"X": x})
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, model.predict(x))  # type: ignore[attr-defined]
    np.testing.assert_allclose(proba, model.predict_proba(x), atol=1e-4)  # type: ignore[attr-defined]


def test_export_refuses_a_sample_with_the_wrong_columns(
    wine_pipeline: tuple[Path, Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_path, csv, _ = wine_pipeline
    out = tmp_path / "model.onnx"
    assert run_cli("export", str(model_path), "--sample", str(csv), "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert "roost: error: the model takes 13 features but the sample has 14 columns" in err
    assert not out.exists()


def test_export_fails_listing_mismatches_when_predictions_disagree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ONNX computes in float32, scikit-learn in float64: with zero tolerance the regressor's
    # outputs differ in the last digits, and export must refuse rather than write the model.
    x, y = make_regression(n_samples=50, n_features=4, noise=5.0, random_state=1)
    x = x * 1000.0 + 12345.678
    joblib.dump(LinearRegression().fit(x, y), tmp_path / "lr.joblib")
    csv = write_csv(tmp_path / "s.csv", x, ["a", "b", "c", "d"])
    out = tmp_path / "lr.onnx"
    argv = ["export", str(tmp_path / "lr.joblib"), "--sample", str(csv), "-o", str(out)]
    assert run_cli(*argv, "--rtol", "0", "--atol", "0") == 1
    err = capsys.readouterr().err
    assert "ONNX and scikit-learn predictions disagree on" in err
    assert "of 50 sample rows (first rows: 0," in err
    assert "not written" in err
    assert not out.exists()
    # With the default tolerances the same model exports.
    assert run_cli(*argv) == 0
    assert out.exists()


def test_export_rejects_a_file_that_is_not_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    joblib.dump({"weights": [1, 2, 3]}, tmp_path / "notamodel.joblib")
    csv = write_csv(tmp_path / "s.csv", np.zeros((2, 3)), ["a", "b", "c"])
    argv = ["export", str(tmp_path / "notamodel.joblib"), "--sample", str(csv), "-o", "x.onnx"]
    assert run_cli(*argv) == 1
    assert "holds a dict, not a fitted model" in capsys.readouterr().err


def test_help_warns_that_joblib_files_are_unpickled(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli("export", "--help")
    assert "only export models you trust" in " ".join(capsys.readouterr().out.split())
