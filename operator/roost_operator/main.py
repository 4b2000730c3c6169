"""`roost-operator`: the kopf operator process (options in docs/architecture.md).

Every option is also an environment variable, so the Helm chart configures the operator
without templating its command line.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf

from roost_operator import handlers
from roost_operator.handlers import OperatorConfig

DEFAULT_IMAGE = OperatorConfig.serving_image


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return port


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[OperatorConfig, bool]:
    """The operator's configuration from the command line and the environment."""
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
    return cfg, bool(args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator until SIGINT/SIGTERM."""
    cfg, verbose = parse_args(argv)
    kopf.configure(verbose=verbose)
    assert handlers.GROUP  # the import registers the handlers with kopf's default registry
    kopf.run(
        standalone=True,
        clusterwide=not cfg.namespaces,
        namespaces=list(cfg.namespaces),
        liveness_endpoint=f"http://{cfg.bind_address}:{cfg.health_port}/healthz",
        memo=kopf.Memo(config=cfg),
        # kopf types this as its `Identity` NewType of str, which it does not export.
        identity=cast(Any, operator_identity()),
    )
    return 0


def operator_identity(env: Mapping[str, str] | None = None) -> str:
    """Who this operator is, for kopf: the pod name, else the host name, plus the PID.

    kopf's own default asks `getpass.getuser()`, which raises for a numeric UID without a
    /etc/passwd entry: exactly how the image runs (`USER 10001`) under `runAsNonRoot`.
    """
    env = os.environ if env is None else env
    return f"roost-operator@{env.get('POD_NAME') or socket.gethostname()}/{os.getpid()}"
