"""Shadow traffic: a stable pod tees sampled copies of its requests to the canary and compares.

During a shadow step the operator pushes the runtime section ``shadow`` (roost_serving.runtime)
to every serving pod::

    {"stable": "<rev>", "canary": "<rev>", "targets": ["http://ip:port", ...], "share": 1.0,
     "tolerance": 0.0, "timeoutSeconds": 2.0}

A pod of the ``stable`` revision then offers every successful JSON inference to this module
after answering it: a sampled share is queued (bounded; a full queue drops the copy and counts
it) and a few workers POST the same body to a canary pod with ``Roost-Source: shadow`` and the
request id, read the canary's answer, pair it with the stable's own outputs by request id and
count agreement. Nothing here runs before the client's response is built, and nothing here can
fail or delay it: the client never waits on the queue, the canary or the comparison.

Compared is the first non-float output (a classifier's label: rows disagree when labels
differ), else the first output (a regressor: rows disagree when ``|stable - canary|`` exceeds
``tolerance``). The canary counts copies apart from user traffic (``roost_requests_total`` with
``source="shadow"``, which analysis leaves out), so its client requests show zero exposure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from roost_serving.metrics import LATENCY_BUCKETS
from roost_serving.protocol import datatype_of

log = logging.getLogger("roost.shadow")

SOURCE_HEADER = "Roost-Source"
SOURCE_SHADOW = "shadow"
QUEUE_SIZE = 512
"""Copies waiting for a worker; beyond, copies are dropped (counted), never the request."""
WORKERS = 8
"""Copies in flight to the canary at once, per stable pod."""
MAX_BATCH = 32
"""Copies alike in their inputs that one request to the canary carries at most: a one-row copy
costs the stable pod one HTTP exchange per copy otherwise (bench_shadow.py)."""
MAX_BATCH_ROWS = 256
BATCH_ROWS_PER_COPY = 8
"""Copies of more rows go alone, as the client sent them: re-encoding them costs more than
the HTTP exchange it would save."""
DEFAULT_TIMEOUT = 2.0
DIFF_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
_FLOAT_KINDS = "fc"


@dataclass(frozen=True)
class ShadowTarget:
    """The parsed ``shadow`` section, for a pod of its stable revision."""

    canary: str
    targets: tuple[str, ...]
    share: float
    tolerance: float
    timeout: float


@dataclass(frozen=True)
class Copy:
    """One queued copy: what to send and the stable's own answer to compare with."""

    body: bytes | None
    """The client's JSON body as it came (None: binary tensor data; built from `inputs`)."""
    inputs: dict[str, np.ndarray]
    request_id: str
    output: str
    own: np.ndarray
    canary: str

    @property
    def rows(self) -> int:
        """Rows of the compared output (its first dimension)."""
        return int(self.own.shape[0]) if self.own.ndim else 1

    def signature(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """Input names, dtypes and row shapes: copies alike in these share one request."""
        return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(self.inputs.items()))


def _json_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    data: Any = np.ascontiguousarray(array).ravel()
    if array.dtype.kind in "OUS":
        data = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in data]
    return {"name": name, "datatype": datatype_of(array), "shape": list(array.shape), "data": data}


def batch_body(batch: list[Copy], batch_id: str) -> bytes:
    """One JSON request carrying every copy's rows, stacked in order."""
    first = batch[0]
    inputs = [
        _json_tensor(name, np.concatenate([c.inputs[name] for c in batch]))
        for name in sorted(first.inputs)
    ]
    document: dict[str, Any] = {"id": batch_id, "inputs": inputs}
    wanted = {c.output for c in batch}
    if len(wanted) == 1:
        # Only the compared output: less for the canary to encode and for us to parse.
        document["outputs"] = [{"name": first.output}]
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def _rows_of(doc: dict[str, Any], copy: Copy, offset: int) -> np.ndarray | None:
    """The canary's rows for `copy` (rows `offset`.. of its compared output), or None."""
    try:
        entry = next(o for o in doc["outputs"] if o.get("name") == copy.output)
        answer = np.asarray(entry["data"]).reshape(entry["shape"])
    except (KeyError, StopIteration, TypeError, ValueError, AttributeError):
        return None
    rows = answer[offset : offset + copy.rows] if answer.ndim else answer
    return rows if rows.size == copy.own.size else None


def parse_section(section: Any, revision: str) -> ShadowTarget | None:
    """The shadow target for a pod of ``revision``, or None (off, another revision, malformed)."""
    if not isinstance(section, dict) or section.get("stable") != revision:
        return None
    targets = section.get("targets")
    canary = section.get("canary")
    if not isinstance(targets, list) or not targets or not isinstance(canary, str):
        return None

    def number(key: str, default: float, lo: float, hi: float) -> float:
        value = section.get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return min(max(float(value), lo), hi) if ok else default

    return ShadowTarget(
        canary=canary,
        targets=tuple(str(t).rstrip("/") for t in targets),
        share=number("share", 1.0, 0.0, 1.0),
        tolerance=number("tolerance", 0.0, 0.0, 1e12),
        timeout=number("timeoutSeconds", DEFAULT_TIMEOUT, 0.05, 30.0),
    )


def compared_output(outputs: dict[str, np.ndarray], names: list[str] | None) -> str | None:
    """The output to compare: the first non-float one among those answered, else the first."""
    answered = [n for n in (names if names is not None else list(outputs)) if n in outputs]
    for name in answered:
        if outputs[name].dtype.kind not in _FLOAT_KINDS:
            return name
    return answered[0] if answered else None


def disagreements(own: np.ndarray, theirs: np.ndarray, tolerance: float) -> tuple[int, np.ndarray]:
    """Rows that disagree, and the per-row largest absolute difference (floats; else empty)."""
    rows = own.shape[0] if own.ndim else 1
    a = own.reshape(rows, -1)
    b = theirs.reshape(rows, -1)
    if a.dtype.kind in _FLOAT_KINDS or a.dtype.kind in "iub":
        if a.dtype.kind in _FLOAT_KINDS:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=1)
            return int(np.count_nonzero(~(diff <= tolerance))), diff
        return int(np.count_nonzero((a != b.astype(a.dtype)).any(axis=1))), np.zeros(0)
    return int(np.count_nonzero((a.astype(str) != b.astype(str)).any(axis=1))), np.zeros(0)


class ShadowMetrics:
    """The paired comparison's series, on the stable pods."""

    def __init__(self, registry: CollectorRegistry, model: str, revision: str) -> None:
        """Register every series on ``registry``."""
        labels = ("model", "revision", "canary")
        self._values = (model, revision)
        self.requests = Counter(
            "roost_shadow_requests",
            "Shadow copies sent to the canary, by outcome (compared: answered and paired by "
            "request id; error: no usable answer).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.rows = Counter(
            "roost_shadow_rows",
            "Rows of shadow copies that were compared or errored (the disagreement rate's "
            "denominator).",
            labels,
            registry=registry,
        )
        self.disagreements = Counter(
            "roost_shadow_disagreements",
            "Rows where the canary's answer differs from the stable's (prediction: another "
            "label, or beyond the tolerance; error: the canary gave no usable answer).",
            (*labels, "kind"),
            registry=registry,
        )
        self.difference = Histogram(
            "roost_shadow_abs_difference",
            "Per row, the largest |stable - canary| of a numeric compared output.",
            labels,
            buckets=DIFF_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "roost_shadow_canary_errors",
            "Shadow copies the canary answered with an error or not at all, by reason.",
            (*labels, "reason"),
            registry=registry,
        )
        self.duration = Histogram(
            "roost_shadow_canary_duration_seconds",
            "Canary latency of shadow copies, as the stable pod sees it.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "roost_shadow_dropped",
            "Shadow copies not sent, by reason (queue_full: the workers are behind).",
            ("model", "revision", "reason"),
            registry=registry,
        )

    def drop(self, reason: str) -> None:
        """Count one copy not sent."""
        self.dropped.labels(*self._values, reason).inc()


class ShadowTee:
    """The stable pod's side: sampling, the bounded queue, the workers and the comparison."""

    def __init__(self, registry: CollectorRegistry, model: str, revision: str) -> None:
        """Nothing runs until a ``shadow`` section for this revision arrives."""
        self.model, self.revision = model, revision
        self.metrics = ShadowMetrics(registry, model, revision)
        self.target: ShadowTarget | None = None
        self._queue: asyncio.Queue[Copy] = asyncio.Queue(QUEUE_SIZE)
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._next = 0
        self.batchable = False
        """Whether the model takes any number of rows (set once it is loaded): copies alike in
        their inputs then go to the canary together, one request for up to `MAX_BATCH`."""

    def configure(self, section: dict[str, Any] | None) -> None:
        """The runtime ``shadow`` section changed (a subscriber of roost_serving.runtime)."""
        self.target = parse_section(section, self.revision)
        if self.target is not None and not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._work(), name=f"roost-shadow-{i}") for i in range(WORKERS)
            ]
        log.info(
            "shadow %s",
            f"on: {self.target.share:.0%} of requests to canary {self.target.canary} "
            f"({len(self.target.targets)} pods)"
            if self.target
            else "off",
        )

    def offer(
        self,
        body: bytes,
        binary: bool,
        request_id: str | None,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        names: list[str] | None,
    ) -> None:
        """After a successful inference: maybe queue a copy. Never raises, never waits."""
        target = self.target
        if target is None or (target.share < 1.0 and random.random() >= target.share):
            return
        output = compared_output(outputs, names)
        if output is None:
            return
        copy = Copy(
            None if binary else body,
            inputs,
            request_id or uuid.uuid4().hex,
            output,
            outputs[output],
            target.canary,
        )
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.metrics.drop("queue_full")

    def _more(self, first: Copy) -> tuple[list[Copy], Copy | None]:
        """`first` and the queued copies alike to it (up to `MAX_BATCH`), and the first unlike."""
        batch = [first]
        if not self.batchable or first.rows > BATCH_ROWS_PER_COPY:
            return batch, None
        signature, rows = first.signature(), first.rows
        while len(batch) < MAX_BATCH and rows < MAX_BATCH_ROWS:
            try:
                copy = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            alike = copy.canary == first.canary and copy.signature() == signature
            if not alike or copy.rows > BATCH_ROWS_PER_COPY:
                return batch, copy
            batch.append(copy)
            rows += copy.rows
        return batch, None

    async def _work(self) -> None:
        while True:
            batch, unlike = self._more(await self._queue.get())
            for group in (batch, [unlike] if unlike is not None else []):
                if not group:
                    continue
                try:
                    await self._send(group)
                except Exception:  # a comparison bug must not end the worker
                    log.exception("shadow copy failed")

    async def _send(self, batch: list[Copy]) -> None:
        target = self.target
        first = batch[0]
        if target is None or target.canary != first.canary:
            return  # the shadow step ended while the copies waited
        url = target.targets[self._next % len(target.targets)]
        self._next += 1
        m = self.metrics
        labels = (self.model, self.revision, first.canary)
        # One copy goes as the client sent it, under its own request id; several go as one
        # request whose answer rows are paired back to each copy's id in order.
        body, request_id = first.body, first.request_id
        if len(batch) > 1 or body is None:
            request_id = first.request_id[:100] + (f"+{len(batch) - 1}" if len(batch) > 1 else "")
            body = batch_body(batch, request_id)
        started = time.perf_counter()
        reason, doc = await self._post(url, body, request_id, target)
        m.duration.labels(*labels).observe(time.perf_counter() - started)
        offset = 0
        for copy in batch:
            m.rows.labels(*labels).inc(copy.rows)
            theirs = _rows_of(doc, copy, offset) if doc is not None else None
            offset += copy.rows
            if theirs is None:
                m.requests.labels(*labels, "error").inc()
                m.errors.labels(*labels, reason or "unreadable").inc()
                m.disagreements.labels(*labels, "error").inc(copy.rows)
                continue
            m.requests.labels(*labels, "compared").inc()
            differ, diff = disagreements(copy.own, theirs, target.tolerance)
            if differ:
                m.disagreements.labels(*labels, "prediction").inc(differ)
            histogram = m.difference.labels(*labels)
            for value in diff:
                histogram.observe(float(value))

    async def _post(
        self, url: str, body: bytes, request_id: str, target: ShadowTarget
    ) -> tuple[str, dict[str, Any] | None]:
        """(error reason, None) or ("", the canary's answer) for the copy sent as `request_id`."""
        path = f"{url}/v2/models/{self.model}/infer"
        headers = {
            "Content-Type": "application/json",
            SOURCE_HEADER: SOURCE_SHADOW,
            "X-Request-Id": request_id,
        }
        try:
            async with self._client().post(
                path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=target.timeout),
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    return str(response.status), None
                answered_id = response.headers.get("X-Request-Id")
        except TimeoutError:
            return "timeout", None
        except (aiohttp.ClientError, OSError):
            return "connection", None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "unreadable", None
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
            return "unreadable", None
        # Paired by request id: an answer to another request is no comparison.
        if doc.get("id", answered_id) not in (None, request_id):
            return "id_mismatch", None
        return "", doc

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=WORKERS), auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        """Stop the workers (queued copies are dropped: nobody waits for them) and the session."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._session is not None:
            await self._session.close()
