"""The shadow step's cost on a stable pod: throughput and p99 with shadowing at 100 % vs off.

Starts two `roost serve` processes on 127.0.0.1 with the bench-rf20 example model (100-tree
depth-8 random forest over 20 features): the "stable" pod, which wrk drives, and the "canary"
pod it copies requests to. In one run, for each scenario (single-row JSON at concurrency 8,
64-row JSON at concurrency 8), the stable pod is measured with shadowing off, then with the
runtime section ``shadow`` at share 1.0 (every request copied, compared, counted), then off
again, so the ratio compares runs made minutes apart at most. Prints req/s, p50/p99 and the
stable process's CPU per request, and what the tee did (copies compared, dropped).

The canary competes with the stable pod for the same CPUs here; in a cluster it runs on pods
of its own, so the CPU per request of the stable process is the figure to read.

    python benchmarks/bench_shadow.py [--duration 8]

Only loopback is targeted; every load run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
from bench_serving import Result, Scenario, model_dir, run_wrk, start, stop, wait_ready
from bench_serving import write_bodies as serving_bodies
from prometheus_client.parser import text_string_to_metric_families
from roost_devcluster.net import free_port

TOKEN = "bench-shadow-token"
NAME = "bench-rf20"


def shadow(stable: str, canary: str | None) -> None:
    """Turn the stable pod's tee on (to `canary`) or off, as the operator's push does."""
    sections = {}
    if canary is not None:
        sections["shadow"] = {"stable": "s", "canary": "c", "targets": [canary], "share": 1.0}
    version = "on" if canary else "off"
    r = httpx.put(
        f"{stable}/v2/roost/runtime",
        json={"version": f"{version}-{os.getpid()}-{id(sections)}", "sections": sections},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    r.raise_for_status()


def tee_counts(stable: str) -> dict[str, float]:
    """The stable pod's shadow counters: copies compared, errored, dropped."""
    out = {"compared": 0.0, "error": 0.0, "dropped": 0.0}
    text = httpx.get(f"{stable}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "roost_shadow_requests_total":
                out[s.labels["outcome"]] = out.get(s.labels["outcome"], 0.0) + s.value
            elif s.name == "roost_shadow_dropped_total":
                out["dropped"] += s.value
    return out


def row(label: str, r: Result, base: Result | None) -> str:
    ratio = f"{r.rps / base.rps:6.1%}" if base is not None and base.rps > 0 else "     -"
    return (
        f"{label:<26} {r.rps:9.0f} {ratio:>8} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
        f"{r.cpu_us_per_request:10.0f} {r.errors:6d}"
    )


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per load run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = model_dir(work) / "model.onnx"
        bodies = serving_bodies(work)
        ports = {"s": free_port(), "c": free_port()}
        procs = {}
        lines: list[str] = []
        try:
            for revision, port in ports.items():
                env = {
                    "ROOST_MODEL": str(model),
                    "ROOST_NAME": NAME,
                    "ROOST_REVISION": revision,
                    "ROOST_PORT": str(port),
                    "ROOST_LOG_LEVEL": "warning",
                    "ROOST_RUNTIME_TOKEN": TOKEN,
                }
                procs[revision] = start([sys.executable, "-m", "roost_serving", "serve"], env)
            urls = {rev: f"http://127.0.0.1:{port}" for rev, port in ports.items()}
            for rev, url in urls.items():
                wait_ready(url + "/v2/health/ready", procs[rev])
            infer = f"{urls['s']}/v2/models/{NAME}/infer"
            scenarios: list[tuple[Scenario, int]] = [(bodies["json1"], 8), (bodies["json64"], 8)]
            for scenario, c in scenarios:
                runs: list[tuple[str, Result, dict[str, float]]] = []
                for mode in ("off", "shadow 100%", "off again"):
                    shadow(urls["s"], urls["c"] if mode == "shadow 100%" else None)
                    before = tee_counts(urls["s"])
                    result = run_wrk(infer, scenario, procs["s"].pid, c, args.duration)
                    after = tee_counts(urls["s"])
                    runs.append((mode, result, {k: after[k] - before[k] for k in after}))
                base = runs[0][1]
                lines.append(f"{scenario.name}, concurrency {c}:")
                for mode, result, tee in runs:
                    line = row(f"  {mode}", result, base if mode != "off" else None)
                    if mode.startswith("shadow"):
                        line += (
                            f"   copies compared {tee['compared']:.0f}, errors "
                            f"{tee['error']:.0f}, dropped {tee['dropped']:.0f}"
                        )
                    lines.append(line)
        finally:
            for proc in procs.values():
                stop(proc)
    print(
        f"bench_shadow: stable pod, {args.duration} s per run (2 s warm-up each), wrk on loopback"
    )
    columns = ("req/s", "vs off", "p50 ms", "p99 ms", "CPU us/req", "errors")
    widths = (9, 8, 8, 8, 10, 6)
    print(f"{'':<26} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
