"""Operator scale benchmark (not run in CI): N ModelDeployments on kwok nodes.

Starts its own dev cluster with ``--kwok-ready-all`` (kwok readies every pod, so no serving
processes run), a real ``roost-operator`` subprocess, creates N ModelDeployments and prints:

- seconds from the first create until every ModelDeployment is Ready;
- the operator's peak RSS (VmHWM);
- API requests per ModelDeployment in an idle minute (``apiserver_request_total`` deltas, all
  clients, the control plane's own included), and the writes the operator made in that minute
  (objects whose operator-owned fingerprint changed, see ``versions``).

    python benchmarks/bench_operator.py --count 500 --idle 60
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack" / "devcluster"), str(REPO / "tests")]

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from roost_devcluster import controlplane  # noqa: E402
from roost_devcluster.kubeapi import api_path  # noqa: E402
from roost_devcluster.paths import Layout  # noqa: E402

ROOST_RESOURCES = {
    "modeldeployments",
    "deployments",
    "services",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "events",
}
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}


def request_counts(kubeconfig: Path) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource)."""
    text = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    out: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "apiserver_request_total":
                out[(s.labels.get("verb", ""), s.labels.get("resource", ""))] += int(s.value)
    return out


def versions(api: Any, ns: str) -> dict[str, str]:
    """kind/name -> a fingerprint that only the operator's own writes change.

    ModelDeployments: the resourceVersion (only roost writes them; spec writes are the user's).
    Deployments and PodDisruptionBudgets: ``metadata.generation``, which the controller
    manager's status updates leave alone. Services: the resourceVersion (nobody else writes
    ClusterIP Services). Events: those the operator posted (kopf names itself as the source);
    the scheduler's and controller manager's events are theirs.
    """
    out: dict[str, str] = {}
    paths = {
        f"/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments": "resourceVersion",
        api_path("apps/v1", "deployments", ns): "generation",
        api_path("policy/v1", "poddisruptionbudgets", ns): "generation",
        api_path("v1", "services", ns): "resourceVersion",
    }
    for path, field in paths.items():
        for item in api.get(path)["items"]:
            out[f"{path}/{item['metadata']['name']}"] = str(item["metadata"].get(field))
    for ev in api.get(api_path("v1", "events", ns))["items"]:
        source = (ev.get("source") or {}).get("component") or ev.get("reportingComponent")
        if source == "kopf":
            out[f"events/{ev['metadata']['name']}"] = ev["metadata"]["resourceVersion"]
    return out


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--idle", type=float, default=60.0, help="idle window in seconds")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds between all Ready and the idle window"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    # SIGTERM (timeout, Ctrl-C in a wrapper) must still tear the cluster down in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from crd_install import install_crd  # type: ignore[import-not-found]
    from e2e.operator_fixtures import OperatorProcess  # type: ignore[import-not-found]
    from kubernetes import config

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as tmp:
        layout = Layout(Path(tmp) / "cluster")
        cluster = controlplane.up(layout, ready_all=True, log=lambda m: None)
        try:
            api = cluster.api()
            kube = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
            install_crd(kube)
            ns = "bench"
            api.create(api_path("v1", "namespaces", None), {"metadata": {"name": ns}})
            op = OperatorProcess(ns, cluster.kubeconfig, Path(tmp) / "operator.log")
            op.start()
            assert op.proc is not None
            path = f"/apis/roost.dev/v1alpha1/namespaces/{ns}/modeldeployments"
            started = time.monotonic()
            for i in range(args.count):
                api.create(
                    path,
                    {
                        "apiVersion": "roost.dev/v1alpha1",
                        "kind": "ModelDeployment",
                        "metadata": {"name": f"md-{i:04d}"},
                        "spec": {"model": {"uri": f"file:///models/{i}/model.onnx"}},
                    },
                )
            created = time.monotonic() - started
            print(f"  created {args.count} in {created:.1f} s", flush=True)
            ready = 0
            while time.monotonic() - started < args.timeout:
                items = api.get(path)["items"]
                ready = sum(
                    any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (md.get("status") or {}).get("conditions") or []
                    )
                    for md in items
                )
                if ready == args.count:
                    break
                print(
                    f"  {time.monotonic() - started:5.0f} s: {ready}/{args.count} Ready", flush=True
                )
                time.sleep(1.0)
            all_ready = time.monotonic() - started
            time.sleep(args.settle)  # let the control plane's own backlog (endpoints, events) drain
            before = request_counts(cluster.kubeconfig)
            seen = versions(api, ns)
            time.sleep(args.idle)
            after = request_counts(cluster.kubeconfig)
            now_seen = versions(api, ns)
            changed = sum(1 for k, v in now_seen.items() if seen.get(k) != v)
            delta = after - before
            total = sum(delta.values())
            writes = sum(
                n
                for (verb, res), n in delta.items()
                if verb in WRITE_VERBS and res in ROOST_RESOURCES
            )
            per_minute = 60.0 / args.idle
            print(f"modeldeployments:              {args.count}")
            print(f"created in:                    {created:.1f} s")
            print(f"ready:                         {ready}/{args.count} after {all_ready:.1f} s")
            print(f"operator peak RSS:             {peak_rss_mib(op.proc.pid):.0f} MiB")
            print(f"idle API requests per MD/min:  {total * per_minute / args.count:.3f}")
            print(f"idle writes/min to these kinds, all clients: {writes * per_minute:.1f}")
            print(f"idle writes/min by the operator: {changed * per_minute:.1f}")
            top = ", ".join(f"{v} {r}: {n}" for (v, r), n in delta.most_common(8))
            print(f"idle requests by verb/resource: {top}")
            op.stop()
        finally:
            controlplane.down(layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
