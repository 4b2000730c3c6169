"""Closed-loop gRPC load for bench_serving.py: N concurrent ModelInfer calls for D seconds.

    python benchmarks/grpc_load.py HOST:PORT REQUEST_FILE CONCURRENCY SECONDS

REQUEST_FILE holds one serialized ``inference.ModelInferRequest``; it is sent as raw bytes
and the answers are not parsed, so the client spends as little CPU as a Python client can
(it shares the machine with the server). Prints ``ROOST_RESULT {json}`` like the wrk script:
requests, duration, errors and latency percentiles. Only loopback is meant to be targeted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
import grpc.aio

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def _worker(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    body: bytes,
    stop_at: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    while (now := time.perf_counter()) < stop_at:
        try:
            await call(body, timeout=10)
        except grpc.aio.AioRpcError:
            errors.append(1)
        latencies.append(time.perf_counter() - now)


async def run(target: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """``seconds`` of closed-loop calls from ``concurrency`` tasks on one channel."""
    latencies: list[float] = []
    errors: list[int] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        await call(body, timeout=10)  # connect before the clock starts
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(
            *(_worker(call, body, stop_at, latencies, errors) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        "non2xx": len(errors),
        "socket_errors": 0,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
    }


def main() -> None:
    """Parse the arguments, run, print the summary line."""
    target, path, concurrency, seconds = sys.argv[1:5]
    with open(path, "rb") as handle:
        body = handle.read()
    result = asyncio.run(run(target, body, int(concurrency), float(seconds)))
    print("ROOST_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
