"""The inference log: sampled records of what the model answered, written off the hot path.

``roost serve --log-uri URI`` records a sample (``--log-sample-rate``) of inference requests:
request id, time, model, revision, pod, protocol, inputs, outputs, latency and status. The
request path only appends a small record (references to the request's numpy arrays, no
copies, no encoding) to a bounded buffer and returns; one writer thread encodes, redacts and
writes the records in batches to a sink (:mod:`roost_serving.log_sinks`): Parquet or JSON Lines
files in a local directory or any fsspec URI, or CloudEvents batches over HTTP. A file is
closed after ``--log-rotate-seconds`` or ``--log-rotate-bytes``, whichever comes first.

Nothing on the request path waits for the sink or fails because of it: a full buffer (a slow or
stalled sink) drops the new record and counts it. Every record ends in exactly one outcome of
``roost_log_records_total{outcome}``: ``written``, ``dropped`` (the buffer was full when it
came), or ``lost`` (accepted, but the sink failed every attempt, or it was still unwritten
when the shutdown deadline came). :meth:`InferenceLog.close` flushes on shutdown within a
deadline inside the pod's termination grace period, and logs how many records were lost and
why; a stalled write may still complete after that report, before the process exits.

Appending other records (the feedback API). Anything that knows a request id can append a
record to the same log, so the log joins offline on ``id``::

    plane.inference_log.append(feedback_record(request_id, ground_truth, model=..., ...))

``append`` never blocks and returns False when the record was dropped; feedback records are
never sampled out. Every record has ``kind`` (``"prediction"`` or ``"feedback"``), ``id`` and
``time`` (seconds since the epoch, UTC); :func:`roost_serving.log_reader.read_log` reads
either kind into one pandas DataFrame.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from roost_serving.config import Settings
from roost_serving.log_sinks import Sink, encode_record, open_sink, pod_name
from roost_serving.profile import Profile
from roost_serving.protocol import DecodedRequest, RoostError, TensorSpec

if TYPE_CHECKING:
    from roost_serving.requestid import Inference

log = logging.getLogger("roost.inference_log")

OUTCOMES = ("written", "dropped", "lost")
_TICK_S = 0.2
"""How often the writer looks at the buffer (and the open file's age) when nothing wakes it."""
_ATTEMPTS = 3
"""Writes of one file before its records are counted lost (backoff 0.5 s, doubling)."""


@dataclass(frozen=True)
class LogConfig:
    """Where and how the inference log is written."""

    uri: str
    """Directory, fsspec URI, or http(s) URL of a CloudEvents receiver."""
    model: str
    """Model name on every record."""
    revision: str
    """Revision on every record."""
    pod: str
    """Pod (or host) name on every record."""
    sample_rate: float = 1.0
    """Share of inference requests recorded."""
    format: str = "jsonl"
    """``jsonl`` or ``parquet`` (file sinks)."""
    redact: Mapping[str, tuple[int, ...] | None] = field(default_factory=dict)
    """Input name -> columns whose values are replaced by null (``None``: the whole input)."""
    buffer: int = 10000
    """Most records waiting to be written."""
    rotate_seconds: float = 10.0
    """Longest a file stays open."""
    rotate_bytes: int = 8 * 1024 * 1024
    """JSON size of the records that closes a file."""


def feedback_record(
    request_id: str, ground_truth: Any, *, model: str, revision: str, pod: str, **extra: Any
) -> dict[str, Any]:
    """A ground-truth record for :meth:`InferenceLog.append`; ``extra`` adds fields."""
    return {
        "kind": "feedback",
        "id": request_id,
        "time": time.time(),
        "model": model,
        "revision": revision,
        "pod": pod,
        "ground_truth": ground_truth,
        **extra,
    }


def redaction(
    names: tuple[str, ...], inputs: tuple[TensorSpec, ...], profile: Profile | None
) -> dict[str, tuple[int, ...] | None]:
    """``--log-redact`` names resolved: a model input masks the whole tensor, a profile
    feature the column it is of its input. An unknown name is an error (a misspelt name would
    otherwise leak the very column it meant to hide)."""
    tensors = {spec.name for spec in inputs}
    features = {f.name: f for f in profile.features} if profile is not None else {}
    out: dict[str, tuple[int, ...] | None] = {}
    for name in names:
        if name in tensors:
            out[name] = None
        elif name in features and features[name].column is None:
            out[features[name].input] = None
        elif name in features:
            feature = features[name]
            before = out.get(feature.input, ())
            if before is not None:
                out[feature.input] = (*before, int(feature.column or 0))
        else:
            known = sorted(tensors | set(features))
            raise ValueError(
                f"--log-redact {name!r} is neither a model input nor a profile feature "
                f"(known: {', '.join(known)})"
            )
    return out


def open_log(
    settings: Settings,
    registry: CollectorRegistry,
    inputs: tuple[TensorSpec, ...],
    profile: Profile | None,
) -> InferenceLog:
    """The started inference log ``settings`` ask for; ValueError says what is wrong."""
    assert settings.log_uri is not None
    config = LogConfig(
        uri=settings.log_uri,
        model=settings.name,
        revision=settings.revision,
        pod=pod_name(),
        sample_rate=settings.log_sample_rate,
        format=settings.log_format,
        redact=redaction(settings.log_redact, inputs, profile),
        buffer=settings.log_buffer,
        rotate_seconds=settings.log_rotate_seconds,
        rotate_bytes=settings.log_rotate_bytes,
    )
    inference_log = InferenceLog(config, registry)
    inference_log.start()
    return inference_log


def shutdown_deadline(signalled: float | None, grace_seconds: float) -> float:
    """Seconds the log may take to flush: up to 1 s before the grace period's end (the
    watchdog exits 0.5 s before it), counted from the termination signal at ``signalled``
    (``time.monotonic()``); 5 s when the server stopped without one (tests, a failed load)."""
    if signalled is None:
        return 5.0
    return max(signalled + grace_seconds - 1.0 - time.monotonic(), 0.1)


class LogMetrics:
    """``roost_log_*`` series; thread-safe (the writer thread counts too)."""

    def __init__(self, registry: CollectorRegistry, model: str, revision: str) -> None:
        """Register on ``registry``."""
        records = Counter(
            "roost_log_records",
            "Inference log records by outcome: written to the sink, dropped (buffer full), "
            "lost (accepted but never written: the sink failed, or shutdown came first).",
            ("model", "revision", "outcome"),
            registry=registry,
        )
        self.outcome = {o: records.labels(model, revision, o) for o in OUTCOMES}
        self.buffered = Gauge(
            "roost_log_buffered_records",
            "Inference log records accepted and not yet written.",
            ("model", "revision"),
            registry=registry,
        ).labels(model, revision)
        self.files = Counter(
            "roost_log_files",
            "Inference log files (or CloudEvents batches) written.",
            ("model", "revision"),
            registry=registry,
        ).labels(model, revision)
        self.write_errors = Counter(
            "roost_log_write_errors",
            "Failed attempts to write an inference log file or batch.",
            ("model", "revision"),
            registry=registry,
        ).labels(model, revision)


class InferenceLog:
    """Bounded buffer plus one writer thread; see the module docstring."""

    def __init__(self, config: LogConfig, registry: CollectorRegistry, sink: Sink | None = None):
        """Open the sink (``sink`` overrides the one ``config.uri`` names); nothing starts yet."""
        self.config = config
        self.metrics = LogMetrics(registry, config.model, config.revision)
        self.sink = sink if sink is not None else open_sink(config.uri, config.format, config.pod)
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._accepted = 0
        self._settled = 0  # written + lost
        self._abandoned = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="roost-log", daemon=True)
        self._random = random.Random()
        self._half = max(config.buffer // 2, 1)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    # --- the request path ----------------------------------------------------------------------

    def sampled(self) -> bool:
        """Whether to record this request (call before building the record)."""
        rate = self.config.sample_rate
        return rate >= 1.0 or (rate > 0.0 and self._random.random() < rate)

    def record(
        self,
        request_id: str | None,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray] | None,
        status: int,
        latency_s: float,
        protocol: str,
        error: str | None = None,
    ) -> bool:
        """Append one prediction record; the arrays are kept by reference, never copied."""
        config = self.config
        return self.append(
            {
                "kind": "prediction",
                "id": request_id or uuid.uuid4().hex,
                "time": time.time(),
                "model": config.model,
                "revision": config.revision,
                "pod": config.pod,
                "protocol": protocol,
                "status": status,
                "latency_s": latency_s,
                "error": error,
                "inputs": inputs,
                "outputs": outputs,
            }
        )

    async def around(
        self, protocol: str, run: Callable[[list[DecodedRequest]], Awaitable[Inference]]
    ) -> Inference:
        """Run one sampled request (``run(held)``) and record it, answered or refused.

        ``run`` appends the decoded request to ``held`` once its id is known, so a refusal
        after decoding (a wrong shape, a full queue, the deadline) is recorded with its inputs.
        """
        started = time.perf_counter()
        held: list[DecodedRequest] = []
        try:
            done = await run(held)
        except (RoostError, asyncio.CancelledError) as exc:
            self.settle(protocol, started, held, None, exc)
            raise
        self.settle(protocol, started, held, done)
        return done

    def settle(
        self,
        protocol: str,
        started: float,
        held: list[DecodedRequest],
        done: Inference | None,
        refusal: RoostError | asyncio.CancelledError | None = None,
    ) -> None:
        """Record a sampled request that began at ``started``: answered (``done``), or
        refused after decoding (``held`` has the request; cancellation is the deadline, 504)."""
        latency = time.perf_counter() - started
        if done is not None:
            self.record(done.request_id, done.request.inputs, done.outputs, 200, latency, protocol)
        elif held:
            status = refusal.status_code if isinstance(refusal, RoostError) else 504
            message = refusal.message if isinstance(refusal, RoostError) else "deadline exceeded"
            self.record(held[0].id, held[0].inputs, None, status, latency, protocol, message)

    def append(self, record: dict[str, Any]) -> bool:
        """Queue ``record`` unless the buffer is full (then count it dropped); never blocks."""
        queue = self._queue
        if len(queue) >= self.config.buffer or self._stop.is_set():
            self.metrics.outcome["dropped"].inc()
            return False
        queue.append(record)
        self._accepted += 1
        if len(queue) >= self._half:
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        """Records accepted and neither written nor counted lost yet."""
        return self._accepted - self._settled

    # --- shutdown ------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """Shutdown has begun: write each record promptly instead of waiting for rotation.

        Records keep being accepted (requests in flight during the drain are logged too).
        """
        self._urgent.set()
        self._wake.set()

    def close(self, timeout: float) -> int:
        """Stop accepting, write everything accepted within ``timeout`` seconds; returns the
        records lost.

        Records still unwritten at the deadline (a stalled sink) are counted ``lost`` and
        reported in the server's log.
        """
        if self._closed:
            return 0
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(timeout, 0.0))
        with self._lock:
            self._abandoned = True
            lost = self.pending
            self._settle(lost, "lost")
        if lost:
            log.error(
                "inference log: %d accepted records were not written to %s within the %.1f s "
                "shutdown deadline (sink stalled or failing); counted as lost",
                lost,
                self.sink.describe(),
                timeout,
            )
        else:
            log.info("inference log: every accepted record was written to %s", self.sink.describe())
        return lost

    def _settle(self, count: int, outcome: str) -> None:
        # Called with self._lock held.
        if count:
            self._settled += count
            self.metrics.outcome[outcome].inc(count)
            self.metrics.buffered.set(self.pending)

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        config = self.config
        lines: list[bytes] = []
        rows: list[dict[str, Any]] = []
        size = 0
        opened = 0.0
        while True:
            stopping = self._stop.is_set()
            urgent = stopping or self._urgent.is_set()
            while self._queue and size < config.rotate_bytes:
                try:
                    row, line = encode_record(self._queue.popleft(), config.redact)
                except Exception:  # a value that cannot be encoded: that record only
                    log.exception("inference log: a record could not be encoded; lost")
                    with self._lock:
                        self._settle(1, "lost")
                    continue
                if not lines:
                    opened = time.monotonic()
                rows.append(row)
                lines.append(line)
                size += len(line) + 1
            self.metrics.buffered.set(self.pending)
            due = lines and (
                urgent
                or size >= config.rotate_bytes
                or time.monotonic() - opened >= config.rotate_seconds
            )
            if due:
                self._write(rows, lines)
                lines, rows, size = [], [], 0
                continue  # the buffer may hold more than one file's worth
            if stopping and not self._queue:
                return
            self._wake.wait(_TICK_S)
            self._wake.clear()

    def _write(self, rows: list[dict[str, Any]], lines: list[bytes]) -> None:
        delay = 0.5
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self.sink.write(rows, lines)
            except Exception as exc:  # every backend has its own errors; all mean "retry"
                self.metrics.write_errors.inc()
                log.warning(
                    "inference log: writing %d records to %s failed (attempt %d of %d): %s",
                    len(rows),
                    self.sink.describe(),
                    attempt,
                    _ATTEMPTS,
                    exc,
                )
                if attempt < _ATTEMPTS:
                    time.sleep(delay)
                    delay *= 2
                continue
            with self._lock:
                if not self._abandoned:
                    self.metrics.files.inc()
                    self._settle(len(rows), "written")
            return
        with self._lock:
            if not self._abandoned:
                log.error(
                    "inference log: %d records lost: %s failed %d times",
                    len(rows),
                    self.sink.describe(),
                    _ATTEMPTS,
                )
                self._settle(len(rows), "lost")
