"""A real HTTP/1.1 server on loopback whose faults a test switches at will.

Modes (``server.mode = ...``):

- ``healthy``: 200 with a small JSON body (``{"n": <request number>, "path": ...}``), or the
  status a path ``/status/NNN`` asks for;
- ``error``: 500;
- ``throttle``: 429 with ``Retry-After`` (``server.retry_after``, a delta or a date string);
- ``unavailable``: 503 with ``Retry-After``;
- ``hang``: reads the request and never answers (until the server stops), so clients time out;
- ``slow``: answers 200 after ``server.delay`` seconds;
- ``truncate``: sends 200 headers announcing a long body, part of it, then closes (a read error mid-body).

``server.stop()`` closes the listening socket and every open connection, so the
port refuses connections; ``server.start()`` listens on the same port again.
``server.requests`` counts the requests that reached the server, which is how
tests prove that an open breaker touched no network.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FaultServer"]

MODES = ("healthy", "error", "throttle", "unavailable", "hang", "slow", "truncate")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._answer()

    def _answer(self) -> None:
        owner = self.server.owner
        number = owner._count()
        mode = owner.mode
        if mode == "hang":
            owner._unhang.wait(10.0)
            self.close_connection = True
            return
        if mode == "slow":
            owner._release.wait(owner.delay)
        if mode == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        status = {"error": 500, "throttle": 429, "unavailable": 503}.get(mode, 200)
        if status == 200 and self.path.startswith("/status/"):
            status = int(self.path[len("/status/"):len("/status/") + 3])
        body = json.dumps({"n": number, "path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status in (429, 503) and owner.retry_after is not None:
            self.send_header("Retry-After", owner.retry_after)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultServer

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.owner._lock:
            self.owner._connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or are cut off by stop() reset their connections: expected here.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.owner._lock:
            self.owner._connections.discard(request)
        super().shutdown_request(request)


class FaultServer:
    """An HTTP server on 127.0.0.1 with a switchable fault mode; a context manager."""

    def __init__(self, mode: str = "healthy") -> None:
        self.mode = mode
        self.delay = 0.2
        self.retry_after: str | None = "120"
        self.port = 0
        self._requests = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._release = threading.Event()
        self._unhang = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode: {value!r} is not allowed; use one of {', '.join(MODES)}")
        if getattr(self, "_mode", None) == "hang" and value != "hang":
            # Wake the hanging handlers; later hangs wait on a fresh event.
            self._unhang.set()
            self._unhang = threading.Event()
        self._mode = value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def _count(self) -> int:
        with self._lock:
            self._requests += 1
            return self._requests

    def start(self) -> FaultServer:
        self._release.clear()
        self._unhang = threading.Event()
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection: the port now refuses connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        self._unhang.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
