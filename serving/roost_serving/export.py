"""``roost export``: convert a scikit-learn model to ONNX and prove the conversion is faithful.

The model is converted with skl2onnx to a graph with one float input (``X``, shape
``[-1, n_features]``).  Classifiers get ``label`` and ``probabilities`` tensor outputs (no
ZipMap, so every Open Inference Protocol client can read them); regressors get ``variable``.
The converted graph is then run with onnxruntime on a sample of real rows and its predictions
are compared with the scikit-learn model's: any disagreement fails the export with the count and
the first rows that differ, and nothing is written.

Loading a ``.joblib`` file is unpickling, which can run arbitrary code: only export models you
trained yourself or otherwise trust.  The server never loads pickles, only the ONNX this writes.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt

from roost_serving.tabular import ProfileError, Table, read_table

__all__ = ["ExportError", "Verification", "add_cli", "convert", "verify"]


class ExportError(ValueError):
    """The model cannot be exported, or its ONNX form disagrees with it."""


@dataclass(frozen=True)
class Verification:
    """Outcome of comparing ONNX and scikit-learn predictions on a sample."""

    rows: int
    mismatches: int
    mismatch_rows: tuple[int, ...]  # the first few, for the error message
    max_probability_diff: float | None  # classifiers only

    @property
    def ok(self) -> bool:
        """True when every sample row agrees."""
        return self.mismatches == 0


def _is_classifier(model: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(model))


def _final_estimator(model: Any) -> Any:
    # Pipelines put the classifier last; the no-ZipMap option must name that object.
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def convert(
    model: Any, n_features: int, *, input_name: str = "X", opset: int | None = None
) -> bytes:
    """Serialized ONNX of ``model`` with one FP32 input ``input_name`` of ``[-1, n_features]``."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options: dict[int, dict[str, Any]] = {}
    if _is_classifier(model):
        options[id(_final_estimator(model))] = {"zipmap": False}
    try:
        onx = convert_sklearn(
            model,
            initial_types=[(input_name, FloatTensorType([None, n_features]))],
            options=options or None,
            target_opset=opset,
        )
    except Exception as exc:  # skl2onnx raises a zoo of types for unsupported models
        raise ExportError(f"skl2onnx cannot convert {type(model).__name__}: {exc}") from None
    data: bytes = onx.SerializeToString()
    return data


def _sklearn_predict(model: Any, x: npt.NDArray[np.float32]) -> tuple[Any, Any]:
    with warnings.catch_warnings():
        # Models fitted on a DataFrame warn about a bare array; the column order was checked.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        labels = model.predict(x)
        proba = model.predict_proba(x) if _is_classifier(model) else None
    return labels, proba


def verify(
    model: Any,
    onnx_model: bytes,
    x: npt.NDArray[np.float32],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> Verification:
    """Run both models on ``x``; classifier labels must be equal, regressor outputs close."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]
    result = dict(zip(outputs, sess.run(None, {input_name: x}), strict=True))
    expected, proba = _sklearn_predict(model, x)
    expected = np.asarray(expected)
    max_diff: float | None = None
    bad: npt.NDArray[np.bool_]
    if _is_classifier(model):
        got = np.asarray(result["label"]).reshape(-1)
        bad = got.astype(str) != expected.reshape(-1).astype(str)
        if proba is not None and "probabilities" in result:
            max_diff = float(np.max(np.abs(np.asarray(result["probabilities"]) - proba)))
    else:
        n = expected.shape[0]
        out = np.asarray(result[outputs[0]], dtype=np.float64).reshape(n, -1)
        want = expected.astype(np.float64).reshape(n, -1)
        bad = np.asarray(~np.isclose(out, want, rtol=rtol, atol=atol).all(axis=1))
    rows = np.flatnonzero(bad)
    return Verification(int(x.shape[0]), int(rows.size), tuple(int(r) for r in rows[:10]), max_diff)


def sample_matrix(model: Any, table: Table, exclude: list[str]) -> npt.NDArray[np.float32]:
    """The sample as the FP32 matrix the ONNX model takes, in the model's column order."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        missing = [str(n) for n in names if str(n) not in table]
        if missing:
            raise ExportError(f"the sample lacks the model's columns: {', '.join(missing)}")
        columns = [str(n) for n in names]
    else:
        columns = [c for c in table if c not in set(exclude)]
        expected = getattr(model, "n_features_in_", len(columns))
        if len(columns) != expected:
            raise ExportError(
                f"the model takes {expected} features but the sample has {len(columns)} columns"
                f" ({', '.join(columns)}); use --exclude for columns that are not features"
            )
    non_numeric = [c for c in columns if table[c].dtype.kind not in "fiub"]
    if non_numeric:
        raise ExportError(
            "roost export handles models over numeric features (one float tensor); not numeric: "
            + ", ".join(non_numeric)
        )
    if not columns or len(table[columns[0]]) == 0:
        raise ExportError("the sample has no rows or no feature columns")
    return np.column_stack([table[c] for c in columns]).astype(np.float32)


def _run_cli(args: argparse.Namespace) -> int:
    import joblib

    try:
        try:
            # Unpickling runs code from the file: the help text says to use trusted files only.
            model = joblib.load(args.model)
        except Exception as exc:
            raise ExportError(f"cannot load {args.model} with joblib: {exc}") from None
        if not hasattr(model, "predict"):
            raise ExportError(f"{args.model} holds a {type(model).__name__}, not a fitted model")
        x = sample_matrix(model, read_table(args.sample), args.exclude)
        onnx_model = convert(model, x.shape[1], input_name=args.input_name, opset=args.opset)
        check = verify(model, onnx_model, x, rtol=args.rtol, atol=args.atol)
        if check.mismatches > args.allow_mismatches:
            shown = ", ".join(str(r) for r in check.mismatch_rows)
            raise ExportError(
                f"ONNX and scikit-learn predictions disagree on {check.mismatches} of"
                f" {check.rows} sample rows (first rows: {shown}); {args.output} not written"
            )
        with fsspec.open(args.output, "wb") as fh:
            fh.write(onnx_model)
    except (ExportError, ProfileError, OSError) as exc:
        print(f"roost: error: {exc}", file=sys.stderr)
        return 1
    extra = ""
    if check.max_probability_diff is not None:
        extra = f", max |probability difference| {check.max_probability_diff:.2g}"
    print(
        f"roost: wrote {args.output}: {check.rows - check.mismatches} of {check.rows} sample"
        f" predictions agree{extra}",
        file=sys.stderr,
    )
    return 0


def add_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``roost export MODEL.joblib --sample DATA.csv -o model.onnx``."""
    p = subparsers.add_parser(
        "export",
        help="convert a scikit-learn model (joblib) to ONNX and verify it on sample data",
        description=(
            "Convert a fitted scikit-learn model or pipeline to ONNX with skl2onnx (input X, FP32,"
            " [-1, n_features]; classifiers output 'label' and 'probabilities') and check that"
            " onnxruntime and scikit-learn predict the same on the sample rows. WARNING: loading"
            " a joblib file unpickles it, which can execute arbitrary code: only export models"
            " you trust. The server itself never loads pickles."
        ),
    )
    p.add_argument("model", help="fitted scikit-learn model saved with joblib.dump (trusted only)")
    p.add_argument(
        "--sample", required=True, help="rows to verify on: CSV with header, or .parquet"
    )
    p.add_argument("-o", "--output", required=True, help="where to write model.onnx")
    p.add_argument("--input-name", default="X", help="name of the ONNX input tensor")
    p.add_argument("--opset", type=int, default=None, help="target ONNX opset (default: latest)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="COLUMN",
        help="sample column that is not a feature, e.g. the target (repeatable)",
    )
    p.add_argument("--rtol", type=float, default=1e-4, help="regressors: relative tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="regressors: absolute tolerance")
    p.add_argument(
        "--allow-mismatches",
        type=int,
        default=0,
        metavar="N",
        help="accept up to N disagreeing rows (default 0)",
    )
    p.set_defaults(func=_run_cli)
