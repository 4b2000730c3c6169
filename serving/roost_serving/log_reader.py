"""Reading an inference log back: ``roost log URI`` and :func:`read_log` for retraining.

:func:`read_log` reads every ``.jsonl`` and ``.parquet`` file under a directory or fsspec URI
(what :mod:`roost_serving.log_sinks` writes) into one pandas DataFrame, one row per record,
oldest first: ``kind``, ``id``, ``time`` (UTC timestamps), ``model``, ``revision``, ``pod``,
``protocol``, ``status``, ``latency_s``, ``error``, ``inputs`` and ``outputs`` (dicts of
nested lists), ``ground_truth`` (feedback records), plus any extra fields. :func:`examples`
turns the answered predictions into one row per example (the rows of a 2-D input become
feature columns, 1-D outputs become columns), with the ground truth of feedback records joined
on the request id where there is some::

    from roost_serving.log_reader import read_log, examples
    log = read_log("s3://bucket/inference-log")           # AWS_* from the environment
    table = examples(log, features=["alcohol", ...])      # one row per example, + label

Needs pandas (``pip install 'roost[tools]'``); Parquet files need pyarrow.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import fsspec
import orjson

from roost_serving.log_sinks import COLUMNS

_JSON_COLUMNS = ("inputs", "outputs", "ground_truth")


def _records_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def _records_parquet(data: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: list[dict[str, Any]] = []
    for row in pq.read_table(pa.BufferReader(data)).to_pylist():
        for name in _JSON_COLUMNS:
            text = row.get(name)
            row[name] = orjson.loads(text) if text is not None else None
        extra = row.pop("extra", None)
        if extra:
            row.update(orjson.loads(extra))
        out.append(row)
    return out


def log_files(uri: str, **storage_options: Any) -> tuple[Any, list[str]]:
    """The filesystem and the sorted log file paths under ``uri`` (written files only)."""
    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    # fsspec reuses filesystem instances: a listing cached by an earlier read would hide
    # files written since (and make cat_file refuse them).
    fs.invalidate_cache()
    found = [p for p in fs.find(root) if p.endswith((".jsonl", ".parquet"))]
    return fs, sorted(found)


def read_log(uri: str, kind: str | None = None, **storage_options: Any) -> Any:
    """Every record under ``uri`` as a pandas DataFrame (see the module docstring)."""
    import pandas as pd

    fs, paths = log_files(uri, **storage_options)
    records: list[dict[str, Any]] = []
    for path in paths:
        data = fs.cat_file(path)
        parse = _records_parquet if path.endswith(".parquet") else _records_jsonl
        records.extend(parse(data))
    if kind is not None:
        records = [r for r in records if r.get("kind") == kind]
    columns = [c for c in COLUMNS if c != "extra"]
    frame = pd.DataFrame.from_records(records)
    for name in columns:
        if name not in frame.columns:
            frame[name] = None
    frame = frame[columns + [c for c in frame.columns if c not in columns]]
    frame["time"] = pd.to_datetime(frame["time"].astype("float64"), unit="s", utc=True)
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def examples(log: Any, features: list[str] | None = None, input_name: str | None = None) -> Any:
    """One row per example of the answered predictions in ``log`` (a :func:`read_log` frame).

    The rows of the 2-D input ``input_name`` (default: the first input) become the columns
    ``features`` (default ``x0, x1, ...``); each output with one value per row becomes a
    column; ``ground_truth`` comes from the feedback records with the same ``id`` (a list is
    taken one value per row, a scalar for a one-row request).
    """
    import pandas as pd

    predictions = log[(log["kind"] == "prediction") & (log["status"] == 200)]
    truth: dict[str, Any] = {}
    for record in log[log["kind"] == "feedback"].itertuples():
        truth[str(record.id)] = record.ground_truth
    rows: list[dict[str, Any]] = []
    for record in predictions.itertuples():
        inputs: dict[str, Any] = record.inputs or {}
        name = input_name or next(iter(inputs), None)
        matrix = inputs.get(name) if name is not None else None
        if not matrix:
            continue
        labels = truth.get(str(record.id))
        for j, values in enumerate(matrix):
            values = values if isinstance(values, list) else [values]
            names = features or [f"x{k}" for k in range(len(values))]
            row: dict[str, Any] = {"id": record.id, "time": record.time}
            row.update({"revision": record.revision, "pod": record.pod})
            row.update(zip(names, values, strict=False))
            for output, value in (record.outputs or {}).items():
                if isinstance(value, list) and len(value) == len(matrix):
                    row[output] = value[j]
            if labels is not None:
                row["ground_truth"] = labels[j] if isinstance(labels, list) else labels
            rows.append(row)
    return pd.DataFrame.from_records(rows)


def run(args: argparse.Namespace) -> int:
    """``roost log``: summarise a log, or write it (or its examples) to a file."""
    try:
        frame = read_log(args.uri, kind=args.kind)
    except ImportError as exc:
        print(f"roost: error: roost log needs pandas (and pyarrow for Parquet): {exc}")
        return 2
    except FileNotFoundError as exc:
        print(f"roost: error: no inference log at {args.uri}: {exc}", file=sys.stderr)
        return 1
    if args.examples:
        frame = examples(frame, args.features.split(",") if args.features else None)
    if args.output:
        with fsspec.open(args.output, "wb") as handle:
            if args.output.endswith(".parquet"):
                frame.to_parquet(handle, index=False)
            else:
                handle.write(frame.to_csv(index=False).encode())
        print(f"roost: wrote {len(frame)} rows to {args.output}")
        return 0
    print(f"{len(frame)} rows")
    if len(frame) and not args.examples:
        summary = frame.groupby(["kind", "revision", "pod", "status"], dropna=False).size()
        print(summary.to_string())
    elif len(frame):
        print(frame.head(20).to_string())
    return 0


def add_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``roost log``."""
    p = subparsers.add_parser(
        "log",
        help="read an inference log (directory or fsspec URI) into a table",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("uri", help="directory or fsspec URI the server's --log-uri named")
    p.add_argument("--kind", choices=("prediction", "feedback"), help="only records of a kind")
    p.add_argument("--examples", action="store_true", help="one row per example (retraining)")
    p.add_argument("--features", help="comma-separated feature names of the input's columns")
    p.add_argument("--output", help="write the table here (.csv or .parquet; any fsspec URI)")
    p.set_defaults(func=run)
