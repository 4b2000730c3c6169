"""``python -m roost_devcluster up|down|status`` (``make cluster-up`` / ``make cluster-down``).

``up`` starts the local control plane and the pod runner and prints ``export KUBECONFIG=...``;
it is a no-op (printing the same line) when the cluster already runs. ``down`` stops every
process and removes the state directory. ``status`` exits 0 when the cluster is healthy.
``restart COMPONENT [--down S]`` and ``freeze COMPONENT --seconds S`` inject control-plane
faults (``faults``).
The state directory is ``~/.cache/roost/devcluster`` unless ``--state-dir`` or
``ROOST_DEVCLUSTER_DIR`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from roost_devcluster import controlplane, faults
from roost_devcluster.paths import Layout, default_state_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m roost_devcluster", description=__doc__)
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="state directory (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and print the export KUBECONFIG line")
    up.add_argument(
        "--kwok-ready-all",
        action="store_true",
        help="kwok marks every pod Ready and no pod runner starts (benchmarks without processes)",
    )
    sub.add_parser("down", help="stop the cluster and remove its state")
    sub.add_parser("status", help="exit 0 when the cluster is healthy, 1 otherwise")
    restart = sub.add_parser("restart", help="restart one component, keeping the cluster's state")
    restart.add_argument("component", choices=faults.COMPONENTS)
    restart.add_argument("--down", type=float, default=0.0, help="seconds to stay stopped")
    restart.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    freeze = sub.add_parser("freeze", help="make one component unreachable (SIGSTOP) a while")
    freeze.add_argument("component", choices=faults.COMPONENTS)
    freeze.add_argument("--seconds", type=float, required=True)
    return parser


def _fault(args: argparse.Namespace, layout: Layout) -> int:
    try:
        if args.command == "restart":
            took = faults.restart(layout, args.component, down_seconds=args.down, kill=args.kill)
            print(f"{args.component} restarted; healthy again after {took:.1f} s")
        else:
            took = faults.freeze(layout, args.component, args.seconds)
            print(f"{args.component} frozen {args.seconds:.0f} s; answering after {took:.1f} s")
    except faults.FaultError as exc:
        print(f"roost-devcluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    layout = Layout(args.state_dir.resolve() if args.state_dir else default_state_dir())
    if args.command == "up":

        def log(message: str) -> None:
            print(message, file=sys.stderr)

        try:
            cluster = controlplane.up(layout, ready_all=args.kwok_ready_all, log=log)
        except (controlplane.StartError, FileNotFoundError) as exc:
            print(f"roost-devcluster: error: {exc}", file=sys.stderr)
            return 1
        if cluster.state.kwok_ready_all != args.kwok_ready_all:
            print(
                "roost-devcluster: note: the running cluster was started "
                f"{'with' if cluster.state.kwok_ready_all else 'without'} --kwok-ready-all; "
                "run `down` first to change it",
                file=sys.stderr,
            )
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command in ("restart", "freeze"):
        return _fault(args, layout)
    if args.command == "down":
        controlplane.down(layout)
        print(f"stopped; removed {layout.root}", file=sys.stderr)
        return 0
    running = controlplane.status(layout)
    if running is None:
        print(f"not running ({layout.root})")
        return 1
    print(f"running: {running.server}\nexport KUBECONFIG={running.kubeconfig}")
    for name, rss in sorted(controlplane.rss_bytes(running).items()):
        print(f"  {name:<24} rss {rss / 2**20:7.1f} MiB")
    return 0
