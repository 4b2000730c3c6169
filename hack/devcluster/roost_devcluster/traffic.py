"""Bounded inference traffic to the Ready serving pods of a ModelDeployment.

Services have no endpoints for loopback pod IPs, so the generator does the Service's job:
it lists pods labelled ``roost.dev/modeldeployment=<name>`` that are Ready (refreshed every
second, so canary pods join as they become Ready) and sends Open Inference Protocol V2 infer
requests round-robin by pod IP, so traffic splits in proportion to ready replicas. Rows are
drawn at random (seeded) from the given list, one row per request. Outcomes are counted by
HTTP status code (``0`` = connection error or timeout), per revision and per pod.

Every run is bounded in count and time, and only 127.0.0.0/8 addresses are ever targeted::

    with Traffic(api, "ns", "wine", rows, rate=50, duration=20) as traffic:
        ...                      # runs in a background thread
    assert traffic.codes[200] == traffic.sent

With ``labels`` (the true label of each row), every request carries an id and, ``label_delay``
seconds after its answer, the label goes back to ``POST /v2/models/<name>/feedback`` of a
*random* Ready pod (as through a Service: usually not the one that answered), in batches;
``feedback`` counts the outcomes the pods report (joined, unknown, ...).
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from roost_devcluster.kubeapi import ApiError, KubeApi, api_path

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
MAX_REQUESTS = 100_000  # an upper bound whatever rate x duration says
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class Target:
    """One Ready serving pod."""

    pod: str
    ip: str
    port: int
    model: str
    revision: str

    @property
    def url(self) -> str:
        """The V2 infer URL on the pod IP."""
        return f"http://{self.ip}:{self.port}/v2/models/{self.model}/infer"

    @property
    def feedback_url(self) -> str:
        """The feedback URL on the pod IP."""
        return f"http://{self.ip}:{self.port}/v2/models/{self.model}/feedback"


def _env_value(container: dict[str, Any], name: str) -> str | None:
    for var in container.get("env", []):
        if var.get("name") == name and "value" in var:
            return str(var["value"])
    return None


def ready_targets(api: KubeApi, namespace: str, modeldeployment: str) -> list[Target]:
    """Ready, not terminating serving pods of the ModelDeployment, sorted by pod name."""
    pods = api.get(
        api_path("v1", "pods", namespace),
        labelSelector=f"roost.dev/modeldeployment={modeldeployment}",
    )["items"]
    targets = []
    for pod in pods:
        status, meta = pod.get("status", {}), pod["metadata"]
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        ip = status.get("podIP")
        if not ready or not ip or meta.get("deletionTimestamp"):
            continue
        if ipaddress.ip_address(ip) not in LOOPBACK:
            raise ValueError(f"pod {meta['name']} has non-loopback IP {ip}; refusing to send")
        container = pod["spec"]["containers"][0]
        port = _env_value(container, "ROOST_PORT") or next(
            (str(p["containerPort"]) for p in container.get("ports", [])), "8080"
        )
        targets.append(
            Target(
                pod=meta["name"],
                ip=ip,
                port=int(port),
                model=_env_value(container, "ROOST_NAME") or "model",
                revision=(meta.get("labels") or {}).get("roost.dev/revision", ""),
            )
        )
    return sorted(targets, key=lambda t: t.pod)


def infer_body(
    row: Sequence[float], input_name: str = "X", datatype: str = "FP32"
) -> dict[str, Any]:
    """A one-row V2 infer request."""
    return {
        "inputs": [
            {"name": input_name, "shape": [1, len(row)], "datatype": datatype, "data": list(row)}
        ]
    }


class Traffic:
    """A background thread sending ``rate`` requests/s for ``duration`` s (or ``count``)."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        modeldeployment: str,
        rows: Sequence[Sequence[float]],
        *,
        rate: float = 20.0,
        duration: float = 10.0,
        count: int | None = None,
        input_name: str = "X",
        datatype: str = "FP32",
        timeout: float = 5.0,
        seed: int = 0,
        rows_by_revision: Mapping[str, Sequence[Sequence[float]]] | None = None,
        labels: Sequence[Any] | None = None,
        label_delay: float = 2.0,
    ) -> None:
        if not rows or not all((rows_by_revision or {}).values()):
            raise ValueError("rows must not be empty")
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        self.api, self.namespace, self.modeldeployment = api, namespace, modeldeployment
        self.rows, self.rate, self.duration = rows, rate, duration
        # Rows of their own for some revisions: traffic that is not split at random (a test
        # of the operator's routing check), every other revision draws from `rows`.
        self.rows_by_revision = dict(rows_by_revision or {})
        self.limit = min(count if count is not None else int(rate * duration) + 1, MAX_REQUESTS)
        self.input_name, self.datatype, self.timeout = input_name, datatype, timeout
        # Rows are drawn at random, not cycled: cycling in step with the round-robin over pods
        # would hand each pod the same fixed subset (every 4th row of 400 for 4 pods), a biased
        # sample that reads as input drift.
        self._rng = random.Random(seed)
        self.codes: Counter[int] = Counter()
        self.by_revision: Counter[tuple[str, int]] = Counter()
        self.by_pod: Counter[str] = Counter()
        self.failed_by_pod: Counter[str] = Counter()
        """Requests per pod that got no 2xx answer (connection errors included)."""
        self.sent = 0
        self.no_target_waits = 0
        if labels is not None and len(labels) != len(rows):
            raise ValueError("labels must give one label per row")
        self.labels, self.label_delay = labels, label_delay
        self.feedback: Counter[str] = Counter()
        """Feedback outcomes the pods reported (``joined``, ``unknown``, ...; ``failed``: no
        answer)."""
        self._due: list[tuple[float, str, Any]] = []
        self._lock = threading.Lock()
        self._targets: list[Target] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="roost-traffic", daemon=True)

    def start(self) -> Traffic:
        """Start sending in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop early (idempotent) and wait for the thread."""
        self._stop.set()
        self.wait()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the run ends (its duration bounds this)."""
        if self._thread.is_alive():
            self._thread.join(self.duration + self.timeout + 30 if timeout is None else timeout)

    def snapshot(self) -> dict[int, int]:
        """Counts by status code so far."""
        with self._lock:
            return dict(self.codes)

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _refresh(self) -> None:
        """Keep `_targets` current; on an error keep the previous list, the next round retries.

        A thread of its own: a hung or frozen API server (a test's fault) delays only the next
        list of pods, never a request to the pods already known, as with a real Service.
        """
        while not self._stop.is_set():
            with contextlib.suppress(ApiError, httpx.HTTPError):
                targets = ready_targets(self.api, self.namespace, self.modeldeployment)
                with self._lock:
                    self._targets = targets
            self._stop.wait(REFRESH_SECONDS)

    def _run(self) -> None:
        start = time.monotonic()
        end = start + self.duration
        refresher = threading.Thread(target=self._refresh, name="roost-traffic-pods", daemon=True)
        refresher.start()
        try:
            self._send(start, end)
        finally:
            self._stop.set()

    def _send(self, start: float, end: float) -> None:
        turn = itertools.count()
        due = start
        with httpx.Client(timeout=self.timeout) as http:
            while not self._stop.is_set() and self.sent < self.limit:
                now = time.monotonic()
                if now >= end:
                    return
                with self._lock:
                    targets = self._targets
                if not targets:
                    self.no_target_waits += 1
                    self._stop.wait(0.2)
                    continue
                # Paced on a schedule, so a slow answer does not lower the mean rate; after a
                # stall (no targets) the schedule restarts instead of bursting to catch up.
                due = max(due + 1.0 / self.rate, now - 1.0) if self.sent else now
                if due > now:
                    self._stop.wait(due - now)
                target = targets[next(turn) % len(targets)]
                # Labels belong to `rows` (one per row): labelled traffic draws from them alone.
                rows = (
                    self.rows
                    if self.labels is not None
                    else self.rows_by_revision.get(target.revision, self.rows)
                )
                index = self._rng.randrange(len(rows))
                body = infer_body(rows[index], self.input_name, self.datatype)
                if self.labels is not None:
                    body["id"] = rid = f"traffic-{self.sent}-{self._rng.getrandbits(32):08x}"
                try:
                    code = http.post(target.url, json=body).status_code
                except httpx.HTTPError:
                    code = 0
                if self.labels is not None and code == 200:
                    due_at = time.monotonic() + self.label_delay
                    heapq.heappush(self._due, (due_at, rid, self.labels[index]))
                    self._send_labels(http, targets)
                with self._lock:
                    self.sent += 1
                    self.codes[code] += 1
                    self.by_revision[(target.revision, code)] += 1
                    self.by_pod[target.pod] += 1
                    if not 200 <= code < 300:
                        self.failed_by_pod[target.pod] += 1

    def _send_labels(self, http: httpx.Client, targets: Sequence[Target]) -> None:
        """Send the labels that are due, in one batch, to a random Ready pod."""
        now, batch = time.monotonic(), list[dict[str, Any]]()
        while self._due and self._due[0][0] <= now and len(batch) < 500:
            _, rid, label = heapq.heappop(self._due)
            batch.append({"id": rid, "truth": label})
        if not batch:
            return
        target = self._rng.choice(targets)
        try:
            answer = http.post(target.feedback_url, json={"feedback": batch})
            outcomes = answer.json().get("outcomes", {}) if answer.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            outcomes = {}
        with self._lock:
            if not outcomes:
                self.feedback["failed"] += len(batch)
            for outcome, n in outcomes.items():
                self.feedback[outcome] += int(n)
