"""Loopback networking helpers shared by the harness, the tests and the benchmarks."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the kernel's ephemeral range, above the well-known and most registered service ports.
SERVER_PORTS_FROM = 20000


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (free now; a caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ephemeral_start() -> int:
    """The first port the kernel hands to bind(0) and to outgoing connections."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def server_port(rng: random.Random | None = None) -> int:
    """A free port outside the ephemeral range, for a server that is stopped and restarted.

    A port from bind(0) lies in the ephemeral range, so while its server is down any outgoing
    connection may be given it as its local port; a client reconnecting to 127.0.0.1:P can even
    connect to itself on P (TCP simultaneous open). Either way the restarted server cannot
    bind its port again. Ports below the range are never handed out by the kernel.
    """
    pick = rng or random.SystemRandom()
    top = ephemeral_start() - 1
    if top <= SERVER_PORTS_FROM:
        return free_port()
    for _ in range(200):
        port = pick.randint(SERVER_PORTS_FROM, top)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()
