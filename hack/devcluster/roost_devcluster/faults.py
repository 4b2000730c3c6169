"""Control-plane faults on demand: restart, stop, freeze a component of a running dev cluster.

Every component restarts with the command line it was started with (``controlplane.
component_argv``): the same ports, certificates and etcd data directory, so the cluster keeps
its state and clients only see the component gone for a while. ``restart`` returns how long
the component took to answer its health check again. ``frozen`` (SIGSTOP, then SIGCONT) makes
a component unreachable without closing its sockets: clients connect, then time out, as behind
a network partition. ``compact_etcd`` drops etcd's history, so a watch that resumes from an
older resourceVersion gets ``410 Gone`` and must relist.

From Python (tests)::

    faults.restart(layout, "kube-apiserver")
    with faults.frozen(layout, "kube-apiserver"):
        time.sleep(60)

From the shell: ``python -m roost_devcluster restart kube-apiserver [--down 5]``,
``python -m roost_devcluster freeze kube-apiserver --seconds 60``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import time
from collections.abc import Iterator

import httpx

from roost_devcluster import controlplane, procs
from roost_devcluster.kubeapi import ApiError, KubeApi
from roost_devcluster.paths import Layout, find_binary

COMPONENTS = controlplane.CONTROL_PLANE
HEALTH_TIMEOUT = 90.0


class FaultError(RuntimeError):
    """The cluster is not running, the component is unknown, or it did not come back."""


def _state(layout: Layout) -> procs.ClusterState:
    state = procs.ClusterState.load(layout.state_file)
    if state is None:
        raise FaultError(f"no dev cluster recorded under {layout.root}")
    return state


def _proc(state: procs.ClusterState, name: str) -> procs.Proc:
    if name not in COMPONENTS:
        raise FaultError(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")
    for proc in state.procs:
        if proc.name == name:
            return proc
    raise FaultError(f"{name} is not recorded in the cluster state")


def _answers(layout: Layout, state: procs.ClusterState, name: str) -> bool:
    """One health check of a component (kwok has none that needs TLS: alive is enough)."""
    ports = state.ports
    try:
        if name == "etcd":
            url = f"http://127.0.0.1:{ports['etcd']}/health"
            return httpx.get(url, timeout=2.0).status_code == 200
        if name == "kube-apiserver":
            api = KubeApi.from_kubeconfig(layout.kubeconfig)
            try:
                return api.healthy()
            finally:
                api.close()
        if name in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://127.0.0.1:{ports[name]}/healthz"
            return httpx.get(url, verify=False, timeout=2.0).status_code == 200
    except (httpx.HTTPError, ApiError, OSError):
        return False
    return True


def stop(layout: Layout, name: str, *, kill: bool = False) -> None:
    """Stop one component (SIGTERM with a short grace, or SIGKILL at once)."""
    state = _state(layout)
    procs.stop([_proc(state, name)], grace=0.0 if kill else 5.0)


def start(layout: Layout, name: str, timeout: float = HEALTH_TIMEOUT) -> float:
    """Start a stopped component again with its original command line; seconds to healthy."""
    started = time.monotonic()
    with controlplane.locked(layout):
        state = _state(layout)
        old = _proc(state, name)
        if old.alive():
            raise FaultError(f"{name} is still running (pid {old.pid})")
        argv = controlplane.component_argv(layout, state.ports, name, find_binary(name))
        new = procs.spawn(name, argv, layout.component_log(name))
        state.procs = [new if p is old else p for p in state.procs]
        state.save(layout.state_file)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if not new.alive():
            raise FaultError(f"{name} exited after its restart:\n{controlplane.log_tails(layout)}")
        if _answers(layout, state, name):
            return time.monotonic() - started
        time.sleep(0.2)
    raise FaultError(f"{name} not healthy {timeout:.0f} s after its restart")


def heal(layout: Layout, timeout: float = HEALTH_TIMEOUT) -> list[str]:
    """Start every recorded control-plane component that is not running; the names started.

    Tests of faults call this when they end, so a fault that went wrong (a component that did
    not come back) fails its own test and not every later test of the session.
    """
    state = _state(layout)
    dead = [p.name for p in state.procs if p.name in COMPONENTS and not p.alive()]
    for name in dead:
        start(layout, name, timeout)
    return dead


def restart(layout: Layout, name: str, *, down_seconds: float = 0.0, kill: bool = False) -> float:
    """Stop a component, keep it down `down_seconds`, start it again; seconds stop-to-healthy."""
    began = time.monotonic()
    stop(layout, name, kill=kill)
    if down_seconds > 0:
        time.sleep(down_seconds)
    start(layout, name)
    return time.monotonic() - began


def _signal(proc: procs.Proc, sig: signal.Signals) -> None:
    if not proc.alive():
        raise FaultError(f"{proc.name} is not running")
    os.killpg(proc.pid, sig)


@contextlib.contextmanager
def frozen(layout: Layout, name: str) -> Iterator[None]:
    """Freeze a component (SIGSTOP) for the body of the block, then let it go on (SIGCONT).

    Its sockets stay open, so clients connect and then wait: unreachable, not refused.
    """
    proc = _proc(_state(layout), name)
    _signal(proc, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal(proc, signal.SIGCONT)


def freeze(layout: Layout, name: str, seconds: float) -> float:
    """Freeze a component for `seconds`; seconds from the freeze until it answers again."""
    began = time.monotonic()
    with frozen(layout, name):
        time.sleep(seconds)
    state = _state(layout)
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while not _answers(layout, state, name):
        if time.monotonic() > deadline:
            raise FaultError(f"{name} not healthy {HEALTH_TIMEOUT:.0f} s after it was thawed")
        time.sleep(0.2)
    return time.monotonic() - began


def compact_etcd(layout: Layout) -> int:
    """Compact etcd's whole history (through its JSON gateway); the revision compacted to.

    Afterwards a watch resuming from any older resourceVersion is answered 410 Gone.
    """
    base = f"http://127.0.0.1:{_state(layout).ports['etcd']}/v3/kv"
    with httpx.Client(timeout=10.0) as http:
        # A range over one key that need not exist: only the header's revision is wanted.
        probe = http.post(f"{base}/range", json={"key": base64.b64encode(b"\0").decode()})
        probe.raise_for_status()
        revision = int(probe.json()["header"]["revision"])
        http.post(
            f"{base}/compaction", json={"revision": revision, "physical": True}
        ).raise_for_status()
    return revision
