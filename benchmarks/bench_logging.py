"""The inference log's cost: `roost serve` with logging off, at sample rate 0.1 and at 1.0.

Starts three `roost serve` processes of the bench-rf20 example model on 127.0.0.1 side by side
(no log; `--log-uri <tmp dir> --log-sample-rate 0.1`; the same at 1.0, JSON Lines, default
rotation) and drives each with Debian's `wrk` in turn, scenario by scenario, so the three
share the same machine state: single-row JSON requests at concurrency 8 and 64-row JSON
requests at concurrency 8, each twice (the second round in reverse order; the table shows the
means). Prints req/s, p50/p99 latency, server CPU per request and each
row's throughput relative to logging off, then the records each server wrote or dropped
(`roost_log_records_total`, after a SIGTERM flush: the files are counted).

    python benchmarks/bench_logging.py [--duration 5]

Only loopback is targeted; every load run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from roost_devcluster.net import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
# A sibling script, not a package: found through the sys.path entry above.
from bench_serving import (
    Result,
    model_dir,
    run_wrk,
    start,
    stop,
    wait_ready,
    write_bodies,
)

RATES: dict[str, float | None] = {"off": None, "rate 0.1": 0.1, "rate 1.0": 1.0}


def _records(log_dir: Path) -> int:
    return sum(
        sum(1 for line in path.read_bytes().splitlines() if line.strip())
        for path in log_dir.rglob("*.jsonl")
    )


def _mean(results: list[Result]) -> Result:
    n = len(results)
    return Result(
        concurrency=results[0].concurrency,
        rps=sum(r.rps for r in results) / n,
        p50_ms=sum(r.p50_ms for r in results) / n,
        p99_ms=sum(r.p99_ms for r in results) / n,
        cpu_us_per_request=sum(r.cpu_us_per_request for r in results) / n,
        errors=sum(r.errors for r in results),
    )


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="roost-bench-log-"))
    try:
        model = model_dir(work) / "model.onnx"
        bodies = write_bodies(work)
        servers = {}
        for label, rate in RATES.items():
            port = free_port()
            env = {
                "ROOST_MODEL": str(model),
                "ROOST_NAME": "bench-rf20",
                "ROOST_PORT": str(port),
                "ROOST_LOG_LEVEL": "warning",
            }
            if rate is not None:
                env["ROOST_LOG_URI"] = str(work / f"log-{rate}")
                env["ROOST_LOG_SAMPLE_RATE"] = str(rate)
            proc = start([sys.executable, "-m", "roost_serving", "serve"], env)
            servers[label] = (proc, f"http://127.0.0.1:{port}")
        for proc, url in servers.values():
            wait_ready(url + "/v2/health/ready", proc)
        runs: dict[str, dict[str, list[Result]]] = {}
        for key in ("json1", "json64"):
            scenario = bodies[key]
            # Two rounds, the second in reverse order, so no setting always runs first.
            order = list(servers.items())
            for round_order in (order, order[::-1]):
                for label, (proc, url) in round_order:
                    infer = url + "/v2/models/bench-rf20/infer"
                    result = run_wrk(infer, scenario, proc.pid, 8, args.duration)
                    runs.setdefault(scenario.name, {}).setdefault(label, []).append(result)
        results = {
            name: {label: _mean(rows[label]) for label in RATES} for name, rows in runs.items()
        }
        for proc, _ in servers.values():
            stop(proc)
        print(
            f"\ninference log cost, wrk c=8, mean of 2 runs of {args.duration} s each (bench-rf20)"
        )
        print(f"{'scenario':<14}{'log':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'CPU us/req':>12}{'vs off':>8}{'errors':>8}")  # fmt: skip
        for name, rows in results.items():
            base = rows["off"].rps
            for label, r in rows.items():
                print(
                    f"{name:<14}{label:<10}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                    f"{r.cpu_us_per_request:>12.0f}{r.rps / base:>8.0%}{r.errors:>8}"
                )
        for label, rate in RATES.items():
            if rate is not None:
                written = _records(work / f"log-{rate}")
                print(f"records written at {label}: {written}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
