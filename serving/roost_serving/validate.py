"""`roost validate`: a candidate ONNX model checked against the stable one before it ships.

    roost validate --candidate model.onnx --stable stable.onnx [--golden rows.csv]
                   [--expected-column target] [--min-agreement 0.95] [--max-abs-error E]
                   [--allow-interface-change] [--profile profile.json]

Without ``--golden``, ``--profile`` compares both models on the rows the reference profile
sampled (``roost profile`` writes them), as the operator does in the cluster.

Exit status 0 when the candidate may replace the stable model, 1 when a check failed (each
failure printed as ``roost: validate: ...``), 2 on unreadable input. The comparisons are in
`roost_serving.validation`; this module only loads the models and runs them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from roost_serving import validation
from roost_serving.model import ModelLoadError, load_model
from roost_serving.profile import Profile
from roost_serving.tabular import ProfileError, read_table


def _golden_inputs(
    path: str, input_name: str, expected_column: str | None, exclude: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    table = read_table(path)
    expected = table.pop(expected_column) if expected_column else None
    if expected_column and expected is None:
        raise ProfileError(f"{path} has no column {expected_column!r}")
    columns = [np.asarray(v, dtype=np.float32) for k, v in table.items() if k not in exclude]
    return {input_name: np.stack(columns, axis=1)}, expected


def _thresholds(args: argparse.Namespace) -> validation.GoldenThresholds:
    return validation.GoldenThresholds(
        min_agreement=args.min_agreement,
        max_abs_error=args.max_abs_error,
        min_accuracy=args.min_accuracy,
    )


def run(args: argparse.Namespace) -> int:
    """The whole command; returns the exit status."""
    try:
        candidate = load_model(args.candidate)
        stable = load_model(args.stable)
    except ModelLoadError as e:
        print(f"roost: error: {e}", file=sys.stderr)
        return 2
    sig = validation.compare_signatures(
        candidate.inputs,
        candidate.outputs,
        stable.inputs,
        stable.outputs,
        allow_interface_change=args.allow_interface_change,
    )
    for note in sig.notes:
        print(f"roost: validate: note (interface change declared): {note}")
    failures = list(sig.problems)
    if args.profile and not args.golden and sig.ok:
        try:
            sample = Profile.load(args.profile).sample
        except ProfileError as e:
            print(f"roost: error: {e}", file=sys.stderr)
            return 2
        if sample is None or not sample.rows:
            print(f"roost: validate: {args.profile} holds no sample rows: answers not compared")
        else:
            feed = {sample.input: np.asarray(sample.rows, dtype=np.float32)}
            report = validation.compare_outputs(
                candidate.run(feed), stable.run(feed), None, _thresholds(args)
            )
            print(f"roost: validate: profile sample: {report.summary()}")
            failures += [f"profile sample: {p}" for p in report.problems]
    if args.golden and sig.ok:
        if len(stable.inputs) != 1 or len(stable.inputs[0].shape) != 2:
            failures.append("--golden needs models with one 2-D input (rows x features)")
        else:
            try:
                feed, expected = _golden_inputs(
                    args.golden, stable.inputs[0].name, args.expected_column, args.exclude
                )
            except (ProfileError, OSError, ValueError) as e:
                print(f"roost: error: {args.golden}: {e}", file=sys.stderr)
                return 2
            report = validation.compare_outputs(
                candidate.run(feed),
                stable.run(feed),
                expected,
                _thresholds(args),
            )
            print(f"roost: validate: golden rows: {report.summary()}")
            failures += report.problems
    for problem in failures:
        print(f"roost: validate: {problem}", file=sys.stderr)
    if failures:
        print(f"roost: validate: FAILED ({len(failures)} problems)", file=sys.stderr)
        return 1
    print(f"roost: validate: OK: {args.candidate} can replace {args.stable}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``roost validate``."""
    p = subparsers.add_parser(
        "validate",
        help="check a candidate model against the stable one (signature, golden rows)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--candidate", required=True, help="the new model.onnx (path or URI)")
    p.add_argument("--stable", required=True, help="the model.onnx serving today (path or URI)")
    p.add_argument("--golden", help="golden rows: CSV with a header row, or .parquet")
    p.add_argument("--expected-column", help="golden column holding the expected label")
    p.add_argument(
        "--profile", help="without --golden: compare on the rows sampled into this profile"
    )
    p.add_argument(
        "--exclude", action="append", default=[], metavar="COLUMN", help="non-feature column"
    )
    p.add_argument("--min-agreement", type=float, default=0.95, help="default 0.95")
    p.add_argument("--max-abs-error", type=float, help="largest float-output difference")
    p.add_argument("--min-accuracy", type=float, help="candidate accuracy floor")
    p.add_argument(
        "--allow-interface-change",
        action="store_true",
        help="the interface change is intended: report signature differences without failing",
    )
    p.set_defaults(func=run)
