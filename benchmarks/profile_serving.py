"""Where a request's time goes: roost's ASGI app and the bare floor, in process, no sockets.

Drives roost's app (metrics and drift on, the bench-rf20 model and profile) and the bare
floor of bench_serving.py with the same requests through their ASGI interfaces, one at a time
(concurrency 1), and prints CPU microseconds per request for each case: single-row JSON,
64-row JSON and 64-row binary. With ``--profile`` it runs roost's cases under pyinstrument and
prints each call tree; with ``--breakdown`` it times the parts of roost's path (decode, checks,
onnxruntime, drift, metrics, request id, prediction table, encode) with a clock around each,
exclusive of the parts inside it, which is where the breakdown in docs/performance.md comes
from (a sampling profiler at 0.1 ms inflates the Python frames several times over).
Without sockets the figures leave out the HTTP server and the kernel (the same for both
servers), so they isolate the work roost adds on top of the floor and are steady on a busy
machine, unlike the load runs of bench_serving.py.

A second table drives each server's HTTP protocol instead (roost's connection protocol with
its direct path, uvicorn's httptools protocol with the floor): whole requests fed to
``data_received`` on a transport that only counts writes, then the loop's turn. That is the
path a request sent over a socket takes (roost_serving.direct), less the system calls.

    python benchmarks/profile_serving.py [--requests 3000] [--profile] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import BARE_APP, model_dir

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


def bodies() -> dict[str, tuple[bytes, int | None]]:
    """case -> (body, JSON header length for the binary extension)."""
    rng = np.random.default_rng(1)
    out: dict[str, tuple[bytes, int | None]] = {}
    for rows in (1, 64):
        array = rng.normal(size=(rows, 20)).astype(np.float32)
        tensor = {"name": "X", "datatype": "FP32", "shape": [rows, 20]}
        out[f"{rows}-row json"] = (
            json.dumps({"inputs": [{**tensor, "data": array.ravel().tolist()}]}).encode(),
            None,
        )
        raw = array.astype("<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        out[f"{rows}-row binary"] = (header + raw, len(header))
    return out


async def call(app: App, path: str, body: bytes, header_length: int | None) -> int:
    """One POST through an ASGI app; returns the status."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if header_length is not None:
        headers.append((b"inference-header-content-length", b"%d" % header_length))
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers,
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


class _CountingTransport(asyncio.Transport):
    """A transport that counts writes: the protocol's answers go nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1

    def writelines(self, list_of_data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 2), "peername": ("127.0.0.1", 1)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0


async def measure_wire(config: Any, path: str, body: bytes, length: int | None, n: int) -> float:
    """CPU microseconds per request fed whole to a uvicorn ``config``'s HTTP protocol."""
    from uvicorn.server import ServerState

    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if length is not None:
        head += f"Inference-Header-Content-Length: {length}\r\n"
    wire = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    loop = asyncio.get_running_loop()
    protocol = config.http_protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=loop
    )
    transport = _CountingTransport()
    protocol.connection_made(transport)

    async def run(count: int) -> None:
        for _ in range(count):
            answered = transport.writes
            protocol.data_received(wire)
            for _ in range(1000):  # the direct path's turn, or the ASGI task's steps
                await asyncio.sleep(0)
                if transport.writes > answered:
                    break

    await run(200)
    started = time.process_time()
    await run(n)
    spent = time.process_time() - started
    assert transport.writes >= n, "the protocol did not answer every request"
    protocol.connection_lost(None)
    return spent / n * 1e6


async def measure(app: App, path: str, body: bytes, length: int | None, n: int) -> float:
    """CPU microseconds per request over ``n`` sequential requests (after a warm-up)."""
    for _ in range(200):
        assert await call(app, path, body, length) == 200
    started = time.process_time()
    for _ in range(n):
        await call(app, path, body, length)
    return (time.process_time() - started) / n * 1e6


def bare_app(model: Path) -> App:
    """The floor of bench_serving.py, loaded as a module."""
    os.environ["BARE_MODEL"] = str(model)
    module = ModuleType("bare")
    exec(compile(BARE_APP, "bare.py", "exec"), module.__dict__)
    app: App = module.app
    return app


class Parts:
    """Seconds spent in named parts, each exclusive of the timed parts it calls."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._inner: list[float] = []

    def wrap(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        """``fn`` (synchronous) with its time added to ``part``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.seconds[part] += spent - self._inner.pop()
                if self._inner:
                    self._inner[-1] += spent

        return timed


async def breakdown(app: Any, path: str, n: int) -> None:
    """Time each part of roost's path per case and print its share of the request."""
    import roost_serving.app as app_module
    import roost_serving.protocol as protocol

    plane = app.state.plane
    parts = Parts()
    app_module.decode_request = parts.wrap(protocol.decode_request, "decode")
    app_module.check_inputs = parts.wrap(protocol.check_inputs, "decode")
    app_module.encode_response = parts.wrap(protocol.encode_response, "encode")
    app_module.resolve = parts.wrap(app_module.resolve, "request id")
    session = plane.model.session
    session.run = parts.wrap(session.run, "onnxruntime run")
    plane.monitor.observe = parts.wrap(plane.monitor.observe, "drift")
    plane.batcher._on_batch = parts.wrap(plane.batcher._on_batch, "metrics")  # batch size
    plane.batcher._on_dequeue = parts.wrap(plane.batcher._on_dequeue, "metrics")
    metrics = plane.metrics
    metrics.count_request = parts.wrap(metrics.count_request, "metrics")
    metrics.observe_duration = parts.wrap(metrics.observe_duration, "metrics")
    plane.observers = [parts.wrap(o, "observers (prediction table)") for o in plane.observers]
    for case, (body, length) in bodies().items():
        for _ in range(200):
            await call(app, path, body, length)
        parts.seconds.clear()
        started = time.perf_counter()
        for _ in range(n):
            await call(app, path, body, length)
        total = time.perf_counter() - started
        rest = total - sum(parts.seconds.values())
        print(f"\n=== roost, {case}: {total / n * 1e6:.1f} us per request (clocks included)")
        shares = [*parts.seconds.most_common(), ("fast path, data plane, batcher, loop", rest)]
        for part, seconds in shares:
            print(f"  {part:<38} {seconds / n * 1e6:7.1f} us {seconds / total:6.1%}")


async def main_async(n: int, profile: bool, parts: bool = False) -> None:
    """Load both apps, run every case, print the table (and the profiles)."""
    from prometheus_client import CollectorRegistry
    from roost_serving.app import create_app
    from roost_serving.cli import server_config
    from roost_serving.config import Settings

    models = model_dir(Path(tempfile.mkdtemp(prefix="roost-profile-")))
    settings = Settings(
        model=str(models / "model.onnx"),
        profile=str(models / "profile.json"),
        name="bench-rf20",
        log_level="warning",
    )
    app = create_app(settings, registry=CollectorRegistry())
    plane = app.state.plane
    bare = bare_app(models / "model.onnx")
    path = "/v2/models/bench-rf20/infer"
    async with plane.lifespan(app):
        for _ in range(6000):  # up to a minute for the model to load
            if plane.ready:
                break
            await asyncio.sleep(0.01)
        print(f"{'request':<15} {'roost us':>9} {'bare us':>8} {'roost/bare':>10}")
        for case, (body, length) in bodies().items():
            ours = await measure(app, path, body, length, n)
            floor = "" if length is not None else f"{await measure(bare, '/', body, None, n):8.1f}"
            ratio = f"{ours / float(floor):10.2f}" if floor else ""
            print(f"{case:<15} {ours:>9.1f} {floor:>8} {ratio}")
        print("\nthrough the HTTP protocol (roost: the direct path), no sockets")
        print(f"{'request':<15} {'roost us':>9} {'bare us':>8} {'roost/bare':>10}")
        ours_config = server_config(app, settings, lifespan="off")
        bare_config = uvicorn.Config(bare, http="httptools", lifespan="off", log_config=None)
        for config in (ours_config, bare_config):
            config.load()
        for case, (body, length) in bodies().items():
            ours = await measure_wire(ours_config, path, body, length, n)
            floor = (
                "" if length is not None
                else f"{await measure_wire(bare_config, '/', body, None, n):8.1f}"
            )  # fmt: skip
            ratio = f"{ours / float(floor):10.2f}" if floor else ""
            print(f"{case:<15} {ours:>9.1f} {floor:>8} {ratio}")
        if profile:
            from pyinstrument import Profiler

            for case, (body, length) in bodies().items():
                profiler = Profiler(interval=0.0001, async_mode="disabled")
                profiler.start()
                for _ in range(n):
                    await call(app, path, body, length)
                profiler.stop()
                print(f"\n=== roost, {case}, {n} requests")
                print(profiler.output_text(unicode=False, color=False, show_all=False))
        if parts:  # last: it replaces functions of the app with timed ones
            await breakdown(app, path, n)


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per case")
    parser.add_argument("--profile", action="store_true", help="print pyinstrument call trees")
    parser.add_argument(
        "--breakdown", action="store_true", help="time each part of roost's path (after the table)"
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.requests, args.profile, args.breakdown))


if __name__ == "__main__":
    main()
