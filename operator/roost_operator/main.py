"""`roost-operator`: the kopf operator process (options in docs/architecture.md).

Every option is also an environment variable, so the Helm chart configures the operator
without templating its command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf
from kubernetes import client, config

from roost_operator import handlers
from roost_operator.handlers import OperatorConfig
from roost_operator.leader import ElectionConfig, LeaderElector, follower_health

DEFAULT_IMAGE = OperatorConfig.serving_image
# Exit status of a leader that lost its Lease: Kubernetes restarts the container as a follower.
LOST_LEASE_EXIT = 3
log = logging.getLogger("roost_operator.main")


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return port


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return seconds


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _add_election_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("leader election (docs/architecture.md)")
    group.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=_flag(env.get("ROOST_OPERATOR_LEADER_ELECT", "false")),
        help="reconcile only while holding a coordination.k8s.io Lease, so several replicas "
        "can run (env ROOST_OPERATOR_LEADER_ELECT; default off)",
    )
    group.add_argument(
        "--leader-election-namespace",
        default=env.get("ROOST_OPERATOR_LEADER_ELECTION_NAMESPACE") or env.get("POD_NAMESPACE"),
        help="namespace of the Lease (env ROOST_OPERATOR_LEADER_ELECTION_NAMESPACE, else "
        "POD_NAMESPACE, else the first watched namespace, else default)",
    )
    group.add_argument(
        "--leader-election-lease-name",
        default=env.get("ROOST_OPERATOR_LEADER_ELECTION_LEASE_NAME", "roost-operator"),
        help="name of the Lease (env ROOST_OPERATOR_LEADER_ELECTION_LEASE_NAME)",
    )
    for flag, default, what in (
        ("lease-duration", "15", "a follower waits this long after the last renewal it saw"),
        ("renew-deadline", "10", "a leader that has not renewed this long stops (exits)"),
        ("retry-period", "2", "between two tries to acquire or renew"),
    ):
        var = "ROOST_OPERATOR_LEADER_ELECTION_" + flag.upper().replace("-", "_")
        group.add_argument(
            f"--leader-election-{flag}",
            type=_seconds,
            default=_seconds(env.get(var, default)),
            help=f"seconds: {what} (env {var}; default {default})",
        )


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[OperatorConfig, bool]:
    """The operator's configuration from the command line and the environment."""
    cfg, verbose, _ = parse_all(argv, env)
    return cfg, verbose


def parse_all(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[OperatorConfig, bool, ElectionConfig | None]:
    """`parse_args` plus the leader election settings (None when it is off)."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="roost-operator",
        description="Reconciles ModelDeployments into serving pods and runs canary rollouts.",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="namespace to watch (repeatable; env ROOST_OPERATOR_NAMESPACES, comma-separated; "
        "default: all namespaces)",
    )
    parser.add_argument(
        "--serving-image",
        default=env.get("ROOST_SERVING_IMAGE", DEFAULT_IMAGE),
        help="image of the serving pods when spec.server.image is unset (env ROOST_SERVING_IMAGE)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=_port(env.get("ROOST_OPERATOR_METRICS_PORT", "9090")),
        help="port of /metrics (env ROOST_OPERATOR_METRICS_PORT)",
    )
    parser.add_argument(
        "--health-port",
        type=_port,
        default=_port(env.get("ROOST_OPERATOR_HEALTH_PORT", "8081")),
        help="port of the liveness endpoint /healthz (env ROOST_OPERATOR_HEALTH_PORT)",
    )
    parser.add_argument(
        "--bind-address",
        default=env.get("ROOST_OPERATOR_BIND_ADDRESS", "0.0.0.0"),
        help="address the metrics and health endpoints listen on (env ROOST_OPERATOR_BIND_ADDRESS)",
    )
    parser.add_argument(
        "--registry-webhook-port",
        type=_port,
        default=_port(env["ROOST_REGISTRY_WEBHOOK_PORT"])
        if env.get("ROOST_REGISTRY_WEBHOOK_PORT")
        else None,
        help="port of POST /mlflow, MLflow's webhook (off when unset; signed with "
        "ROOST_REGISTRY_WEBHOOK_SECRET; env ROOST_REGISTRY_WEBHOOK_PORT)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every reconciliation")
    _add_election_flags(parser, env)
    args = parser.parse_args(argv)
    namespaces = args.namespace
    if namespaces is None:
        raw = env.get("ROOST_OPERATOR_NAMESPACES", "")
        namespaces = [ns.strip() for ns in raw.split(",") if ns.strip()]
    cfg = OperatorConfig(
        namespaces=tuple(namespaces),
        serving_image=args.serving_image,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        registry_webhook_port=args.registry_webhook_port,
        registry_webhook_secret=env.get("ROOST_REGISTRY_WEBHOOK_SECRET") or None,
    )
    election = None
    if args.leader_elect:
        try:
            election = ElectionConfig(
                namespace=args.leader_election_namespace or (namespaces or ["default"])[0],
                name=args.leader_election_lease_name,
                identity=operator_identity(env),
                lease_duration=args.leader_election_lease_duration,
                renew_deadline=args.leader_election_renew_deadline,
                retry_period=args.leader_election_retry_period,
            )
        except ValueError as e:
            parser.error(str(e))
    return cfg, bool(args.verbose), election


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator until SIGINT/SIGTERM (with leader election: once it leads)."""
    cfg, verbose, election = parse_all(argv)
    kopf.configure(verbose=verbose)
    assert handlers.reconcile_loop  # the import registers the handlers with kopf's default registry
    identity = operator_identity()
    elector = None
    if election is not None:
        elector = _lead(election, cfg)
        if elector is None:
            return 0  # stopped while following
    try:
        kopf.run(
            standalone=True,
            clusterwide=not cfg.namespaces,
            namespaces=list(cfg.namespaces),
            liveness_endpoint=f"http://{cfg.bind_address}:{cfg.health_port}/healthz",
            memo=kopf.Memo(config=cfg, identity=identity, leader_elected=elector is not None),
            # kopf types this as its `Identity` NewType of str, which it does not export.
            identity=cast(Any, identity),
        )
    finally:
        if elector is not None:
            # kopf has stopped every handler: only now may the follower take over.
            elector.release()
    return 0


def _lead(election: ElectionConfig, cfg: OperatorConfig) -> LeaderElector | None:
    """Follow until this replica holds the Lease; then renew it in the background.

    While following, `/healthz` and `/readyz` answer (health and metrics ports), so probes keep
    the replica and count it Ready; SIGTERM or SIGINT ends the wait (None). A lost Lease ends
    the process at once (`_lost`).
    """
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    elector = LeaderElector(client.ApiClient(), election)
    stop = threading.Event()
    handlers_before = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with follower_health(cfg.bind_address, cfg.health_port, cfg.metrics_port):
            leading = elector.acquire(stop)
    finally:
        for sig, handler in handlers_before.items():
            signal.signal(sig, handler)
    if not leading:
        return None
    elector.keep(_lost)
    return elector


def _lost(reason: str) -> None:
    """The Lease is lost: stop reconciling now, mid-request if need be.

    No cleanup runs on purpose: another replica may already lead, and any write this one still
    made could act on what it no longer owns. Rollout state is in status; the restarted
    process follows, and resumes from status if it wins the Lease again.
    """
    log.critical("leader election: lost the Lease (%s); exiting to stop reconciling", reason)
    sys.stderr.flush()
    os._exit(LOST_LEASE_EXIT)


def operator_identity(env: Mapping[str, str] | None = None) -> str:
    """Who this operator is, for kopf: the pod name, else the host name, plus the PID.

    kopf's own default asks `getpass.getuser()`, which raises for a numeric UID without a
    /etc/passwd entry: exactly how the image runs (`USER 10001`) under `runAsNonRoot`.
    """
    env = os.environ if env is None else env
    return f"roost-operator@{env.get('POD_NAME') or socket.gethostname()}/{os.getpid()}"
