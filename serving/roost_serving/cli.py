"""The ``roost`` command: ``roost serve``, plus ``roost profile`` and ``roost export``.

``serve`` runs one uvicorn process (uvloop, httptools, no access log: per-request logging
would cost more than a small model's inference). Exit status: 0 after a graceful shutdown,
1 when the model cannot be served (the last line on stderr is ``roost: error: <reason>``,
which Kubernetes shows as the container's termination message), 2 for bad options.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from roost_serving import __version__
from roost_serving.app import DataPlane, create_app
from roost_serving.config import ConfigError, Settings, add_arguments, settings_from
from roost_serving.connection import guarded_protocol

log = logging.getLogger("roost.server")


class RoostServer(uvicorn.Server):
    """uvicorn server with Kubernetes-style termination.

    On SIGTERM/SIGINT readiness turns false at once and every response says
    ``Connection: close``; the listener stays open for ``drain_seconds`` (load balancers stop
    routing meanwhile), then uvicorn stops accepting, gives in-flight requests the rest of the
    grace period (less a margin for the lifespan shutdown) and exits. A watchdog exits the
    process just before the grace period ends whatever happens, so Kubernetes never has to
    SIGKILL it. A second signal forces exit.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        plane: DataPlane,
        drain_seconds: float,
        grace_seconds: float = 30.0,
    ) -> None:
        """Wrap uvicorn's server; ``plane`` is told when termination starts."""
        super().__init__(config)
        self.plane = plane
        self.drain_seconds = drain_seconds
        self.grace_seconds = grace_seconds
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: begin draining. Second: force exit."""
        # Unlike uvicorn's own handler, the signal is not re-raised after shutdown, so a
        # graceful stop exits with status 0.
        if self._exit_at is not None or self.should_exit:
            self.force_exit = True
            self.should_exit = True
            return
        log.info(
            "received %s: readiness false, draining for %g s, exit within %g s",
            signal.Signals(sig).name,
            self.drain_seconds,
            self.grace_seconds,
        )
        self.plane.begin_shutdown()
        self._exit_at = time.monotonic() + self.drain_seconds
        watchdog = threading.Timer(max(self.grace_seconds - 0.5, 0.1), _overdue)
        watchdog.daemon = True
        watchdog.start()

    def stop(self) -> None:
        """Stop without draining (the model cannot be served)."""
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        """uvicorn polls this every 0.1 s; exit once the drain period is over."""
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def _overdue() -> None:
    print("roost: error: shutdown overran the grace period; exiting now", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``settings``: the guarded protocol, bounded shutdown."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": guarded_protocol(settings, getattr(app, "direct", None)),
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "log_level": settings.log_level,
        # After the drain, in-flight requests get what is left of the grace period.
        "timeout_graceful_shutdown": max(1, math.floor(settings.shutdown_budget)),
        # Clients (and the operator's scrapes) reuse connections; keep them a while.
        "timeout_keep_alive": 30,
        "server_header": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def _configure_logging(level: str) -> None:
    numeric = 5 if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(
        level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# Cyclic-GC thresholds for a serving process (Python's default is 700, 10, 10). Every request
# allocates many short-lived objects, so the default collects the young generation every few
# requests and, far too often, runs a full collection that walks every live object (the
# feedback join's prediction table alone holds up to 100,000 ids). At concurrency 32 on
# bench-rf20 the defaults put p99 at 46-65 ms, these thresholds at 9-13 ms (docs/performance.md).
# The request path makes almost no reference cycles; refcounting frees nearly everything.
GC_THRESHOLDS = (20_000, 20, 50)


def tune_gc() -> None:
    """Collect cyclic garbage less often (see GC_THRESHOLDS); refcounting frees the rest."""
    gc.set_threshold(*GC_THRESHOLDS)


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; returns the process exit status."""
    _configure_logging(settings.log_level)
    tune_gc()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_cpu_seconds_total etc., as every exporter has
    PlatformCollector(registry=registry)
    app = create_app(settings, registry=registry)
    plane: DataPlane = app.state.plane
    config = server_config(app, settings)
    server = RoostServer(config, plane, settings.drain_seconds, settings.grace_seconds)
    plane.on_fatal = lambda _reason: server.stop()
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start
        if plane.load_error is None:
            plane.close_log()
            print(f"roost: error: server failed to start (status {exc.code})", file=sys.stderr)
            return 1
    # The lifespan closes the log; a lifespan cut short (a signal during startup) did not.
    plane.close_log()
    if plane.load_error is not None:
        print(f"roost: error: {plane.load_error}", file=sys.stderr, flush=True)
        return 1
    if not server.started:
        print(f"roost: error: cannot listen on {settings.host}:{settings.port}", file=sys.stderr)
        return 1
    return 0


def _serve_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args, os.environ)
    except ConfigError as exc:
        print(f"roost: error: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def build_parser() -> argparse.ArgumentParser:
    """The ``roost`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="roost", description="ONNX model server speaking the Open Inference Protocol."
    )
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="serve an ONNX model over the Open Inference Protocol (KServe V2)",
        description="Every option can also be set by its ROOST_* environment variable.",
    )
    add_arguments(serve_parser)
    serve_parser.set_defaults(func=_serve_command)
    # The profile and export tools register their own subcommands (each sets `func`).
    modules = ("profile", "export", "validate", "log_reader")
    for module in (f"roost_serving.{name}" for name in modules):
        importlib.import_module(module).add_cli(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``roost`` console script."""
    args = build_parser().parse_args(argv)
    status = args.func(args)
    sys.exit(status if isinstance(status, int) else 0)
