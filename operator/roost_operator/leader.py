"""Leader election on a `coordination.k8s.io/v1` Lease: one replica reconciles, the others wait.

The protocol is client-go's (`k8s.io/client-go/tools/leaderelection`), which kube-controller-
manager, Argo Rollouts and the KServe controller use:

- A follower reads the Lease every `retry_period`. It takes the Lease when nobody holds it, when
  the record has not changed for `lease_duration` of the follower's own clock (client-go's rule:
  immune to clock skew), or when the holder's `renewTime` is older than twice `lease_duration` by
  the wall clock (a record this old is abandoned however skewed the clocks; a restarted follower
  need not wait out a full `lease_duration` first).
- Every write is a PUT carrying the `resourceVersion` read: of two candidates only one wins, the
  other gets 409 Conflict and stays a follower.
- The leader renews every `retry_period`. If it has not renewed for `renew_deadline`, or sees
  another holder, it has lost the Lease: `on_lost` runs at once (the operator exits, so
  Kubernetes restarts it as a follower, as kube-controller-manager does). `renew_deadline` is
  shorter than `lease_duration`, so the old leader has stopped before anyone may take over.
- A leader stopping cleanly (SIGTERM: a rolling update, a drain) releases the Lease after its
  last reconciliation ended, so the follower takes over within one `retry_period`.

`decide` is the pure part (unit-tested); `LeaderElector` does the HTTP through the kubernetes
client's synchronous API in a thread of its own, so a busy event loop never delays a renewal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("roost_operator.leader")
NETWORK_ERRORS: tuple[type[BaseException], ...] = (ApiException, OSError)
try:  # urllib3 is the kubernetes client's transport; its errors are not all OSErrors
    from urllib3.exceptions import HTTPError as _Urllib3Error

    NETWORK_ERRORS = (*NETWORK_ERRORS, _Urllib3Error)
except ImportError:  # pragma: no cover - urllib3 always comes with kubernetes
    pass


@dataclass(frozen=True)
class ElectionConfig:
    """Where the Lease is and how fast leadership moves (client-go's defaults)."""

    namespace: str
    name: str = "roost-operator"
    identity: str = ""
    lease_duration: float = 15.0
    """Seconds a follower waits after the last renewal it saw before it takes over."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps leading without a successful renewal; < lease_duration."""
    retry_period: float = 2.0
    """Seconds between two tries to acquire or renew."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period} s, {self.renew_deadline} s, {self.lease_duration} s"
            )
        if not self.namespace or not self.name or not self.identity:
            raise ValueError("leader election needs a Lease namespace, a name and an identity")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says: who holds it, since when, last renewed when."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


class Action(Enum):
    """What a candidate does after reading the Lease."""

    CREATE = "create"
    RENEW = "renew"
    TAKE = "take"
    WAIT = "wait"


@dataclass(frozen=True)
class Observation:
    """The record a candidate saw last, and when by its own monotonic clock."""

    record: LeaseRecord
    at: float


def decide(
    record: LeaseRecord | None,
    identity: str,
    now: datetime,
    observed: Observation | None,
    monotonic_now: float,
    lease_duration: float,
) -> Action:
    """Whether to create, renew, take over, or wait (pure)."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE
    unchanged_for = monotonic_now - observed.at if observed and observed.record == record else 0.0
    duration = record.duration_seconds or lease_duration
    abandoned = record.renew_time is not None and now - record.renew_time > timedelta(
        seconds=2 * duration
    )
    return Action.TAKE if unchanged_for >= duration or abandoned else Action.WAIT


def _record(lease: client.V1Lease) -> LeaseRecord:
    spec = lease.spec or client.V1LeaseSpec()
    return LeaseRecord(
        holder=spec.holder_identity or "",
        duration_seconds=int(spec.lease_duration_seconds or 0),
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=int(spec.lease_transitions or 0),
    )


class LeaderElector:
    """Acquires and keeps one Lease for `config.identity`."""

    def __init__(self, api: client.ApiClient, config: ElectionConfig) -> None:
        self.config = config
        self._leases = client.CoordinationV1Api(api)
        self._events = client.CoreV1Api(api)
        self._observed: Observation | None = None
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading = False

    def _timeout(self) -> float:
        return max(0.5, self.config.retry_period)

    def try_once(self) -> bool:
        """One round: read the Lease, then create, renew or take it if due; True if ours."""
        cfg = self.config
        try:
            lease: client.V1Lease | None = self._leases.read_namespaced_lease(
                cfg.name, cfg.namespace, _request_timeout=self._timeout()
            )
        except ApiException as e:
            if e.status != 404:
                raise
            lease = None
        record = _record(lease) if lease is not None else None
        now, mono = datetime.now(UTC), time.monotonic()
        if record is not None and (self._observed is None or self._observed.record != record):
            self._observed = Observation(record, mono)
        action = decide(record, cfg.identity, now, self._observed, mono, cfg.lease_duration)
        if action is Action.WAIT:
            return False
        mine = LeaseRecord(
            holder=cfg.identity,
            duration_seconds=round(cfg.lease_duration),
            acquire_time=record.acquire_time if action is Action.RENEW and record else now,
            renew_time=now,
            transitions=(record.transitions if record else 0) + (action is Action.TAKE),
        )
        spec = client.V1LeaseSpec(
            holder_identity=mine.holder,
            lease_duration_seconds=mine.duration_seconds,
            acquire_time=mine.acquire_time,
            renew_time=mine.renew_time,
            lease_transitions=mine.transitions,
        )
        if lease is None:
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace), spec=spec
            )
            self._leases.create_namespaced_lease(
                cfg.namespace, body, _request_timeout=self._timeout()
            )
        else:
            lease.spec = spec  # the read resourceVersion stays: a concurrent write gets 409
            self._leases.replace_namespaced_lease(
                cfg.name, cfg.namespace, lease, _request_timeout=self._timeout()
            )
        self._observed = Observation(mine, mono)
        self._renewed_at = mono
        if action is not Action.RENEW:
            previous = record.holder if record else ""
            self._event(
                f"{cfg.identity} became leader" + (f" after {previous}" if previous else "")
            )
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this candidate leads (True) or `stop` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                if self.try_once():
                    self.leading = True
                    log.info("leader election: %s leads Lease %s/%s", *self._who())
                    return True
            except NETWORK_ERRORS as e:
                if isinstance(e, ApiException) and e.status in (401, 403):
                    raise  # RBAC or credentials are wrong: waiting will not fix it
                log.info("leader election: not acquired yet (%s)", _reason(e))
            if not waiting_logged:
                log.info("leader election: %s waits for Lease %s/%s", *self._who())
                waiting_logged = True
            stop.wait(self.config.retry_period)
        return False

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Renew in a background thread; `on_lost(reason)` once renewing failed for good."""
        self._thread = threading.Thread(
            target=self._renew_loop, args=(on_lost,), name="roost-leader", daemon=True
        )
        self._thread.start()

    def _renew_loop(self, on_lost: Callable[[str], None]) -> None:
        cfg = self.config
        reason = ""
        while not self._stop.wait(cfg.retry_period):
            try:
                if not self.try_once():
                    holder = self._observed.record.holder if self._observed else "?"
                    reason = f"Lease {cfg.namespace}/{cfg.name} is held by {holder}"
                    break
            except NETWORK_ERRORS as e:
                reason = _reason(e)
            if self._stop.is_set():
                return
            if time.monotonic() - self._renewed_at > cfg.renew_deadline:
                reason = f"not renewed for {cfg.renew_deadline:.0f} s (last error: {reason})"
                break
        else:
            return
        self.leading = False
        on_lost(reason)

    def release(self) -> None:
        """Stop renewing and hand the Lease back (holder cleared), if this candidate holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout() + 1)
        if not self.leading:
            return
        self.leading = False
        cfg = self.config
        try:
            lease = self._leases.read_namespaced_lease(
                cfg.name, cfg.namespace, _request_timeout=self._timeout()
            )
            if lease.spec is None or lease.spec.holder_identity != cfg.identity:
                return
            lease.spec = replace_spec(lease.spec, holder_identity="", lease_duration_seconds=1)
            self._leases.replace_namespaced_lease(
                cfg.name, cfg.namespace, lease, _request_timeout=self._timeout()
            )
            log.info("leader election: %s released Lease %s/%s", *self._who())
        except NETWORK_ERRORS as e:
            # Not fatal: the follower takes over after lease_duration instead.
            log.warning("leader election: could not release the Lease (%s)", _reason(e))

    def _who(self) -> tuple[str, str, str]:
        return self.config.identity, self.config.namespace, self.config.name

    def _event(self, message: str) -> None:
        """A `LeaderElection` event on the Lease, as client-go posts one."""
        cfg = self.config
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{cfg.name}.", namespace=cfg.namespace),
            involved_object=client.V1ObjectReference(
                api_version="coordination.k8s.io/v1",
                kind="Lease",
                name=cfg.name,
                namespace=cfg.namespace,
            ),
            reason="LeaderElection",
            message=message,
            type="Normal",
            source=client.V1EventSource(component="roost-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self._events.create_namespaced_event(
                cfg.namespace, event, _request_timeout=self._timeout()
            )
        except NETWORK_ERRORS as e:
            # The Lease is what counts; the event only tells people about it.
            log.warning("leader election: event not posted (%s): %s", _reason(e), message)


def replace_spec(spec: client.V1LeaseSpec, **changes: Any) -> client.V1LeaseSpec:
    """A copy of a Lease spec with some fields changed."""
    fields = {
        attr: getattr(spec, attr)
        for attr in client.V1LeaseSpec.attribute_map
        if hasattr(spec, attr)
    }
    return client.V1LeaseSpec(**{**fields, **changes})


def _reason(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status}: {e.reason}"
    return f"{type(e).__name__}: {e}"


class _FollowerHealth(BaseHTTPRequestHandler):
    """A follower is healthy and ready: a standby that takes over when the leader goes.

    Readiness matters for the chart's rolling update (`maxUnavailable: 0`): the new replica,
    a follower until the old leader releases the Lease, must turn Ready for the old one to go.
    """

    def do_GET(self) -> None:
        body = b"follower: waiting for the leader election Lease\n"
        known = self.path.startswith(("/healthz", "/readyz", "/metrics"))
        if self.path.startswith("/metrics"):
            # Scraped like the leader (ServiceMonitor, PodMonitor): up, with no operator series.
            body = b""
        self.send_response(200 if known else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # probes every few seconds would flood the log


@contextlib.contextmanager
def follower_health(host: str, *ports: int) -> Iterator[None]:
    """Answer `/healthz` and `/readyz` on `ports` (the health and the metrics port) while
    following, so probes keep a follower alive and Ready; the ports are free again (for kopf's
    liveness endpoint and the operator's metrics server) when the block ends."""
    servers = [ThreadingHTTPServer((host, port), _FollowerHealth) for port in ports]
    threads = [
        threading.Thread(target=srv.serve_forever, name="roost-follower-health", daemon=True)
        for srv in servers
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for srv, thread in zip(servers, threads, strict=True):
            srv.shutdown()
            srv.server_close()
            thread.join(timeout=5)
