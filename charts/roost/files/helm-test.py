"""`helm test` for roost: run with the operator's ServiceAccount inside the operator image.

Checks what a user needs after `helm install`: the API serves ModelDeployments, the operator's
credentials can list them where it watches, and the operator process answers on its health and
metrics ports. Exits 1 with one line per failed check.
"""

import json
import os
import sys
import urllib.request

from kubernetes import client, config


def main() -> int:
    """Run every check; print a verdict per check."""
    release_ns = os.environ["ROOST_TEST_RELEASE_NAMESPACE"]
    selector = os.environ["ROOST_TEST_OPERATOR_SELECTOR"]
    service = os.environ["ROOST_TEST_METRICS_SERVICE"]
    watched = [ns for ns in os.environ.get("ROOST_TEST_WATCH_NAMESPACES", "").split(",") if ns]
    metrics_port = int(os.environ["ROOST_TEST_METRICS_PORT"])
    health_port = int(os.environ["ROOST_TEST_HEALTH_PORT"])
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    api = client.ApiClient()
    failures: list[str] = []

    custom = client.CustomObjectsApi(api)
    for ns in watched or [None]:
        where = ns or "all namespaces"
        try:
            if ns:
                custom.list_namespaced_custom_object(
                    "roost.dev", "v1alpha1", ns, "modeldeployments", limit=1
                )
            else:
                custom.list_cluster_custom_object(
                    "roost.dev", "v1alpha1", "modeldeployments", limit=1
                )
            print(f"ok: the operator's account lists ModelDeployments in {where}")
        except client.ApiException as exc:
            failures.append(f"listing ModelDeployments in {where}: HTTP {exc.status} {exc.reason}")

    # Every replica (the leader and its followers) by pod IP: each answers its liveness probe,
    # and the leader, one of them, serves the operator's metrics. Through the Service a request
    # could land on a follower, whose /metrics carries no operator series.
    pods = client.CoreV1Api(api).list_namespaced_pod(release_ns, label_selector=selector)
    running = [p for p in pods.items if p.status.pod_ip and p.status.phase == "Running"]
    if not running:
        found = [(p.metadata.name, p.status.phase) for p in pods.items]
        failures.append(f"no running operator pod matches {selector} in {release_ns}: {found}")
        return report(failures)
    leaders = []
    for pod in running:
        host = pod.status.pod_ip
        ok = _get(f"http://{host}:{health_port}/healthz", failures)
        body = _get(f"http://{host}:{metrics_port}/metrics", failures)
        if ok is not None and body is not None and NEEDLE in body:
            leaders.append(pod.metadata.name)
    if not leaders:
        names = [p.metadata.name for p in running]
        failures.append(f"no operator pod of {names} serves {NEEDLE} (no leader reconciles)")
    else:
        print(f"ok: {', '.join(leaders)} serves the operator's metrics ({service} selects it)")
    return report(failures)


NEEDLE = "roost_operator_reconciliations_total"


def _get(url: str, failures: list[str]) -> str | None:
    """The body of a GET, or None with the failure recorded."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: str = response.read().decode("utf-8", "replace")
    except OSError as exc:
        failures.append(f"GET {url}: {exc}")
        return None
    print(f"ok: GET {url} -> 200")
    return body


def report(failures: list[str]) -> int:
    """Print the failures (if any) and return the exit status."""
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print(json.dumps({"passed": not failures, "failures": len(failures)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
