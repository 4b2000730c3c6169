"""The pod runner: a minimal kubelet for the dev cluster's kwok nodes.

It watches every pod bound to a kwok node (annotation ``kwok.x-k8s.io/node=fake``) that carries
``roost.dev/serving=true`` or ``app.kubernetes.io/component=operator`` and, for each container,
runs ``command + args`` as a local process (the venv's ``bin/`` first on PATH, so ``roost serve``
is the real console script) with the pod's environment (see ``podenv``). The process binds the
pod IP, a loopback address from the node's podCIDR. Operator pods also get ``KUBECONFIG``
pointing at a kubeconfig that holds a TokenRequest token of the pod's service account, so they
run with exactly that account's RBAC. Probes, restarts and status follow ``container``.
On deletion it sends SIGTERM, SIGKILL after the grace period, then deletes the pod with grace 0.

Logs: ``<state dir>/pods/<namespace>_<pod>_<container>.log`` (read them with
``read_container_log``). ``up`` starts it detached (``python -m roost_devcluster.podrunner
--state-dir DIR``); ``PodRunner(layout).start()`` / ``.stop()`` runs it in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from roost_devcluster import procs
from roost_devcluster.container import ContainerProcess, Launch, rfc3339
from roost_devcluster.kubeapi import ApiError, KubeApi, api_path, kubeconfig_document
from roost_devcluster.kwokstages import RUNNER_LABELS
from roost_devcluster.paths import REPO_ROOT, Layout, default_state_dir
from roost_devcluster.podenv import ContainerConfigError, command_line, container_env, decode_secret

Obj = dict[str, Any]
log = logging.getLogger("roost_devcluster.podrunner")
TICK = 0.2  # seconds between worker loop iterations (probe periods are whole seconds)
SHUTDOWN_GRACE = 3.0  # runner shutdown (cluster down) does not wait for full grace periods
# A kubelet keeps trying to finish a deletion while the API server is away (a test's fault).
DELETE_RETRY_SECONDS = 180.0
_BASE_ENV_KEYS = ("HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "TZ")


def container_log_path(layout: Layout, namespace: str, pod: str, container: str) -> Path:
    """Where the runner writes one container's stdout and stderr."""
    return layout.pods / f"{namespace}_{pod}_{container}.log"


def read_container_log(layout: Layout, namespace: str, pod: str, container: str) -> str:
    """All output of a container so far (every run, separated by ``--- <time> starting`` lines)."""
    path = container_log_path(layout, namespace, pod, container)
    return path.read_text(errors="replace") if path.exists() else ""


def is_runner_pod(pod: Obj) -> bool:
    """True for pods the pod runner (not kwok) runs."""
    labels = pod["metadata"].get("labels") or {}
    return any(labels.get(k) == v for k, v in RUNNER_LABELS.items())


def _base_env() -> dict[str, str]:
    # What a container image would provide: a PATH (venv first) and a few basics.
    env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
    env["PATH"] = (
        f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    )
    return env


READINESS = ("Ready", "ContainersReady")


class PodWorker(threading.Thread):
    """Runs one pod's containers and reports its status; one thread per pod."""

    def __init__(self, runner: PodRunner, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._pod = pod
        self._lock = threading.Lock()
        self._stop_grace: float | None = None  # set: stop containers, keep the pod object
        self._gone = False  # the pod object no longer exists
        self.containers: list[ContainerProcess] = []
        self.config_error = ""
        self._last_reported: Obj | None = None
        self._transitions: dict[str, tuple[str, str]] = {}

    # -- inputs from the watch thread ------------------------------------------------
    def update(self, pod: Obj) -> None:
        """Latest version of the pod from the watch."""
        with self._lock:
            self._pod = pod

    def pod_gone(self) -> None:
        """The pod was removed by someone else: stop the processes."""
        with self._lock:
            self._gone = True

    def shutdown(self, grace: float) -> None:
        """Stop the processes without touching the pod (runner exit)."""
        with self._lock:
            self._stop_grace = grace

    @property
    def pod(self) -> Obj:
        """Latest known pod object."""
        with self._lock:
            return self._pod

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        """Wait for the pod IP, start containers, then tick until the pod goes away."""
        try:
            self._run()
        except Exception:
            log.exception("pod worker %s/%s failed", self.namespace, self.pod_name)
            for c in self.containers:
                c.stop(SHUTDOWN_GRACE)
        finally:
            self.runner.worker_done(self)

    def _run(self) -> None:
        while not self.pod.get("status", {}).get("podIP"):
            if self._finishing():
                if self.pod["metadata"].get("deletionTimestamp"):
                    self._terminate(self.pod)  # nothing started: just finish the deletion
                return
            time.sleep(TICK)
        self._prepare()
        while True:
            pod = self.pod
            with self._lock:
                stop_grace, gone = self._stop_grace, self._gone
            if stop_grace is not None or gone:
                for c in self.containers:
                    c.stop(stop_grace if stop_grace is not None else SHUTDOWN_GRACE)
                return
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(pod)
                return
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
            now = time.monotonic()
            for c in self.containers:
                c.tick(now, grace)
            self._report(pod)
            time.sleep(TICK)

    def _finishing(self) -> bool:
        with self._lock:
            return (
                self._gone
                or self._stop_grace is not None
                or bool(self._pod["metadata"].get("deletionTimestamp"))
            )

    def _prepare(self) -> None:
        pod = self.pod
        layout = self.runner.layout
        base = _base_env()
        base["HOSTNAME"] = self.pod_name
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator":
            base["KUBECONFIG"] = str(self._service_account_kubeconfig(pod))
        restart_counts = {
            s["name"]: int(s.get("restartCount", 0))
            for s in pod.get("status", {}).get("containerStatuses", [])
        }
        for spec in pod["spec"]["containers"]:
            name = spec["name"]
            try:
                env = {
                    **base,
                    **container_env(pod, spec, self.runner.secret, self.runner.config_map),
                }
                argv = command_line(spec, env, env["PATH"])
            except (ContainerConfigError, ApiError) as exc:
                self.config_error = str(exc)
                argv, env = [], base
            work_dir = spec.get("workingDir")
            launch = Launch(
                argv=argv,
                env=env,
                cwd=work_dir if work_dir and Path(work_dir).is_dir() else str(REPO_ROOT),
                host=pod["status"]["podIP"],
                ports={
                    p["name"]: int(p["containerPort"])
                    for p in spec.get("ports", [])
                    if p.get("name")
                },
                log=container_log_path(layout, self.namespace, self.pod_name, name),
                pid_file=layout.pods / f"{self.namespace}_{self.pod_name}_{name}.pid",
                restart_policy=pod["spec"].get("restartPolicy", "Always"),
            )
            process = ContainerProcess(spec, launch, restart_counts.get(name, 0))
            if self.config_error:
                process.done = True  # a config error never starts; the kubelet retries, we report
            self.containers.append(process)

    def _service_account_kubeconfig(self, pod: Obj) -> Path:
        account = pod["spec"].get("serviceAccountName", "default")
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                # Bound to the pod: the token dies with it, as a projected token does.
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        api = self.runner.api
        path = api_path("v1", "serviceaccounts", self.namespace, account) + "/token"
        token = api.create(path, request)["status"]["token"]
        config = kubeconfig_document(
            api.creds.server,
            api.creds.ca_file.read_bytes(),
            account,
            {"token": token},
            self.namespace,
        )
        out = self.runner.layout.pods / f"{self.namespace}_{self.pod_name}.kubeconfig"
        out.write_text(yaml.safe_dump(config))
        out.chmod(0o600)
        return out

    # -- status ------------------------------------------------------------------------
    def _condition(self, kind: str, ok: bool, reason: str) -> Obj:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            self._transitions[kind] = (status, rfc3339())
        cond: Obj = {"type": kind, "status": status, "lastProbeTime": None}
        cond["lastTransitionTime"] = self._transitions[kind][1]
        if not ok:
            cond["reason"] = reason
        return cond

    def _report(self, pod: Obj) -> None:
        statuses = [c.status(self.config_error) for c in self.containers]
        all_ready = bool(statuses) and all(s["ready"] for s in statuses)
        unready = [s["name"] for s in statuses if not s["ready"]]
        gates = [g["conditionType"] for g in pod["spec"].get("readinessGates", [])]
        existing = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}
        gates_ok = all(existing.get(g, {}).get("status") == "True" for g in gates)
        reason = "ContainersNotReady" if unready else "ReadinessGatesNotReady"
        conditions = [c for t, c in existing.items() if t not in ("Ready", "ContainersReady")]
        conditions.append(self._condition("ContainersReady", all_ready, "ContainersNotReady"))
        conditions.append(self._condition("Ready", all_ready and gates_ok, reason))
        if all(c.done for c in self.containers) and self.containers and not self.config_error:
            codes = [
                c.last_terminated["exitCode"] if c.last_terminated else 1 for c in self.containers
            ]
            phase = "Succeeded" if not any(codes) else "Failed"
        elif any(s["state"].get("running") or s["restartCount"] for s in statuses):
            phase = "Running"
        else:
            phase = "Pending"
        status = {"phase": phase, "conditions": conditions, "containerStatuses": statuses}
        # Others write these conditions too (the node lifecycle controller marks pods NotReady
        # while a kwok node misses heartbeats under load): like a kubelet, put ours back when
        # the live pod disagrees, not only when our own view changed.
        ours = {c["type"]: c["status"] for c in conditions if c["type"] in READINESS}
        live = {t: existing.get(t, {}).get("status") for t in READINESS}
        if status == self._last_reported and ours == live:
            return
        try:
            # A merge patch replaces both lists whole: the runner owns them for this pod.
            self.runner.api.patch(
                api_path("v1", "pods", self.namespace, self.pod_name) + "/status",
                {"metadata": {"uid": self.uid}, "status": status},
                kind="merge-patch",
            )
            self._last_reported = status
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status patch of %s/%s failed: %s", self.namespace, self.pod_name, exc)
        except httpx.HTTPError as exc:  # API server unreachable: the next tick reports again
            log.warning("status patch of %s/%s failed: %s", self.namespace, self.pod_name, exc)

    def _terminate(self, pod: Obj) -> None:
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds", 30))
        for c in self.containers:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.running() for c in self.containers):
            time.sleep(0.05)
        for c in self.containers:
            c.stop(0.0)  # SIGKILL whatever ignored SIGTERM
        self._report(self.pod)
        self._delete()

    def _delete(self) -> None:
        """Finish the deletion (grace 0), retrying while the API server cannot be reached."""
        deadline = time.monotonic() + DELETE_RETRY_SECONDS
        while True:
            try:
                self.runner.api.delete(
                    api_path("v1", "pods", self.namespace, self.pod_name),
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )
                return
            except ApiError as exc:
                if exc.status < 500:  # gone (404), another pod by now (409): nothing to finish
                    return
                reason = str(exc)
            except httpx.HTTPError as exc:
                reason = str(exc)
            with self._lock:
                stopping = self._stop_grace is not None
            if stopping or time.monotonic() > deadline:
                log.warning("deleting %s/%s failed: %s", self.namespace, self.pod_name, reason)
                return
            time.sleep(1.0)


class PodRunner:
    """Watches runner pods on kwok nodes and keeps one ``PodWorker`` per pod."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.api = KubeApi.from_kubeconfig(layout.kubeconfig)
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._kwok_nodes: dict[str, bool] = {}
        self._thread: threading.Thread | None = None

    # -- lookups for podenv ----------------------------------------------------------
    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """A Secret's decoded data, or None when it does not exist."""
        secret = self.api.find(api_path("v1", "secrets", namespace, name))
        return None if secret is None else decode_secret(secret)

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """A ConfigMap's data, or None when it does not exist."""
        config_map = self.api.find(api_path("v1", "configmaps", namespace, name))
        return None if config_map is None else dict(config_map.get("data") or {})

    def _on_kwok_node(self, pod: Obj) -> bool:
        node = pod.get("spec", {}).get("nodeName")
        if not node:
            return False
        if node not in self._kwok_nodes:
            try:
                annotations = (
                    self.api.get(api_path("v1", "nodes", None, node))["metadata"].get("annotations")
                    or {}
                )
                self._kwok_nodes[node] = annotations.get("kwok.x-k8s.io/node") == "fake"
            except ApiError:
                return False
        return self._kwok_nodes[node]

    # -- workers ---------------------------------------------------------------------
    def _handle(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    worker.pod_gone()
                return
            if worker is not None:
                worker.update(pod)
                return
            if self._stopping.is_set() or not is_runner_pod(pod) or not self._on_kwok_node(pod):
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
        log.info("running pod %s/%s", worker.namespace, worker.pod_name)
        worker.start()

    def worker_done(self, worker: PodWorker) -> None:
        """Called by a worker thread as it exits."""
        with self._lock:
            self.workers.pop(worker.uid, None)

    # -- watch -----------------------------------------------------------------------
    def _relist(self) -> str:
        listing = self.api.get(api_path("v1", "pods", None))
        seen = set()
        for pod in listing["items"]:
            seen.add(pod["metadata"]["uid"])
            self._handle("MODIFIED", pod)
        with self._lock:
            vanished = [w for uid, w in self.workers.items() if uid not in seen]
        for worker in vanished:
            worker.pod_gone()
        return str(listing["metadata"]["resourceVersion"])

    def run(self) -> None:
        """Watch until ``stop()``; relists on 410 Gone and reconnects after errors."""
        resource_version = ""
        while not self._stopping.is_set():
            try:
                if not resource_version:
                    resource_version = self._relist()
                for event in self.api.watch(api_path("v1", "pods", None), resource_version, 30):
                    obj = event["object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] != "BOOKMARK":
                        self._handle(event["type"], obj)
                    if self._stopping.is_set():
                        break
            except ApiError as exc:
                if exc.status == 410:
                    resource_version = ""  # expired: list again
                else:
                    log.warning("pod watch failed: %s", exc)
                    self._stopping.wait(1.0)
            except Exception as exc:
                log.warning("pod watch interrupted: %s", exc)
                self._stopping.wait(1.0)

    def start(self) -> None:
        """Run the watch in a background thread (in-process use)."""
        self._thread = threading.Thread(target=self.run, name="pod-runner-watch", daemon=True)
        self._thread.start()

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop watching and stop every container process (pods are left as they are)."""
        self._stopping.set()
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown(grace)
        for worker in workers:
            worker.join(timeout=grace + 15)
        if self._thread is not None:
            self._thread.join(timeout=40)  # the watch request times out within 30 s
        self.api.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m roost_devcluster.podrunner [--state-dir DIR]``: run until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="dev-cluster pod runner")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    layout = Layout(args.state_dir.resolve())
    layout.pods.mkdir(parents=True, exist_ok=True)
    # Processes left by a runner that was killed are ours (recorded) and stale: stop them.
    procs.stop(procs.read_pid_files(layout.pods), grace=2.0)
    runner = PodRunner(layout)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    log.info("pod runner watching %s", json.dumps(RUNNER_LABELS))
    done.wait()
    runner.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
