"""Reference profiles: building from data and a model, the JSON round trip, and `roost profile`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from roost_serving import profile as profile_mod
from roost_serving.profile import (
    CategoricalFeature,
    ClassificationPrediction,
    NumericFeature,
    Profile,
    ProfileError,
    RegressionPrediction,
    build_profile,
    read_table,
)
from sklearn.datasets import load_wine


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="roost")
    profile_mod.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def wine_csv(path: Path, with_target: bool = True) -> Path:
    data = load_wine()
    header = [*data.feature_names, "target"] if with_target else list(data.feature_names)
    lines = [",".join(header)]
    for row, target in zip(data.data, data.target, strict=True):
        cells = [repr(float(v)) for v in row] + ([str(target)] if with_target else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wine_profile_describes_features_and_predictions(example_models: dict[str, Path]) -> None:
    data = load_wine()
    prof = build_profile(
        data.data, str(example_models["wine-v1"] / "model.onnx"), feature_names=data.feature_names
    )
    assert prof.rows == 178
    assert [f.name for f in prof.features] == list(data.feature_names)
    for i, f in enumerate(prof.features):
        assert isinstance(f, NumericFeature)
        assert (f.input, f.column) == ("X", i)
        assert len(f.frequencies) == len(f.edges) + 1
        assert sum(f.frequencies) == pytest.approx(1.0)
    # Deciles: a continuous feature gets 9 edges and roughly 10% of rows per bin.
    alcohol = prof.features[0]
    assert isinstance(alcohol, NumericFeature)
    assert len(alcohol.edges) == 9
    assert max(alcohol.frequencies) < 0.15
    pred = prof.prediction
    assert isinstance(pred, ClassificationPrediction)
    assert pred.output == "label"
    assert pred.classes == ("0", "1", "2")
    # The forest fits the wine classes; its predictions follow the class balance 59/71/48.
    assert pred.frequencies == pytest.approx((59 / 178, 71 / 178, 48 / 178), abs=0.02)
    # 64 training rows for validation before traffic, as the model sees them (float32).
    assert prof.sample is not None
    assert prof.sample.input == "X"
    assert len(prof.sample.rows) == 64
    rows = np.asarray(prof.sample.rows)
    training = data.data.astype(np.float32).astype(np.float64)
    assert all((training == row).all(axis=1).any() for row in rows)
    again = build_profile(
        data.data, str(example_models["wine-v1"] / "model.onnx"), feature_names=data.feature_names
    )
    assert again.sample == prof.sample  # seeded: the same data gives the same profile
    assert Profile.from_json(prof.to_json()) == prof


def test_profiles_without_a_sample_still_load_and_bad_samples_are_refused() -> None:
    old = {"version": 1, "rows": 3, "features": []}
    assert Profile.from_dict(old).sample is None
    with pytest.raises(ProfileError, match="rows of numbers of equal length"):
        Profile.from_dict({**old, "sample": {"input": "X", "rows": [[1.0, 2.0], [3.0]]}})
    with pytest.raises(ProfileError, match=r"profile\.sample must be"):
        Profile.from_dict({**old, "sample": [[1.0]]})


def test_classes_come_from_the_graph_even_when_never_predicted(
    example_models: dict[str, Path],
) -> None:
    prof = Profile.load(str(example_models["wine-constant"] / "profile.json"))
    assert isinstance(prof.prediction, ClassificationPrediction)
    assert prof.prediction.classes == ("0", "1", "2")
    assert prof.prediction.frequencies == (0.0, 0.0, 1.0)


def test_round_trip_through_file_and_fsspec_uri(tmp_path: Path) -> None:
    prof = Profile(
        rows=20,
        features=(
            NumericFeature("f0", "X", 0, (0.1, 0.5, 1.2), (0.25, 0.25, 0.25, 0.25)),
            CategoricalFeature("color", "color", None, ("red", "blue"), (0.6, 0.3), 0.1),
        ),
        prediction=RegressionPrediction("variable", (1.0, 2.0), (0.3, 0.3, 0.4)),
    )
    path = tmp_path / "profile.json"
    prof.save(str(path))
    assert Profile.load(str(path)) == prof
    assert Profile.load(path.as_uri()) == prof
    prof.save("memory://roost-test/profile.json")
    assert Profile.load("memory://roost-test/profile.json") == prof
    doc = json.loads(path.read_text())
    assert list(doc) == ["version", "rows", "features", "prediction"]
    assert list(doc["features"][0])[:4] == ["name", "input", "column", "kind"]
    assert doc["features"][1]["other_frequency"] == 0.1


def test_the_contract_example_parses() -> None:
    text = """{"version": 1, "rows": 1000, "features": [
      {"name": "f0", "input": "X", "column": 0, "kind": "numeric",
       "edges": [0.1, 0.5, 1.2], "frequencies": [0.25, 0.25, 0.25, 0.25]},
      {"name": "color", "input": "color", "column": null, "kind": "categorical",
       "categories": ["red", "blue"], "frequencies": [0.6, 0.3], "other_frequency": 0.1}],
     "prediction": {"output": "label", "kind": "classification",
                    "classes": ["0", "1", "2"], "frequencies": [0.3, 0.3, 0.4]}}"""
    prof = Profile.from_json(text)
    assert [f.kind for f in prof.features] == ["numeric", "categorical"]
    assert prof.to_dict() == json.loads(text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "unsupported profile version"),
        (
            {
                "features": [
                    {
                        "name": "a",
                        "input": "X",
                        "column": 0,
                        "kind": "numeric",
                        "edges": [1, 2],
                        "frequencies": [1, 0],
                    }
                ]
            },
            "2 edges need 3 frequencies",
        ),
        (
            {
                "features": [
                    {
                        "name": "a",
                        "input": "X",
                        "column": 0,
                        "kind": "numeric",
                        "edges": [2, 1],
                        "frequencies": [1, 0, 0],
                    }
                ]
            },
            "strictly increasing",
        ),
        ({"features": [{"name": "a", "input": "X", "kind": "bucket"}]}, "unknown kind"),
        (
            {
                "prediction": {
                    "output": "label",
                    "kind": "classification",
                    "classes": ["a"],
                    "frequencies": [0.5, 0.5],
                }
            },
            "as long as its frequencies",
        ),
    ],
)
def test_malformed_profiles_are_rejected_with_the_reason(change: dict, message: str) -> None:
    doc = {"version": 1, "rows": 1, "features": [], **change}
    with pytest.raises(ProfileError, match=message):
        Profile.from_dict(doc)


def test_load_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        Profile.load(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        Profile.load(str(tmp_path / "bad.json"))


def test_cli_writes_a_profile_from_csv(
    tmp_path: Path, example_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    csv = wine_csv(tmp_path / "wine.csv")
    out = tmp_path / "profile.json"
    model = str(example_models["wine-v1"] / "model.onnx")
    assert (
        run_cli("profile", str(csv), "--model", model, "--exclude", "target", "-o", str(out)) == 0
    )
    assert "13 features from 178 rows" in capsys.readouterr().err
    # Same data through the CLI and the library: the same profile as the shipped example.
    assert Profile.load(str(out)) == Profile.load(str(example_models["wine-v1"] / "profile.json"))


def test_cli_explains_a_column_count_mismatch(
    tmp_path: Path, example_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    csv = wine_csv(tmp_path / "wine.csv")
    model = str(example_models["wine-v1"] / "model.onnx")
    assert run_cli("profile", str(csv), "--model", model, "-o", str(tmp_path / "p.json")) == 1
    err = capsys.readouterr().err
    assert err.startswith("roost: error:")
    assert "takes 13 columns but the data has 14" in err
    assert "--exclude" in err
    assert not (tmp_path / "p.json").exists()


def test_csv_reader_types_columns(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a,b,c\n1.5,x,\n2,y,3\n")
    table = read_table(str(path))
    assert table["a"].tolist() == [1.5, 2.0]
    assert table["b"].tolist() == ["x", "y"]
    assert np.isnan(table["c"][0])
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ProfileError, match="row 3 has 1 cells"):
        read_table(str(path))


def test_multi_input_model_with_a_categorical_column(tmp_path: Path) -> None:
    # One input per column (as skl2onnx makes for ColumnTransformer pipelines): a numeric
    # input and a string input, matched to the data by name.
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Identity", ["size"], ["variable"])],
        "two-inputs",
        [
            helper.make_tensor_value_info("size", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("color", TensorProto.STRING, ["N", 1]),
        ],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(tmp_path / "m.onnx"))
    colors = np.array(["red"] * 60 + ["blue"] * 30 + ["green"] * 10, dtype=object)
    sizes = np.arange(100, dtype=np.float64)
    prof = build_profile(
        {"size": sizes, "color": colors}, str(tmp_path / "m.onnx"), max_categories=2
    )
    size, color = prof.features
    assert isinstance(size, NumericFeature)
    assert (size.input, size.column) == ("size", None)
    assert isinstance(color, CategoricalFeature)
    assert color.categories == ("red", "blue")
    assert color.frequencies == (0.6, 0.3)
    assert color.other_frequency == pytest.approx(0.1)
    assert isinstance(prof.prediction, RegressionPrediction)
    assert prof.prediction.output == "variable"
    assert len(prof.prediction.edges) == 9
