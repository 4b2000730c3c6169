"""Real network peers for the inference log tests: a stalled sink and a CloudEvents receiver.

``BlackHole`` accepts TCP connections on 127.0.0.1, reads whatever comes and never answers: a
sink whose writes hang (an object store or receiver that stopped responding). ``Receiver`` is
an HTTP server that stores every POSTed body and answers 202.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class BlackHole:
    """A TCP listener that reads and never replies."""

    def __init__(self) -> None:
        """Listen on a free loopback port."""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.connections: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Close the listener and every held connection."""
        self._closed.set()
        self.sock.close()
        for conn in self.connections:
            conn.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class Receiver:
    """HTTP server on loopback keeping every POST body (``.bodies``) and its content type."""

    def __init__(self) -> None:
        """Start serving on a free port in a daemon thread."""
        bodies: list[tuple[str, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                bodies.append((self.headers.get("Content-Type", ""), self.rfile.read(length)))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
