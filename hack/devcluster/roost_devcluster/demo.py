"""`make demo`: roost's main job, end to end, on the local control plane.

1. builds the example models (scikit-learn's wine data set), starts the local control plane;
2. installs roost with its Helm chart: the operator runs as the chart's ServiceAccount
   (the pod runner gives it a TokenRequest token), watching the demo namespace;
3. deploys model v1, sends bounded live traffic to the serving pods (by pod IP, in proportion
   to replicas, Ready pods only: what a Service would select), then applies v2 and prints the
   canary step by step — shadowed (the stable pods copy every request to it and compare the
   answers), then weighted — until it is promoted;
4. applies a model that predicts a constant class: it is rolled back in the shadow step, before
   a single client request reached it (the traffic counts who answered each request);
5. applies a model that is worse but predicts the same class mix from the same inputs (drift and
   divergence see nothing): the traffic sends the wine rows' true labels back a second after
   each answer through a random pod, and the canary is rolled back on the accuracy gate;
6. draws the rollout timeline (PNG) and prints where everything is.

It exits non-zero when any stage does not behave as expected. The e2e test
`tests/e2e/test_demo.py` runs the same `run()` against the test cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roost_devcluster import controlplane
from roost_devcluster import modeldeployments as mds
from roost_devcluster.kubeapi import ApiError, KubeApi
from roost_devcluster.paths import REPO_ROOT, Layout, binary_dirs, default_state_dir, find_binary
from roost_devcluster.prometheus import run_prometheus
from roost_devcluster.traffic import Traffic

DEMO_NAMESPACE = "roost-demo"
NAME = "wine"
STAGE_TIMEOUT = 240.0  # seconds one stage may take before the demo calls it failed
RATE_WINDOW_SECONDS = 1.0  # client request and error rates are measured over at least this
Log = Callable[[str], None]


class DemoError(RuntimeError):
    """A stage did not behave as expected."""


@dataclass
class Result:
    """What the demo saw, for its summary and for the e2e test."""

    promoted_revision: str = ""
    promote_seconds: float = 0.0
    rolled_back_revision: str = ""
    rollback_seconds: float = 0.0
    rollback_reason: str = ""
    rolled_back_client_requests: int = -1
    """Client requests the bad model answered (the traffic's own count): 0 when caught in
    shadow."""
    accuracy_revision: str = ""
    """The worse-same-mix model's canary, rolled back on accuracy."""
    accuracy_reason: str = ""
    feedback: dict[str, int] = field(default_factory=dict)
    """Feedback outcomes the pods reported for the traffic's labels."""
    timeline_png: Path | None = None
    requests: dict[int, int] = field(default_factory=dict)


def _models() -> dict[str, Path]:
    subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "build_models.py")], check=True)
    root = REPO_ROOT / "examples" / "models"
    return {p.name: p for p in root.iterdir() if (p / "model.onnx").is_file()}


DEMO_STEPS = [{"weight": 25, "pause": "8s"}, {"weight": 50, "pause": "8s"}]
# v2 and the constant model go through a shadow step first: the constant model is caught there
# with zero user exposure. The accuracy stage's model disagrees with v1 on a third of the rows,
# so a shadow step would catch it too; it runs without one, to show the accuracy gate.
SHADOW_STEPS = [{"shadow": 100, "pause": "8s"}, *DEMO_STEPS]
DEMO_GATES: dict[str, Any] = {
    "errorRate": {"margin": 0.05},
    "latency": {"maxP99Seconds": 0.5},
    "drift": {"margin": 0.2},
    "divergence": {"margin": 0.1},
}
DEMO_ANALYSIS = {"interval": "4s", "minRequests": 20, "failureLimit": 2, "gates": DEMO_GATES}


# Labels count for the accuracy gate when they come within 5 s of the prediction (the demo's
# traffic sends them after 1 s); the same on every revision, so it never forces a restart.
DEMO_SERVER = {"env": [{"name": "ROOST_LABEL_HORIZON", "value": "5"}]}
ACCURACY_GATE = {"maxDropVsStable": 0.05}


def manifest(namespace: str, model_dir: Path, accuracy: bool = False) -> dict[str, Any]:
    """The demo ModelDeployment: 4 replicas, a shadow step then a two-step canary judged every
    4 s (with `accuracy`: no shadow step, and also judged on the labels sent back)."""
    analysis, steps = DEMO_ANALYSIS, SHADOW_STEPS
    if accuracy:
        analysis = {**DEMO_ANALYSIS, "gates": {**DEMO_GATES, "accuracy": ACCURACY_GATE}}
        steps = DEMO_STEPS
    return mds.manifest(namespace, model_dir, NAME, 4, steps, analysis, server=DEMO_SERVER)


def _apply(api: KubeApi, body: Mapping[str, Any]) -> None:
    mds.apply(api, body, manager="roost-demo")


def _get(api: KubeApi, namespace: str) -> dict[str, Any]:
    return api.get(mds.path(namespace, NAME))


def _gate_line(analysis: Mapping[str, Any]) -> str:
    """The gates as `kubectl roost status` words them, each with its verdict."""
    from roost_operator.rollout.messages import describe_gate

    gates = [g for g in analysis.get("gates") or [] if isinstance(g, Mapping)]
    if not gates:  # e.g. the first scrape, which only sets the baseline for counter deltas
        return str(analysis.get("message") or "no gate measured yet")
    return ", ".join(f"{describe_gate(g)} ({g.get('verdict')})" for g in gates)


class Watcher:
    """Polls the ModelDeployment, prints what changed and records the timeline."""

    def __init__(self, api: KubeApi, namespace: str, record: Path, traffic: Traffic, log: Log):
        self.api, self.namespace, self.record, self.traffic, self.log = (
            api,
            namespace,
            record,
            traffic,
            log,
        )
        self._last_line = ""
        self._last_counts: tuple[float, int, int] = (time.monotonic(), 0, 0)
        self._rates: dict[str, float] = {}

    def poll(self) -> dict[str, Any]:
        """One poll: a timeline sample and a printed line when the rollout moved."""
        from roost_operator import timeline

        md = _get(self.api, self.namespace)
        now_mono = time.monotonic()
        codes = self.traffic.snapshot()
        sent, errors = sum(codes.values()), sum(n for c, n in codes.items() if not 200 <= c < 300)
        t0, sent0, errors0 = self._last_counts
        dt = now_mono - t0
        if dt >= RATE_WINDOW_SECONDS or not self._rates:
            # Rates over at least a second: watch events come in bursts, and a rate over a few
            # milliseconds reads as 0 or as a spike.
            dt = max(dt, 1e-3)
            self._rates = {
                "requestRate": (sent - sent0) / dt,
                "errorRate": (errors - errors0) / dt,
            }
            self._last_counts = (now_mono, sent, errors)
        extra = dict(self._rates)
        timeline.append(self.record, timeline.sample(md, datetime.now(UTC), extra))
        status = md.get("status") or {}
        canary = status.get("canary") or {}
        analysis = canary.get("lastAnalysis") or {}
        if canary:
            line = (
                f"  canary {canary.get('revision')} step {int(canary.get('step', 0)) + 1}"
                f" weight {canary.get('weight')}% ready {canary.get('readyReplicas', 0)}"
            )
            if analysis:
                line += f" | analysis {analysis.get('verdict')}: {_gate_line(analysis)}"
        else:
            ready = mds.condition(md, "Ready")
            stable = (status.get("stable") or {}).get("revision")
            line = f"  stable {stable} Ready={ready.get('status')}"
        if line != self._last_line:
            self.log(line)
            self._last_line = line
        return md

    def until(self, what: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll every second until `done`, or fail after STAGE_TIMEOUT."""
        deadline = time.monotonic() + STAGE_TIMEOUT
        while True:
            md = self.poll()
            if done(md):
                return md
            if time.monotonic() > deadline:
                raise DemoError(f"{what} did not happen within {STAGE_TIMEOUT:.0f} s")
            time.sleep(1.0)


def _history_outcome(md: Mapping[str, Any], revision: str) -> Mapping[str, Any] | None:
    for entry in reversed((md.get("status") or {}).get("history") or []):
        if entry.get("revision") == revision:
            return dict(entry)
    return None


def _helm_install(cluster: controlplane.Cluster, namespace: str, release: str, log: Log) -> None:
    helm = find_binary("helm", binary_dirs())
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": "/tmp/roost-helm",
    }
    log(f"helm install {release} charts/roost (namespaced mode, watching {namespace})")
    subprocess.run(
        [
            str(helm),
            "upgrade",
            "--install",
            release,
            str(REPO_ROOT / "charts" / "roost"),
            "--namespace",
            namespace,
            "--set",
            "rbac.scope=namespaced",
            "--set",
            f"watchNamespaces={{{namespace}}}",
            "--wait",
            "--timeout",
            "180s",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _helm_uninstall(cluster: controlplane.Cluster, namespace: str, release: str) -> None:
    helm = find_binary("helm", binary_dirs())
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run(
        [str(helm), "uninstall", release, "--namespace", namespace, "--wait"],
        check=False,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _ensure_namespace(api: KubeApi, namespace: str) -> None:
    try:
        api.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    except ApiError as e:
        if e.status != 409:
            raise


def run(
    cluster: controlplane.Cluster,
    out_dir: Path,
    *,
    namespace: str = DEMO_NAMESPACE,
    release: str = "roost",
    log: Log = print,
    keep: bool = True,
) -> Result:
    """The demo's core, shared by `make demo` and its e2e test."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Result()
    log("building the example models (scikit-learn wine data set → ONNX + reference profiles)")
    models = _models()
    api = cluster.api()
    _ensure_namespace(api, namespace)
    api.apply(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modeldeployments.roost.dev",
        _crd(),
        manager="roost-demo",
    )
    _helm_install(cluster, namespace, release, log)
    sample = json.loads((models["wine-v1"] / "sample.json").read_text())
    rows, labels = sample["rows"], sample["labels"]
    record = out_dir / "demo-timeline.jsonl"
    record.unlink(missing_ok=True)
    try:
        log(f"deploying model v1 ({NAME}, 4 replicas)")
        _apply(api, manifest(namespace, models["wine-v1"]))
        with Traffic(
            api, namespace, NAME, rows, rate=40, duration=4 * STAGE_TIMEOUT,
            labels=labels, label_delay=1.0,
        ) as traffic:  # fmt: skip
            watch = Watcher(api, namespace, record, traffic, log)
            watch.until("v1 Ready", lambda md: mds.condition(md, "Ready").get("status") == "True")
            log("model v1 is Ready; live traffic flowing (40 req/s, round-robin over pod IPs)")

            log("applying model v2 → canary")
            started = time.monotonic()
            _apply(api, manifest(namespace, models["wine-v2"]))
            md = watch.until(
                "a canary for v2", lambda md: bool((md.get("status") or {}).get("canary"))
            )
            revision = str(md["status"]["canary"]["revision"])
            md = watch.until(
                "v2 promoted or rolled back", lambda md: _history_outcome(md, revision) is not None
            )
            entry = _history_outcome(md, revision) or {}
            if entry.get("outcome") != "Promoted":
                raise DemoError(
                    f"v2 was not promoted: {entry.get('outcome')}: {entry.get('reason')}"
                )
            result.promoted_revision, result.promote_seconds = revision, time.monotonic() - started
            log(f"PROMOTED {revision} after {result.promote_seconds:.0f} s: {entry.get('reason')}")

            log("applying a bad model (predicts one class for every input) → canary")
            started = time.monotonic()
            _apply(api, manifest(namespace, models["wine-constant"]))
            md = watch.until(
                "a canary for the bad model",
                lambda md: (
                    ((md.get("status") or {}).get("canary") or {}).get("revision")
                    not in (None, revision)
                ),
            )
            bad = str(md["status"]["canary"]["revision"])
            md = watch.until(
                "the bad model's verdict", lambda md: _history_outcome(md, bad) is not None
            )
            entry = _history_outcome(md, bad) or {}
            if entry.get("outcome") != "RolledBack":
                raise DemoError(f"the bad model was not rolled back: {entry.get('outcome')}")
            stalled = mds.condition(md, "Stalled")
            if stalled.get("reason") != "CanaryRolledBack":
                raise DemoError(f"Stalled condition is {stalled}, expected reason CanaryRolledBack")
            if (md["status"].get("stable") or {}).get("revision") != revision:
                raise DemoError("after the rollback the stable revision is not v2 any more")
            result.rolled_back_revision, result.rollback_seconds = bad, time.monotonic() - started
            result.rollback_reason = str(stalled.get("message", ""))
            result.rolled_back_client_requests = sum(
                n for (rev, _), n in traffic.by_revision.items() if rev == bad
            )
            log(
                f"ROLLED BACK {bad} after {result.rollback_seconds:.0f} s: {result.rollback_reason}"
                f" — client requests it answered: {result.rolled_back_client_requests}"
            )
            _accuracy_stage(api, namespace, models, revision, watch, result, log)
            for _ in range(3):  # a few more samples so the picture shows the stable state after
                watch.poll()
                time.sleep(1.0)
            result.requests = traffic.snapshot()
    finally:
        if not keep:
            _helm_uninstall(cluster, namespace, release)
    from roost_operator import timeline

    png = out_dir / "demo-timeline.png"
    timeline.plot(timeline.load(record), png, title=f"{namespace}/{NAME}")
    result.timeline_png = png
    return result


def _accuracy_stage(
    api: KubeApi,
    namespace: str,
    models: Mapping[str, Path],
    stable: str,
    watch: Watcher,
    result: Result,
    log: Log,
) -> None:
    """A worse model with the same prediction mix, rolled back on the accuracy gate."""
    log(f"labels flowing back through random pods: {dict(watch.traffic.feedback)}")
    log("applying a worse model with the same class mix (wine-permuted) → canary, accuracy gated")
    started = time.monotonic()
    _apply(api, manifest(namespace, models["wine-permuted"], accuracy=True))
    md = watch.until(
        "a canary for the worse model",
        lambda md: (
            ((md.get("status") or {}).get("canary") or {}).get("revision") not in (None, stable)
        ),
    )
    worse = str(md["status"]["canary"]["revision"])
    md = watch.until(
        "the worse model's verdict", lambda md: _history_outcome(md, worse) is not None
    )
    entry = _history_outcome(md, worse) or {}
    reason = str(entry.get("reason", ""))
    if entry.get("outcome") != "RolledBack" or "accuracy" not in reason:
        raise DemoError(f"the worse model was not rolled back on accuracy: {entry}")
    result.accuracy_revision, result.accuracy_reason = worse, reason
    result.feedback = dict(watch.traffic.feedback)
    log(f"ROLLED BACK {worse} on accuracy after {time.monotonic() - started:.0f} s: {reason}")
    log(f"feedback outcomes: {result.feedback}")


def _crd() -> dict[str, Any]:
    import yaml

    crd: dict[str, Any] = yaml.safe_load((REPO_ROOT / "crds" / "modeldeployment.yaml").read_text())
    return crd


def main(argv: Sequence[str] | None = None) -> int:
    """`make demo`."""
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out", help="where the PNG goes")
    args = parser.parse_args(argv)
    layout = Layout(default_state_dir())
    start = time.monotonic()
    try:
        cluster = controlplane.up(layout, log=print)
        with run_prometheus(layout) as prom:
            result = run(cluster, args.out)
            seen = prom.query("sum by (revision) (roost_requests_total)")
    except (DemoError, controlplane.StartError, subprocess.CalledProcessError, ApiError) as e:
        print(f"\nDEMO FAILED: {e}", file=sys.stderr)
        print(f"logs: {layout.logs}", file=sys.stderr)
        return 1
    by_code = ", ".join(f"{code}: {n}" for code, n in sorted(result.requests.items()))
    print(f"\nroost demo finished in {time.monotonic() - start:.0f} s")
    print(f"  promoted    {result.promoted_revision} in {result.promote_seconds:.0f} s")
    print(f"  rolled back {result.rolled_back_revision} in {result.rollback_seconds:.0f} s")
    print(f"  client requests by status code: {by_code}")
    for sample in seen:
        print(
            f"  Prometheus saw {float(sample['value'][1]):.0f} requests"
            f" on revision {sample['metric'].get('revision')}"
        )
    print(f"  timeline picture: {result.timeline_png}")
    print(f"\n  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  kubectl get md -n {DEMO_NAMESPACE}; kubectl roost status {NAME} -n {DEMO_NAMESPACE}")
    print(f"  component and pod logs: {layout.logs}")
    print("  tear down: make cluster-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
