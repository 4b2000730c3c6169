"""Serving throughput and latency: `roost serve` (REST and gRPC) against a bare ASGI floor.

Starts `roost serve` (metrics and drift tracking on, one process, REST and gRPC listeners) on
127.0.0.1 with the bench-rf20 example model (100-tree depth-8 random forest over 20 features),
then a minimal ASGI app serving the same model the cheapest way (uvicorn + httptools + uvloop,
orjson, inline onnxruntime run, no validation, no metrics; unchanged across turns so ratios
stay comparable), and drives each in the same run:

- REST with Debian's `wrk`: single-row JSON requests at each --concurrency (default 1, 8, 32),
  64-row JSON requests at concurrency 8, and (roost only) 64-row requests with the binary
  tensor data extension, compared with the floor's 64-row JSON;
- gRPC (roost only) with benchmarks/grpc_load.py, a closed-loop Python client sending a
  pre-serialized ModelInferRequest with raw_input_contents: single rows at concurrency 1
  and 32, 64 rows at concurrency 8, compared with the floor's REST figures.

Both servers run side by side and each roost run is followed at once by the floor's run of
the same scenario. Prints req/s, p50/p99 latency and the server's CPU time per request for
every row, and roost's share of the floor's throughput. The load generators share the
machine with the server: on a small or busy machine the figures are noisy, so compare ratios
within one run (CPU per request is steadier than req/s).

    python benchmarks/bench_serving.py [--duration 10] [--concurrency 1 8 32]

Only loopback is targeted; every load run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from roost_devcluster.net import free_port
from roost_serving.proto import open_inference_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "bench_serving.lua"
GRPC_LOAD = Path(__file__).resolve().parent / "grpc_load.py"
TICKS = os.sysconf("SC_CLK_TCK")

BARE_APP = textwrap.dedent(
    '''
    """The floor: the least an HTTP server can do to run one V2 request through the model."""
    import os
    import numpy as np, onnxruntime as ort, orjson

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        os.environ["BARE_MODEL"], options, providers=["CPUExecutionProvider"]
    )

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        tensor = orjson.loads(body)["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        label, proba = session.run(None, {"X": x})
        out = orjson.dumps({"outputs": [{"name": "label", "data": label},
                                        {"name": "probabilities", "data": proba.ravel()}]},
                           option=orjson.OPT_SERIALIZE_NUMPY)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})
    '''
)


@dataclass
class Result:
    """One load run against one server."""

    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int


@dataclass(frozen=True)
class Scenario:
    """What one load run sends: a body file, its protocol and how many rows it carries."""

    name: str
    body: Path
    rows: int
    protocol: str = "rest"  # rest | grpc
    header_length: int | None = None  # binary tensor data extension
    floor: str | None = None  # the bare scenario it is compared with (default: its own name)


def model_dir(work: Path) -> Path:
    """examples/models/bench-rf20 (built by examples/build_models.py), or an identical local one."""
    examples = ROOT / "examples" / "models" / "bench-rf20"
    if not (examples / "model.onnx").exists() and (ROOT / "examples" / "build_models.py").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_models.py")], check=True)
    if (examples / "model.onnx").exists():
        return examples
    # Same recipe as the example, so the benchmark also runs where the examples are absent.
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(x, y)
    onx = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}})
    out = work / "bench-rf20"
    out.mkdir()
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll readiness (bounded) until 200."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after 60s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_wrk(url: str, scenario: Scenario, pid: int, concurrency: int, duration: int) -> Result:
    """One bounded wrk run; returns throughput, latency and server CPU per request."""
    threads = 1 if concurrency < 8 else 2
    base = ["wrk", f"-t{threads}", f"-c{concurrency}", "-s", str(LUA)]
    extra = [str(scenario.body)]
    if scenario.header_length is not None:
        extra.append(str(scenario.header_length))
    # Warm-up: connections, caches, the batcher's steady state.
    subprocess.run([*base, "-d2s", url, "--", *extra], check=True, capture_output=True)
    before = cpu_seconds(pid)
    out = subprocess.run(
        [*base, f"-d{duration}s", "--latency", url, "--", *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    used = cpu_seconds(pid) - before
    return _result(out, used, concurrency)


def run_grpc(target: str, scenario: Scenario, pid: int, concurrency: int, duration: int) -> Result:
    """One bounded grpc_load.py run (after a 2 s warm-up run), like :func:`run_wrk`."""
    base = [sys.executable, str(GRPC_LOAD), target, str(scenario.body), str(concurrency)]
    subprocess.run([*base, "2"], check=True, capture_output=True)
    before = cpu_seconds(pid)
    out = subprocess.run([*base, str(duration)], check=True, capture_output=True, text=True).stdout
    used = cpu_seconds(pid) - before
    return _result(out, used, concurrency)


def _result(out: str, used: float, concurrency: int) -> Result:
    line = next(ln for ln in out.splitlines() if ln.startswith("ROOST_RESULT "))
    data = json.loads(line.removeprefix("ROOST_RESULT "))
    requests = max(int(data["requests"]), 1)
    return Result(
        concurrency=concurrency,
        rps=requests / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        cpu_us_per_request=used / requests * 1e6,
        errors=int(data["non2xx"]) + int(data["socket_errors"]),
    )


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server process quietly."""
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then wait (bounded)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def write_bodies(work: Path) -> dict[str, Scenario]:
    """The request bodies: one row and 64 rows, JSON, binary extension and gRPC."""
    rng = np.random.default_rng(1)
    one = rng.normal(size=(1, 20)).astype(np.float32)
    many = rng.normal(size=(64, 20)).astype(np.float32)
    scenarios: dict[str, Scenario] = {}
    for rows, array in ((1, one), (64, many)):
        tensor = {"name": "X", "datatype": "FP32", "shape": list(array.shape)}
        body = work / f"rows{rows}.json"
        body.write_text(json.dumps({"inputs": [{**tensor, "data": array.ravel().tolist()}]}))
        scenarios[f"json{rows}"] = Scenario(f"{rows}-row json", body, rows)
        raw = array.astype("<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        binary = work / f"rows{rows}.bin"
        binary.write_bytes(header + raw)
        scenarios[f"binary{rows}"] = Scenario(
            f"{rows}-row binary", binary, rows, header_length=len(header), floor=f"{rows}-row json"
        )
        message = pb.ModelInferRequest(model_name="bench-rf20", raw_input_contents=[raw])
        message.inputs.add(name="X", datatype="FP32", shape=list(array.shape))
        grpc_body = work / f"rows{rows}.pb"
        grpc_body.write_bytes(message.SerializeToString())
        scenarios[f"grpc{rows}"] = Scenario(
            f"{rows}-row grpc", grpc_body, rows, protocol="grpc", floor=f"{rows}-row json"
        )
    return scenarios


Plan = list[tuple[Scenario, int]]


def plans(bodies: dict[str, Scenario], concurrency: list[int]) -> dict[str, Plan]:
    """server -> the (scenario, concurrency) runs it gets."""
    bare: Plan = [(bodies["json1"], c) for c in concurrency] + [(bodies["json64"], 8)]
    roost: Plan = [
        *bare,
        (bodies["binary64"], 8),
        (bodies["grpc1"], 1),
        (bodies["grpc1"], 32),
        (bodies["grpc64"], 8),
    ]
    return {"roost": roost, "bare": bare}


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = model_dir(work)
        profile = models / "profile.json"
        bodies = write_bodies(work)
        (work / "bare.py").write_text(BARE_APP)
        results: dict[str, list[tuple[Scenario, Result]]] = {}
        roost_port, grpc_port, bare_port = free_port(), free_port(), free_port()
        roost_cmd = [sys.executable, "-m", "roost_serving", "serve", "--name", "bench-rf20"]
        roost_env = {
            "ROOST_MODEL": str(models / "model.onnx"),
            "ROOST_PORT": str(roost_port),
            "ROOST_GRPC_PORT": str(grpc_port),
            "ROOST_LOG_LEVEL": "warning",
        }
        if profile.exists():
            roost_env["ROOST_PROFILE"] = str(profile)
        bare_cmd = [
            sys.executable, "-m", "uvicorn", "bare:app", "--app-dir", str(work),
            "--port", str(bare_port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        infer_path = "/v2/models/bench-rf20/infer"
        servers = {
            "roost": (roost_cmd, roost_env, roost_port, infer_path, "/v2/health/ready"),
            "bare": (bare_cmd, {"BARE_MODEL": str(models / "model.onnx")}, bare_port, "/", "/"),
        }  # fmt: skip
        runs = plans(bodies, args.concurrency)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, (cmd, env, port, _path, ready) in servers.items():
                procs[name] = start(cmd, env)
                base = f"http://127.0.0.1:{port}"
                if name == "bare":
                    wait_ready_post(base, bodies["json1"].body, procs[name])
                else:
                    wait_ready(base + ready, procs[name])
            # Both servers are up (the idle one costs nothing); each roost run is followed at
            # once by the floor's run of the same scenario, so a ratio compares two runs made
            # under the same load, which on a shared machine changes from minute to minute.
            results = {name: [] for name in servers}
            for scenario, c in runs["roost"]:
                for name, (_cmd, _env, port, path, _ready) in servers.items():
                    if (scenario, c) not in runs[name]:
                        continue
                    pid = procs[name].pid
                    if scenario.protocol == "grpc":
                        target = f"127.0.0.1:{grpc_port}"
                        result = run_grpc(target, scenario, pid, c, args.duration)
                    else:
                        url = f"http://127.0.0.1:{port}{path}"
                        result = run_wrk(url, scenario, pid, c, args.duration)
                    results[name].append((scenario, result))
            metrics = httpx.get(f"http://127.0.0.1:{roost_port}/metrics").text
        finally:
            for proc in procs.values():
                stop(proc)
    load_after = os.getloadavg()
    report(results, metrics, args.duration, profile.exists(), (load_before[0], load_after[0]))


def report(
    results: dict[str, list[tuple[Scenario, Result]]],
    metrics: str,
    duration: int,
    drift: bool,
    load: tuple[float, float],
) -> None:
    """Print the table, the ratios to the floor and the batching figure."""
    print(
        f"bench-rf20, {duration}s per run, metrics on, drift {'on' if drift else 'off'}, "
        f"{os.cpu_count()} CPUs, 1-min load average {load[0]:.1f} before / {load[1]:.1f} after"
    )
    print(f"{'server':<6} {'request':<15} {'conc':>4} {'req/s':>8} {'rows/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'cpu us/req':>10} {'errors':>6} {'of bare':>7}")  # fmt: skip
    floor = {(s.name, r.concurrency): r for s, r in results["bare"]}
    for name, rows in results.items():
        for scenario, r in rows:
            base = floor.get((scenario.floor or scenario.name, r.concurrency))
            share = f"{r.rps / base.rps:.0%}" if base is not None and name != "bare" else ""
            print(f"{name:<6} {scenario.name:<15} {r.concurrency:>4} {r.rps:>8.0f} "
                  f"{r.rps * scenario.rows:>8.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
                  f"{r.cpu_us_per_request:>10.1f} {r.errors:>6} {share:>7}")  # fmt: skip
    batch = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("roost_batch_size_sum", "roost_batch_size_count"))
    }
    sums = [v for k, v in batch.items() if k.startswith("roost_batch_size_sum")]
    counts = [v for k, v in batch.items() if k.startswith("roost_batch_size_count")]
    if sums and counts and counts[0]:
        print(f"roost mean rows per onnxruntime run over all runs: {sums[0] / counts[0]:.2f}")


def wait_ready_post(base: str, body: Path, proc: subprocess.Popen[bytes]) -> None:
    """The bare app has no health route; wait until it answers an inference."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.post(base + "/", content=body.read_bytes(), timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("bare server did not start")


if __name__ == "__main__":
    main()
