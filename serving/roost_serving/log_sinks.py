"""Where inference log records go: files on fsspec (Parquet, JSON Lines) or CloudEvents.

:func:`encode_record` turns one buffered record (numpy arrays by reference) into its JSON line
and its Parquet row, masking redacted inputs; it runs on the log's writer thread, never on the
request path. A :class:`Sink` writes one file's worth of records at a time:

- :class:`FileSink`: ``<uri>/<YYYY-MM-DD>/<HHMMSS.ffffff>-<pod>-<seq>.jsonl|.parquet`` on any
  fsspec filesystem (a local directory, ``s3://``, ``gs://``, ``memory://``). Each file is
  written whole (object stores have no append): locally to a temporary name and renamed, so a
  reader never sees half a file. Parquet rows keep ``inputs``, ``outputs``, ``ground_truth``
  and ``extra`` as JSON text, so one schema holds every model and both record kinds.
- :class:`CloudEventsSink`: an ``http(s)://`` URL receives each batch as one
  ``application/cloudevents-batch+json`` POST (CloudEvents 1.0, structured batch mode), with
  types ``dev.roost.inference.prediction`` and ``dev.roost.inference.feedback``.

S3 endpoints and credentials come from the environment as for model URIs (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import datetime as dt
import http.client
import itertools
import os
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import fsspec
import numpy as np
import orjson

from roost_serving.redact import redact_uri

COLUMNS = (
    "kind",
    "id",
    "time",
    "model",
    "revision",
    "pod",
    "protocol",
    "status",
    "latency_s",
    "error",
    "inputs",
    "outputs",
    "ground_truth",
    "extra",
)
"""Parquet columns, in order; the last four hold JSON text."""
_JSON_COLUMNS = ("inputs", "outputs", "ground_truth")
_SCALARS = frozenset(COLUMNS) - {*_JSON_COLUMNS, "extra"}
_TIMEOUTS = {"connect_timeout": 10.0, "read_timeout": 30.0}


class Sink(Protocol):
    """Writes one file (or batch) of encoded records, raising on failure."""

    def write(self, rows: list[dict[str, Any]], lines: list[bytes]) -> None:
        """Write ``rows`` (Parquet rows) / ``lines`` (their JSON) as one unit."""

    def describe(self) -> str:
        """Where the records go, free of credentials (for log lines)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot log a value of type {type(obj).__name__}")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _redacted(
    tensors: Mapping[str, np.ndarray] | None, redact: Mapping[str, tuple[int, ...] | None]
) -> Mapping[str, Any] | None:
    if tensors is None or not redact:
        return tensors
    out: dict[str, Any] = dict(tensors)
    for name, columns in redact.items():
        if name not in out:
            continue
        if columns is None:
            out[name] = None
            continue
        tensor = np.asarray(out[name])
        if tensor.ndim != 2:
            out[name] = None  # columns are a 2-D input's; anything else hides whole
            continue
        # A copy: the request's own array is intact. Floats keep their type (NaN, written as
        # null); other types become objects so a column can hold None.
        floating = tensor.dtype.kind == "f"
        masked = tensor.copy() if floating else tensor.astype(object)
        masked[:, list(columns)] = np.nan if floating else None
        out[name] = masked
    return out


def encode_record(
    record: Mapping[str, Any], redact: Mapping[str, tuple[int, ...] | None]
) -> tuple[dict[str, Any], bytes]:
    """(Parquet row, JSON line) of one record, with redacted inputs masked by null.

    The row's ``inputs``, ``outputs``, ``ground_truth`` and ``extra`` are JSON bytes."""
    record = dict(record)
    if "inputs" in record:
        record["inputs"] = _redacted(record["inputs"], redact)
    # Each tensor is encoded once; the Parquet row keeps those bytes (decoded to text only
    # by the Parquet sink) and the JSON line embeds them as they are.
    row: dict[str, Any] = {name: record.get(name) for name in _SCALARS}
    json_parts = {name: _dumps(record.get(name)) for name in _JSON_COLUMNS}
    row.update(json_parts)
    extra = {k: v for k, v in record.items() if k not in COLUMNS}
    row["extra"] = _dumps(extra) if extra else None
    whole = {k: v for k, v in record.items() if k not in _JSON_COLUMNS}
    whole.update({k: orjson.Fragment(v) for k, v in json_parts.items() if k in record})
    return row, _dumps(whole)


class FileSink:
    """One file per batch under a directory or fsspec URI."""

    def __init__(self, uri: str, fmt: str, pod: str) -> None:
        """Check the format's library now, so a missing pyarrow fails at start."""
        self.uri = uri.rstrip("/")
        self.format = fmt
        self.pod = pod
        self._seq = itertools.count(1)
        options: dict[str, Any] = {}
        if self.uri.startswith("s3://"):
            options["config_kwargs"] = {**_TIMEOUTS, "retries": {"max_attempts": 2}}
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **options)
        self.local = "file" in _protocols(self.fs)
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ValueError(
                    "--log-format parquet needs pyarrow: pip install 'roost[parquet]'"
                ) from None

    def describe(self) -> str:
        """The URI with credentials masked."""
        return redact_uri(self.uri)

    def path(self, now: dt.datetime) -> str:
        """The next file's path for a batch opened at ``now`` (UTC)."""
        name = f"{now:%H%M%S.%f}-{self.pod}-{next(self._seq):06d}.{self.format}"
        return f"{self.root}/{now:%Y-%m-%d}/{name}"

    def write(self, rows: list[dict[str, Any]], lines: list[bytes]) -> None:
        """Encode and write one file."""
        data = _parquet(rows) if self.format == "parquet" else b"\n".join(lines) + b"\n"
        path = self.path(dt.datetime.now(dt.UTC))
        if self.local:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            temporary = path + ".tmp"
            self.fs.pipe_file(temporary, data)
            self.fs.mv(temporary, path)
        else:
            self.fs.pipe_file(path, data)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("id", pa.string()),
            ("time", pa.float64()),
            ("model", pa.string()),
            ("revision", pa.string()),
            ("pod", pa.string()),
            ("protocol", pa.string()),
            ("status", pa.int32()),
            ("latency_s", pa.float64()),
            ("error", pa.string()),
            *((name, pa.string()) for name in (*_JSON_COLUMNS, "extra")),
        ]
    )
    texts = (*_JSON_COLUMNS, "extra")
    decoded = [
        {k: (v.decode() if k in texts and v is not None else v) for k, v in row.items()}
        for row in rows
    ]
    table = pa.Table.from_pylist(decoded, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data: bytes = sink.getvalue().to_pybytes()
    return data


class CloudEventsSink:
    """POSTs each batch to an HTTP receiver as CloudEvents (structured batch mode)."""

    def __init__(self, url: str, timeout: float = _TIMEOUTS["read_timeout"]) -> None:
        """``url``: http(s) endpoint; ``timeout`` bounds connecting and each read."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_uri(url)}")
        self.url = url
        self.parts = parts
        self.timeout = timeout

    def describe(self) -> str:
        """The URL with credentials masked."""
        return redact_uri(self.url)

    def write(self, rows: list[dict[str, Any]], lines: list[bytes]) -> None:
        """One POST of every record; any status but 2xx raises."""
        events = [_event(row, line) for row, line in zip(rows, lines, strict=True)]
        body = orjson.dumps(events)
        parts = self.parts
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname or "", parts.port, timeout=self.timeout)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(
                "POST",
                target,
                body=body,
                headers={"Content-Type": "application/cloudevents-batch+json"},
            )
            response = conn.getresponse()
            response.read()
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status} {response.reason}")
        finally:
            conn.close()


def _event(row: Mapping[str, Any], line: bytes) -> dict[str, Any]:
    stamp = dt.datetime.fromtimestamp(float(row["time"] or 0.0), dt.UTC)
    return {
        "specversion": "1.0",
        "type": f"dev.roost.inference.{row['kind']}",
        "source": f"/roost/{row['model']}/{row['revision']}/{row['pod']}",
        "id": f"{row['id']}-{row['kind']}",
        "time": stamp.isoformat().replace("+00:00", "Z"),
        "subject": row["id"],
        "datacontenttype": "application/json",
        "data": orjson.Fragment(line),
    }


def open_sink(uri: str, fmt: str, pod: str | None = None) -> Sink:
    """The sink ``uri`` names: CloudEvents for http(s), files otherwise."""
    if uri.split("://", 1)[0].lower() in ("http", "https"):
        return CloudEventsSink(uri)
    return FileSink(uri, fmt, pod or pod_name())


def pod_name() -> str:
    """This pod's name (``POD_NAME`` from the downward API), else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()
