"""Dynamic batching: coalesce concurrent requests into one onnxruntime run.

Requests whose inputs agree on names, datatypes and every dimension but the first are
concatenated along the first (batch) dimension, run once, and the outputs are split back by
row counts; models whose rows are computed independently (every tabular model) give exactly
the results an unbatched run gives. Runs happen one at a time; whatever queued up meanwhile
forms the next batch. Where a run happens follows its average duration: one shorter than
`INLINE_RUN_SECONDS` runs on the event loop itself (a thread hand-off would cost more than the
run), a slower one on a worker thread, so the loop keeps decoding the next requests while the
model computes.

``max_delay`` bounds how long a batch is held open for requests that are already inside the
server (received, still being decoded); the batcher never sits idle waiting for requests that
have not arrived, so a lone request is not delayed and closed-loop clients are not throttled.

A request that finds nothing to batch with (queue empty, no run in progress or being
collected, no other request being decoded or about to submit after one turn of the loop) and
a model cheap enough to run on the loop is run at once on its own task: going through the
queue would cost a future and several task switches, about as much as a small model's whole
run, to form a batch of one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from roost_serving.protocol import RoostError

log = logging.getLogger("roost.batching")

INLINE_RUN_SECONDS = 0.002
"""Runs expected to take less than this happen on the event loop itself: handing a run to
the worker thread and back costs 50-100 microseconds of CPU and two context switches, more
than a small tabular model's run and a fifth of a 64-row forest run, and runs are serialised
anyway, so the thread only buys overlap with decoding the next requests, which a pod with one
or two cores cannot use. Slower models run on the worker thread, so the loop keeps accepting
and decoding requests (and answering probes) while they compute."""

INLINE_MAX_ELEMENTS = 32768
"""...and only batches this small run inline: the running average says nothing about one
huge request, whose run on the loop would stall every probe for as long as it computes. A
batch of eight 64-row requests of 20 features (10,240 elements) still runs inline, where the
thread handoff would cost a fifth of its run; a 100,000-row request never does."""

Tensors = dict[str, np.ndarray]
RunFn = Callable[[Mapping[str, np.ndarray]], Tensors]
BatchHook = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int], None]


@dataclass
class _Rows:
    """One request's inputs and their row count: what a run needs."""

    inputs: Mapping[str, np.ndarray]
    rows: int


@dataclass
class _Item(_Rows):
    """A queued request: its batching key and the future that gets its outputs."""

    key: tuple[object, ...]
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Group:
    """Requests of one turn that agree on their inputs' trailing dimensions."""

    rows: int = 0
    indices: list[int] = field(default_factory=list)
    members: list[_Rows] = field(default_factory=list)

    def add(self, index: int, member: _Rows) -> None:
        """Add request ``index``."""
        self.rows += member.rows
        self.indices.append(index)
        self.members.append(member)

    def clear(self) -> None:
        """Empty the group once it has run."""
        self.rows = 0
        self.indices.clear()
        self.members.clear()


def _key(inputs: Mapping[str, np.ndarray]) -> tuple[object, ...]:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {a.shape[0] if a.ndim else 1 for a in inputs.values()}
    # Inputs that disagree on their first dimension cannot be split back per request.
    return sizes.pop() if len(sizes) == 1 else -1


class Batcher:
    """Serialises model runs on one worker thread, batching concurrent requests when allowed."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        enabled: bool,
        on_batch: BatchHook,
        on_dequeue: Callable[[float], None],
        arriving: Callable[[], int],
    ) -> None:
        """Set up the batcher.

        ``on_batch(inputs, outputs, rows)`` runs on the worker thread after every successful
        run (metrics, drift); ``on_dequeue(seconds)`` gets each request's queue time;
        ``arriving()`` counts requests received but not yet submitted.
        """
        self._run = run
        self._max_rows = max_batch_size
        self._max_delay = max_delay_s
        self.enabled = enabled and max_batch_size > 1
        self._on_batch = on_batch
        self._on_dequeue = on_dequeue
        self._arriving = arriving
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roost-run")
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False  # the worker holds a batch (collecting or running it)
        self._pending = 0  # requests taking one loop turn before deciding to run at once
        self._run_seconds = 0.0  # moving average of a run's CPU time (not wall time)

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="roost-batcher")

    async def stop(self) -> None:
        """Finish everything queued, then stop the worker and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Queue one request's inputs and wait for its outputs."""
        if self._closing:
            raise RoostError("the server is shutting down")
        rows = _rows(inputs) if self.enabled else -1
        if not 0 < rows < self._max_rows:
            # A request that fills a batch alone (or cannot be batched) shares no run: it
            # runs at once unless others are already waiting for theirs.
            if self._idle(others_decoding=False):
                return self._run_now(inputs, rows)
        elif self._idle():
            # Requests that arrived together sit in the loop's ready queue, each about to
            # submit: one turn of the loop lets them show up (pending), so they are batched.
            self._pending += 1
            try:
                await asyncio.sleep(0)
            finally:
                self._pending -= 1
            if self._idle() and self._pending == 0:
                return self._run_now(inputs, rows)
        return await self.enqueue(inputs)

    @property
    def inline(self) -> bool:
        """Whether runs happen on the event loop (the model is cheap; see INLINE_RUN_SECONDS)."""
        return self._run_seconds < INLINE_RUN_SECONDS

    def free(self) -> bool:
        """Nothing queued, collected or running: a run may start on the loop now."""
        return not self._queue and not self._busy

    def enqueue(self, inputs: Mapping[str, np.ndarray]) -> asyncio.Future[Tensors]:
        """Queue one request's inputs without awaiting them: the future gets its outputs."""
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(RoostError("the server is shutting down"))
            return future
        rows = _rows(inputs) if self.enabled else -1
        self._queue.append(_Item(inputs, rows, _key(inputs) if rows > 0 else (), future))
        self._wakeup.set()
        return future

    def run_together(
        self, requests: Sequence[Mapping[str, np.ndarray]]
    ) -> list[Tensors | BaseException]:
        """Run requests that arrived in one turn of the loop on the loop, now, batched where
        they agree on their inputs' trailing dimensions; one result (or error) per request.

        The caller checks :meth:`free` and :attr:`inline` first: no other run can be in
        progress, so this one needs no queue, no future and no task switch.
        """
        if self._closing:
            return [RoostError("the server is shutting down") for _ in requests]
        results: list[Tensors | BaseException] = [RoostError("not run")] * len(requests)
        groups: dict[tuple[object, ...], _Group] = {}
        for index, inputs in enumerate(requests):
            self._on_dequeue(0.0)
            rows = _rows(inputs) if self.enabled else -1
            if not 0 < rows < self._max_rows:
                # Fills a batch alone, or cannot join one.
                results[index] = self._execute([_Rows(inputs, rows)])[0]
                continue
            group = groups.setdefault(_key(inputs), _Group())
            if group.rows + rows > self._max_rows:
                self._run_group(group, results)
            group.add(index, _Rows(inputs, rows))
        for group in groups.values():
            self._run_group(group, results)
        return results

    def _run_group(self, group: _Group, results: list[Tensors | BaseException]) -> None:
        """Run a group's requests as one batch, put each result in its place, empty it."""
        if group.members:
            for index, result in zip(group.indices, self._execute(group.members), strict=True):
                results[index] = result
        group.clear()

    def _idle(self, others_decoding: bool = True) -> bool:
        """Nothing queued, collected or running (nor being decoded), and the model runs inline."""
        return (
            not self._queue
            and not self._busy
            and self._run_seconds < INLINE_RUN_SECONDS
            and not (others_decoding and self._arriving() > 0)
        )

    def _run_now(self, inputs: Mapping[str, np.ndarray], rows: int) -> Tensors:
        """Run a lone request on the caller's task (synchronously: no other run can start)."""
        self._on_dequeue(0.0)
        started = time.thread_time()
        result = self._run_one(inputs, rows)
        self._account(time.thread_time() - started)
        if isinstance(result, BaseException):
            raise result
        return result

    def _take(self) -> list[_Item]:
        """Pop the head item and every following compatible one that fits in the batch."""
        first = self._queue.popleft()
        batch = [first]
        if first.future.done():  # its deadline passed while it waited: never run it
            return []
        if first.rows <= 0 or first.rows >= self._max_rows:
            return batch
        rows = first.rows
        kept: deque[_Item] = deque()
        while self._queue and rows < self._max_rows:
            item = self._queue.popleft()
            if item.future.done():
                continue
            if item.key == first.key and item.rows > 0 and rows + item.rows <= self._max_rows:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        # Requests that did not fit keep their place at the front of the queue.
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _collect(self) -> list[_Item]:
        batch = self._take()
        if not batch or not self.enabled or not 0 < batch[0].rows < self._max_rows:
            return batch  # nothing can join it
        # Let requests that are already decoded but not yet scheduled reach the queue.
        await asyncio.sleep(0)
        deadline = time.perf_counter() + self._max_delay
        # Items left in the queue after a take cannot join this batch; only newcomers can.
        leftovers = -1
        while True:
            rows = sum(item.rows for item in batch)
            if len(self._queue) > leftovers and rows < self._max_rows:
                self._queue.extendleft(reversed(batch))
                batch = self._take()
                if not batch:
                    return batch
                leftovers = len(self._queue)
                continue
            remaining = deadline - time.perf_counter()
            if rows >= self._max_rows or remaining <= 0 or self._arriving() <= 0:
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._busy = True
            try:
                await self._run_batch(loop)
            finally:
                self._busy = False

    async def _run_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Collect one batch from the queue, run it, and deliver every request's result."""
        batch = await self._collect()
        if not batch:
            return
        started = time.perf_counter()
        for item in batch:
            self._on_dequeue(started - item.enqueued)
        try:
            elements = sum(a.size for item in batch for a in item.inputs.values())
            if self._run_seconds < INLINE_RUN_SECONDS and elements <= INLINE_MAX_ELEMENTS:
                results = self._execute(batch)
            else:
                results = await loop.run_in_executor(self._executor, self._execute, batch)
        except BaseException as exc:  # delivered to every waiting request, never lost
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for item, result in zip(batch, results, strict=True):
            if item.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _account(self, cpu_seconds: float) -> None:
        # The moving average of a run's CPU time decides where the next run happens. CPU
        # time of the running thread, not wall time: on a busy node a descheduled cheap run
        # must not look like an expensive one and move every run onto the thread.
        self._run_seconds += 0.1 * (cpu_seconds - self._run_seconds)

    def _execute(self, batch: Sequence[_Rows]) -> list[Tensors | BaseException]:
        """Run one batch (on the loop or the worker thread) and account its CPU time."""
        started = time.thread_time()
        try:
            return self._execute_batch(batch)
        finally:
            self._account(time.thread_time() - started)

    def _execute_batch(self, batch: Sequence[_Rows]) -> list[Tensors | BaseException]:
        """Run one batch, falling back to single runs when it cannot be split."""
        if len(batch) == 1:
            return [self._single(batch[0])]
        names = list(batch[0].inputs)
        joined = {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}
        total = sum(item.rows for item in batch)
        try:
            outputs = self._run(joined)
        except RoostError:
            # One request's rows may have made the run fail; run them one by one so only
            # that request gets the error.
            return [self._single(item) for item in batch]
        if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
            log.warning("model outputs are not row-aligned with its inputs; batching disabled")
            self.enabled = False
            return [self._single(item) for item in batch]
        self._hook(joined, outputs, total)
        results: list[Tensors | BaseException] = []
        start = 0
        for item in batch:
            stop = start + item.rows
            results.append({name: a[start:stop] for name, a in outputs.items()})
            start = stop
        return results

    def _single(self, item: _Rows) -> Tensors | BaseException:
        return self._run_one(item.inputs, item.rows)

    def _run_one(self, inputs: Mapping[str, np.ndarray], rows: int) -> Tensors | BaseException:
        try:
            outputs = self._run(inputs)
        except RoostError as exc:
            return exc
        self._hook(inputs, outputs, rows if rows > 0 else max(_rows(inputs), 1))
        return outputs

    def _hook(self, inputs: Mapping[str, np.ndarray], outputs: Tensors, rows: int) -> None:
        try:
            self._on_batch(inputs, outputs, rows)
        except Exception:  # metrics or drift must never fail an inference
            log.exception("batch observer failed")
