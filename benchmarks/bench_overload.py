"""Overload: open-loop load at 2x and 5x saturation, and probe latency under heavy requests.

Starts `roost serve` on 127.0.0.1 with the bench-rf20 example model, then:

1. saturation: a closed loop (16 clients) of 2048-row requests measures the throughput the
   server can sustain (the saturating rate R);
2. open loop at 2R and 5R: a fixed-rate generator starts request i at t0 + i/rate whatever
   happened to earlier ones (wrk keeps a fixed number in flight, so it slows down with the
   server and can never overload it). Latency is measured from the scheduled start, so a
   generator that falls behind shows up as latency, not as a lower rate. Reported: p50/p99 of
   admitted requests (200), the shed rate (503 queue full + 504 deadline), anything else;
3. probes under heavy load: 8 clients each sending ~15 MiB JSON bodies back to back while
   /v2/health/ready is polled every 50 ms; reported: probe p50/p99/max (the operator's probe
   timeout is 2 s), with decoding on codec threads (as served) and, for comparison, on the
   event loop.

    python benchmarks/bench_overload.py [--seconds 5] [--max-queue 64] [--request-timeout 1]

Only loopback is targeted; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import free_port, model_dir, start, stop, wait_ready

NAME = "bench-rf20"
ROWS = 2048
"""Rows per request: heavy enough that the saturating rate stays low and the generator (one
Python process on the same machine) can offer 5x of it without becoming the bottleneck."""


def _body(rows: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(size=(rows, 20)).round(4)
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [rows, 20], "data": x.ravel()}]}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def saturate(url: str, body: bytes, seconds: float, clients: int = 16) -> float:
    """Closed-loop throughput (requests/s answered 200)."""
    done = 0
    end = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with session.post(url, data=body) as response:
                    await response.read()
                    done += response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return done / (time.perf_counter() - started)


async def open_loop(url: str, body: bytes, rate: float, seconds: float) -> dict[str, float]:
    """Fixed-rate load; latency from each request's scheduled start."""
    statuses: Counter[str] = Counter()
    admitted: list[float] = []
    served: list[float] = []
    lag: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(scheduled: float) -> None:
            sent = time.perf_counter()
            lag.append(sent - scheduled)
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
                    if response.status == 200:
                        admitted.append(time.perf_counter() - scheduled)
                        served.append(time.perf_counter() - sent)
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1

        tasks: list[asyncio.Task[None]] = []
        total = int(rate * seconds)
        t0 = time.perf_counter()
        for i in range(total):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    shed = statuses["503"] + statuses["504"]
    return {
        "sent": total,
        "ok": statuses["200"],
        "p50_ms": _pct(admitted, 50),
        "p99_ms": _pct(admitted, 99),
        "sent_p99_ms": _pct(served, 99),
        "lag_p99_ms": _pct(lag, 99),
        "shed": shed / max(total, 1),
        "s503": statuses["503"],
        "s504": statuses["504"],
        "other": total - statuses["200"] - shed,
    }


async def probes_under_heavy_load(base: str, seconds: float) -> dict[str, float]:
    """Readiness latency while 8 clients send ~15 MiB JSON bodies back to back."""
    heavy = _body(100_000, seed=1)
    infer = base + f"/v2/models/{NAME}/infer"
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    heavy_done = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def load() -> None:
            nonlocal heavy_done
            while time.perf_counter() < end:
                async with session.post(infer, data=heavy) as response:
                    await response.read()
                    heavy_done += 1

        async def probe() -> None:
            async with aiohttp.ClientSession() as fresh:  # a kubelet opens its own connection
                while time.perf_counter() < end:
                    started = time.perf_counter()
                    async with fresh.get(base + "/v2/health/ready") as response:
                        await response.read()
                    latencies.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)

        await asyncio.gather(probe(), *(load() for _ in range(8)))
    return {
        "body_mib": len(heavy) / 2**20,
        "heavy": heavy_done,
        "probes": len(latencies),
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "max_ms": max(latencies) * 1000,
    }


def main() -> None:
    """Run the three phases and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load phase")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = model_dir(Path(tmp))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "ROOST_MODEL": str(models / "model.onnx"),
            "ROOST_NAME": NAME,
            "ROOST_PORT": str(port),
            "ROOST_LOG_LEVEL": "warning",
            "ROOST_MAX_QUEUE": str(args.max_queue),
            "ROOST_REQUEST_TIMEOUT": str(args.request_timeout),
        }
        proc = start([sys.executable, "-m", "roost_serving", "serve"], env)
        try:
            wait_ready(base + "/v2/health/ready", proc)
            url = base + f"/v2/models/{NAME}/infer"
            body = _body(ROWS)
            asyncio.run(saturate(url, body, 1.0))  # warm-up
            rate = asyncio.run(saturate(url, body, args.seconds))
            print(
                f"{NAME}, {ROWS}-row requests, --max-queue {args.max_queue}, "
                f"--request-timeout {args.request_timeout:g} s, {args.seconds:g} s per phase"
            )
            print(f"saturation (closed loop, 16 clients): {rate:.0f} req/s")
            print(
                f"{'load':>6} {'rate':>7} {'sent':>6} {'ok':>6} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'p99 sent':>9} {'lag p99':>8} {'shed':>6} {'503':>5} {'504':>5} {'other':>5}"
            )
            for factor in (2, 5):
                r = asyncio.run(open_loop(url, body, rate * factor, args.seconds))
                print(
                    f"{factor:>5}x {rate * factor:>7.0f} {r['sent']:>6.0f} {r['ok']:>6.0f} "
                    f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['sent_p99_ms']:>9.1f} "
                    f"{r['lag_p99_ms']:>8.1f} {r['shed']:>6.1%} "
                    f"{r['s503']:>5.0f} {r['s504']:>5.0f} {r['other']:>5.0f}"
                )
            _print_probes("codec threads", asyncio.run(probes_under_heavy_load(base, args.seconds)))
        finally:
            stop(proc)
        # The same server with every body decoded on the event loop (the behaviour before
        # codec threads), for comparison; only the threshold differs.
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env["ROOST_PORT"] = str(port)
        proc = start([sys.executable, "-c", ON_LOOP, "serve"], env)
        try:
            wait_ready(base + "/v2/health/ready", proc)
            _print_probes("on the loop", asyncio.run(probes_under_heavy_load(base, args.seconds)))
        finally:
            stop(proc)


ON_LOOP = (
    "import sys, roost_serving.app as app, roost_serving.cli as cli; "
    "app.OFFLOAD_BYTES = 1 << 60; sys.argv[0] = 'roost'; cli.main()"
)


def _print_probes(how: str, p: dict[str, float]) -> None:
    print(
        f"readiness, decoding {how}, under 8 x {p['body_mib']:.1f} MiB JSON bodies "
        f"({p['heavy']:.0f} done): {p['probes']:.0f} probes, p50 {p['p50_ms']:.1f} ms, "
        f"p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms (probe timeout 2000 ms)"
    )


if __name__ == "__main__":
    main()
