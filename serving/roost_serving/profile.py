"""Reference profiles: what a model's training data and predictions looked like.

A profile (``profile.json``, format in ``docs/architecture.md``) describes each input feature —
numeric features by decile bin edges and reference frequencies, categorical features by category
frequencies — and the model's reference prediction distribution.  The server compares live
traffic against it (:mod:`roost_serving.monitor`).

``roost profile DATA.csv --model model.onnx -o profile.json`` builds one: it reads the data,
matches its columns to the model's inputs, runs the model with onnxruntime to get the reference
predictions, and writes the JSON (locally or to any fsspec URI).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import fsspec
import numpy as np
import numpy.typing as npt

from roost_serving.drift import histogram, quantile_edges
from roost_serving.profile_sample import Sample, draw_sample, parse_sample
from roost_serving.tabular import ProfileError, Table, as_table, read_table

__all__ = [
    "CategoricalFeature",
    "ClassificationPrediction",
    "Feature",
    "NumericFeature",
    "Profile",
    "ProfileError",
    "RegressionPrediction",
    "add_cli",
    "as_table",
    "build_profile",
    "read_table",
]

PROFILE_VERSION = 1


@dataclass(frozen=True)
class NumericFeature:
    """A numeric feature binned by inner cut points ``edges`` (right-closed bins)."""

    name: str
    input: str
    column: int | None
    edges: tuple[float, ...]
    frequencies: tuple[float, ...]
    kind: Literal["numeric"] = "numeric"


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical feature: frequency per known category plus everything else (``other``)."""

    name: str
    input: str
    column: int | None
    categories: tuple[str, ...]
    frequencies: tuple[float, ...]
    other_frequency: float
    kind: Literal["categorical"] = "categorical"


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class ClassificationPrediction:
    """Reference class frequencies of a classifier's label output."""

    output: str
    classes: tuple[str, ...]
    frequencies: tuple[float, ...]
    kind: Literal["classification"] = "classification"


@dataclass(frozen=True)
class RegressionPrediction:
    """Reference histogram of a regressor's output over fixed ``edges``."""

    output: str
    edges: tuple[float, ...]
    frequencies: tuple[float, ...]
    kind: Literal["regression"] = "regression"


Prediction = ClassificationPrediction | RegressionPrediction


def _floats(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise ProfileError(f"{what} must be a list of numbers")
    out = tuple(float(v) for v in value)
    if not all(np.isfinite(out)):
        raise ProfileError(f"{what} must be finite")
    return out


def _check_edges_freqs(edges: tuple[float, ...], freqs: tuple[float, ...], what: str) -> None:
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ProfileError(f"{what}: edges must be strictly increasing")
    if len(freqs) != len(edges) + 1:
        raise ProfileError(
            f"{what}: {len(edges)} edges need {len(edges) + 1} frequencies, got {len(freqs)}"
        )


def _check_freqs(freqs: Sequence[float], what: str) -> None:
    if any(f < 0 for f in freqs) or sum(freqs) <= 0:
        raise ProfileError(f"{what}: frequencies must be non-negative and not all zero")


def _feature_from_dict(d: Mapping[str, Any], i: int) -> Feature:
    what = f"features[{i}]"
    try:
        name, inp, column, kind = str(d["name"]), str(d["input"]), d.get("column"), d["kind"]
    except (KeyError, TypeError) as exc:
        raise ProfileError(f"{what}: missing field {exc}") from None
    if column is not None and (not isinstance(column, int) or column < 0):
        raise ProfileError(f"{what}: column must be a non-negative integer or null")
    if kind == "numeric":
        edges = _floats(d.get("edges"), f"{what}.edges")
        freqs = _floats(d.get("frequencies"), f"{what}.frequencies")
        _check_edges_freqs(edges, freqs, what)
        _check_freqs(freqs, what)
        return NumericFeature(name, inp, column, edges, freqs)
    if kind == "categorical":
        cats = d.get("categories")
        if not isinstance(cats, list):
            raise ProfileError(f"{what}.categories must be a list")
        freqs = _floats(d.get("frequencies"), f"{what}.frequencies")
        other = float(d.get("other_frequency", 0.0))
        if len(freqs) != len(cats):
            raise ProfileError(f"{what}: {len(cats)} categories but {len(freqs)} frequencies")
        _check_freqs([*freqs, other], what)
        return CategoricalFeature(name, inp, column, tuple(str(c) for c in cats), freqs, other)
    raise ProfileError(f"{what}: unknown kind {kind!r} (expected 'numeric' or 'categorical')")


def _prediction_from_dict(d: Mapping[str, Any]) -> Prediction:
    kind = d.get("kind")
    output = str(d.get("output", ""))
    if not output:
        raise ProfileError("prediction.output is required")
    freqs = _floats(d.get("frequencies"), "prediction.frequencies")
    _check_freqs(freqs, "prediction")
    if kind == "classification":
        classes = d.get("classes")
        if not isinstance(classes, list) or len(classes) != len(freqs):
            raise ProfileError("prediction.classes must be a list as long as its frequencies")
        return ClassificationPrediction(output, tuple(str(c) for c in classes), freqs)
    if kind == "regression":
        edges = _floats(d.get("edges"), "prediction.edges")
        _check_edges_freqs(edges, freqs, "prediction")
        return RegressionPrediction(output, edges, freqs)
    raise ProfileError(f"prediction: unknown kind {kind!r} (expected classification/regression)")


@dataclass(frozen=True)
class Profile:
    """A reference profile: per-feature reference distributions and the prediction one."""

    rows: int
    features: tuple[Feature, ...]
    prediction: Prediction | None = None
    version: int = field(default=PROFILE_VERSION)
    sample: Sample | None = None
    """Training rows for validation before traffic (`roost_serving.profile_sample`)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Validate and parse the JSON object form; raises :class:`ProfileError`."""
        if not isinstance(data, Mapping):
            raise ProfileError("a profile must be a JSON object")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(
                f"unsupported profile version {data.get('version')!r} (this roost reads 1)"
            )
        raw_features = data.get("features")
        if not isinstance(raw_features, list):
            raise ProfileError("profile.features must be a list")
        features = tuple(_feature_from_dict(f, i) for i, f in enumerate(raw_features))
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ProfileError("feature names must be unique")
        raw_pred = data.get("prediction")
        prediction = None if raw_pred is None else _prediction_from_dict(raw_pred)
        return cls(
            rows=int(data.get("rows", 0)),
            features=features,
            prediction=prediction,
            sample=parse_sample(data.get("sample")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        """Parse a profile from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"profile is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, uri_or_path: str) -> Profile:
        """Read a profile from a local path or any fsspec URI (file, http(s), s3, gs, memory)."""
        try:
            with fsspec.open(uri_or_path, "rb") as fh:
                raw = fh.read()
        except (OSError, ValueError, ImportError) as exc:
            raise ProfileError(f"cannot read profile {uri_or_path}: {exc}") from None
        try:
            return cls.from_json(raw)
        except ProfileError as exc:
            raise ProfileError(f"{uri_or_path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form, keys in the contract's order."""

        def ordered(obj: Feature | Prediction, lead: tuple[str, ...]) -> dict[str, Any]:
            d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items()}
            return {**{k: d.pop(k) for k in lead}, **d}

        out: dict[str, Any] = {"version": self.version, "rows": self.rows}
        out["features"] = [ordered(f, ("name", "input", "column", "kind")) for f in self.features]
        if self.prediction is not None:
            out["prediction"] = ordered(self.prediction, ("output", "kind"))
        if self.sample is not None:
            out["sample"] = self.sample.to_dict()
        return out

    def to_json(self) -> str:
        """JSON text (indented, trailing newline) suitable for review in a repository."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, uri_or_path: str) -> None:
        """Write the profile to a local path or fsspec URI."""
        with fsspec.open(uri_or_path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())


# --------------------------------------------------------------------------- tabular data

# --------------------------------------------------------------------------- building

_NUMERIC_ONNX = {"float", "double", "float16", "int8", "int16", "int32", "int64", "uint8"}
_NUMERIC_ONNX |= {"uint16", "uint32", "uint64", "bool"}


def _onnx_elem(type_str: str) -> str:
    # onnxruntime reports e.g. "tensor(float)"; the element name is what we need.
    return type_str.removeprefix("tensor(").removesuffix(")")


def _np_dtype(elem: str) -> npt.DTypeLike:
    if elem == "string":
        return np.object_
    return np.dtype("float32" if elem == "float" else "float64" if elem == "double" else elem)


def _numeric_feature(name: str, inp: str, col: int | None, values: Any, bins: int) -> Feature:
    arr = np.asarray(values, dtype=np.float64).ravel()
    edges = quantile_edges(arr, bins)
    counts = histogram(arr, edges)
    total = counts.sum()
    if total == 0:
        raise ProfileError(f"feature {name!r} has no finite values to profile")
    freqs = tuple(float(c) / float(total) for c in counts)
    return NumericFeature(name, inp, col, tuple(float(e) for e in edges), freqs)


def _categorical_feature(
    name: str, inp: str, col: int | None, values: Any, max_categories: int
) -> Feature:
    arr = np.asarray(values).astype(str).ravel()
    if arr.size == 0:
        raise ProfileError(f"feature {name!r} has no values to profile")
    cats, counts = np.unique(arr, return_counts=True)
    # Keep the most frequent categories (ties by name, so builds are deterministic); the rest
    # become "other" so a high-cardinality column cannot blow up the label set downstream.
    order = np.lexsort((cats, -counts))[:max_categories]
    kept = [str(c) for c in cats[order]]
    freqs = tuple(float(c) / arr.size for c in counts[order])
    other = max(0.0, 1.0 - float(counts[order].sum()) / arr.size)
    return CategoricalFeature(name, inp, col, tuple(kept), freqs, other)


def _model_classes(model_path: str) -> list[str] | None:
    """Class labels declared in the ONNX graph (ai.onnx.ml classifiers), if any."""
    import onnx

    try:
        model = onnx.load(model_path, load_external_data=False)
    except Exception:  # an unparsable file fails again, with a clearer message, in onnxruntime
        return None
    for node in model.graph.node:
        for attr in node.attribute:
            # TreeEnsembleClassifier says classlabels_int64s, LinearClassifier/SVM classlabels_ints
            if attr.name in ("classlabels_int64s", "classlabels_ints") and attr.ints:
                return [str(int(v)) for v in attr.ints]
            if attr.name == "classlabels_strings" and attr.strings:
                return [s.decode("utf-8") for s in attr.strings]
    return None


def build_profile(
    data: Any,
    model_path: str,
    *,
    bins: int = 10,
    feature_names: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    prediction_output: str | None = None,
    max_categories: int = 50,
    batch_rows: int = 8192,
) -> Profile:
    """Build a :class:`Profile` from reference ``data`` and the ONNX model at ``model_path``.

    ``data`` is a pandas DataFrame, a 2-D numpy array or a mapping of column name to 1-D
    array.  A model with one 2-D input (e.g. ``X`` of shape ``[-1, 13]``) takes every column
    in order (minus ``exclude``); a model with several inputs gets each input from the column of
    the same name.  The model is run over the data with onnxruntime to record the reference
    prediction distribution: the ``label`` output of a classifier (classes from the graph when
    it declares them), else a decile histogram of a numeric output.
    """
    import onnxruntime as ort

    table = as_table(data, feature_names)
    table = {k: v for k, v in table.items() if k not in set(exclude)}
    if not table:
        raise ProfileError("the data has no columns to profile")
    n_rows = len(next(iter(table.values())))
    if n_rows == 0:
        raise ProfileError("the data has no rows")
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    features: list[Feature] = []
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    sample: Sample | None = None

    def add_feature(name: str, inp: str, col: int | None, values: Any, elem: str) -> None:
        if elem in _NUMERIC_ONNX and np.asarray(values).dtype.kind in "fiub":
            # Bin the values as the model (and the server's monitor) will see them, e.g. as
            # float32: otherwise a value equal to an edge can land in different bins.
            seen = np.asarray(values).astype(_np_dtype(elem)).astype(np.float64)
            features.append(_numeric_feature(name, inp, col, seen, bins))
        else:
            features.append(_categorical_feature(name, inp, col, values, max_categories))

    if len(inputs) == 1 and len(inputs[0].shape) == 2 and inputs[0].shape[1] != 1:
        inp = inputs[0]
        width = inp.shape[1]
        if isinstance(width, int) and width != len(table):
            raise ProfileError(
                f"model input {inp.name!r} takes {width} columns but the data has {len(table)}"
                f" ({', '.join(table)}); use --exclude for columns that are not features"
            )
        elem = _onnx_elem(inp.type)
        for i, (name, values) in enumerate(table.items()):
            add_feature(name, inp.name, i, values, elem)
        try:
            matrix = np.column_stack([np.asarray(v) for v in table.values()])
            feeds[inp.name] = matrix.astype(_np_dtype(elem))
            sample = draw_sample(inp.name, feeds[inp.name])
        except ValueError as exc:
            raise ProfileError(
                f"cannot convert the data to {elem} for {inp.name!r}: {exc}"
            ) from None
    else:
        for inp in inputs:
            if inp.name not in table:
                raise ProfileError(
                    f"model input {inp.name!r} has no column of that name in the data"
                    f" (columns: {', '.join(table)})"
                )
            elem = _onnx_elem(inp.type)
            values = table[inp.name]
            add_feature(inp.name, inp.name, None, values, elem)
            arr = np.asarray(values)
            arr = (
                arr.astype(str).astype(object) if elem == "string" else arr.astype(_np_dtype(elem))
            )
            feeds[inp.name] = arr.reshape(-1, 1) if len(inp.shape) == 2 else arr.reshape(-1)
    prediction = _build_prediction(
        sess, feeds, n_rows, model_path, prediction_output, bins, batch_rows
    )
    return Profile(rows=n_rows, features=tuple(features), prediction=prediction, sample=sample)


def _build_prediction(
    sess: Any,
    feeds: dict[str, np.ndarray[Any, Any]],
    n_rows: int,
    model_path: str,
    output: str | None,
    bins: int,
    batch_rows: int,
) -> Prediction:
    outputs = {o.name: _onnx_elem(o.type) for o in sess.get_outputs()}
    if output is None:
        output = "label" if "label" in outputs else next(iter(outputs))
    if output not in outputs:
        raise ProfileError(f"model has no output {output!r} (outputs: {', '.join(outputs)})")
    chunks = []
    for start in range(0, n_rows, batch_rows):
        feed = {k: v[start : start + batch_rows] for k, v in feeds.items()}
        try:
            chunks.append(np.asarray(sess.run([output], feed)[0]).reshape(-1))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ProfileError(f"running the model on the data failed: {exc}") from None
    preds = np.concatenate(chunks)
    elem = outputs[output]
    if output == "label" or elem == "string" or elem.startswith(("int", "uint")):
        labels = preds.astype(str)
        observed = [str(c) for c in np.unique(labels)]
        declared = _model_classes(model_path) or []
        classes = declared + [c for c in observed if c not in declared]
        counts = dict.fromkeys(classes, 0)
        values, n = np.unique(labels, return_counts=True)
        counts.update({str(v): int(k) for v, k in zip(values, n, strict=True)})
        freqs = tuple(counts[c] / labels.size for c in classes)
        return ClassificationPrediction(output, tuple(classes), freqs)
    numeric = preds.astype(np.float64)
    edges = quantile_edges(numeric, bins)
    counts_arr = histogram(numeric, edges)
    if counts_arr.sum() == 0:
        raise ProfileError(f"output {output!r} has no finite values")
    freqs = tuple(float(c) / float(counts_arr.sum()) for c in counts_arr)
    return RegressionPrediction(output, tuple(float(e) for e in edges), freqs)


# --------------------------------------------------------------------------- CLI


def _run_cli(args: argparse.Namespace) -> int:
    try:
        table: Table = read_table(args.data)
        profile = build_profile(
            table,
            args.model,
            bins=args.bins,
            exclude=args.exclude,
            prediction_output=args.output_name,
            max_categories=args.max_categories,
        )
        if args.output == "-":
            sys.stdout.write(profile.to_json())
        else:
            profile.save(args.output)
    except (ProfileError, OSError) as exc:
        print(f"roost: error: {exc}", file=sys.stderr)
        return 1
    pred = profile.prediction
    what = "no prediction"
    if isinstance(pred, ClassificationPrediction):
        what = f"{pred.kind} of {pred.output!r} over {len(pred.classes)} classes"
    elif isinstance(pred, RegressionPrediction):
        what = f"{pred.kind} of {pred.output!r} over {len(pred.frequencies)} bins"
    print(
        f"roost: wrote {args.output}: {len(profile.features)} features from {profile.rows} rows,"
        f" prediction {what}",
        file=sys.stderr,
    )
    return 0


def add_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``roost profile DATA --model MODEL -o PROFILE``."""
    p = subparsers.add_parser(
        "profile",
        help="build a reference profile (profile.json) from training data and an ONNX model",
        description=(
            "Build the reference profile the server compares live traffic against: decile bins"
            " and frequencies per numeric feature, category frequencies per categorical one, and"
            " the model's prediction distribution on the data (the model is run with"
            " onnxruntime). DATA is a CSV file with a header row, or Parquet (needs pyarrow)."
        ),
    )
    p.add_argument("data", help="reference data: CSV with a header row, or .parquet")
    p.add_argument("--model", required=True, help="the ONNX model file")
    p.add_argument(
        "-o", "--output", required=True, help="where to write profile.json ('-': stdout)"
    )
    p.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="COLUMN",
        help="data column that is not a model input, e.g. the target (repeatable)",
    )
    p.add_argument("--output-name", default=None, help="model output to profile (default: label)")
    p.add_argument(
        "--max-categories", type=int, default=50, help="categories kept per categorical feature"
    )
    p.set_defaults(func=_run_cli)
