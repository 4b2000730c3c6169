"""Kubelet probe semantics: thresholds, initial delay, and real httpGet/tcpSocket/exec checks."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from roost_devcluster.probes import Probe, ProbeTracker, run_probe


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def test_defaults_match_the_kubelet() -> None:
    probe = Probe.from_spec({"httpGet": {"path": "/", "port": 80}})
    assert probe == Probe({"httpGet": {"path": "/", "port": 80}}, 0.0, 10.0, 1.0, 1, 3)
    assert Probe.from_spec(None) is None


def test_tracker_needs_consecutive_results_to_flip() -> None:
    probe = Probe({}, initial_delay=5, period=1, success_threshold=2, failure_threshold=3)
    tracker = ProbeTracker(probe, started_at=100.0, result=False)
    assert not tracker.due(104.9)
    assert tracker.due(105.0)
    assert not tracker.record(True, "", 105.0)
    assert tracker.next_due == 106.0
    assert not tracker.record(False, "x", 106.0)  # a failure resets the success streak
    assert not tracker.record(True, "", 107.0)
    assert tracker.record(True, "", 108.0)
    assert tracker.result is True
    assert not tracker.record(False, "a", 109.0)
    assert not tracker.record(False, "b", 110.0)
    assert tracker.record(False, "c", 111.0)
    assert tracker.result is False
    assert tracker.last_message == "c"


def test_http_probe_against_a_real_server(server: int) -> None:
    ok = Probe({"httpGet": {"path": "/ok", "port": "http"}})
    bad = Probe({"httpGet": {"path": "/bad", "port": server}})
    assert run_probe(ok, "127.0.0.1", {"http": server}, {}) == (True, "")
    passed, message = run_probe(bad, "127.0.0.1", {}, {})
    assert not passed
    assert "503" in message


def test_tcp_probe_sees_open_and_closed_ports(server: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])  # bound but not listening: connections are refused
        assert run_probe(Probe({"tcpSocket": {"port": server}}), "127.0.0.1", {}, {})[0]
        assert not run_probe(Probe({"tcpSocket": {"port": closed}}), "127.0.0.1", {}, {})[0]


def test_exec_probe_uses_exit_status_and_environment() -> None:
    probe = Probe({"exec": {"command": ["sh", "-c", 'test "$FLAG" = on']}})
    assert run_probe(probe, "127.0.0.1", {}, {"FLAG": "on"})[0]
    assert not run_probe(probe, "127.0.0.1", {}, {"FLAG": "off"})[0]


def test_unsupported_handler_fails() -> None:
    passed, message = run_probe(Probe({"grpc": {"port": 1}}), "127.0.0.1", {}, {})
    assert not passed
    assert "unsupported" in message
