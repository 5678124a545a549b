"""Simulated Sentinel (HTTP), Shield and EdgeAgent (gRPC) servers, and a TCP proxy for the database.

All listen on loopback ports chosen by the OS and follow one ``FaultScript``.
They are servers, so otel-cb does not patch them; only the demo's clients are
protected. Each implements the health check its client's breaker uses
(``FaultScript.healthy()``): Sentinel ``GET /healthz`` (200, else 503), Shield
and EdgeAgent the standard ``grpc.health.v1.Health/Check`` (``SERVING``, else
``NOT_SERVING``; ``NOT_FOUND`` for a service they do not serve); the
database's is ``SELECT 1`` through the proxy, which refuses connections while
the database is down.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from ..protos import edge_pb2, edge_pb2_grpc, shield_pb2, shield_pb2_grpc
from .faults import FaultScript

__all__ = ["DatabaseProxy", "Services", "start_services"]


class _SentinelHandler(BaseHTTPRequestHandler):
    server: _SentinelServer

    def log_message(self, format: str, *args: Any) -> None:  # the demo's screen is its own
        pass

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the slow phase): expected, not worth a traceback

    def _faulted(self) -> bool:
        self.server.requests += 1
        fail, delay = self.server.script.verdict()
        if delay:
            time.sleep(delay)
        if fail:
            self._answer(503, {"error": "sentinel unavailable"})
        return fail

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/healthz":  # not a user request: not counted in ``requests``
            healthy = self.server.script.healthy()
            self._answer(200 if healthy else 503, {"status": "ok" if healthy else "unavailable"})
            return
        if parts.path != "/api/v1/alerts":
            self._answer(404, {"error": "not found"})
            return
        if self._faulted():
            return
        limit = int(parse_qs(parts.query).get("limit", ["5"])[0])
        self.server.sequence += 1
        alerts = [
            {"id": f"alert-{self.server.sequence}-{i}", "severity": ("high", "medium", "low")[i % 3],
             "message": f"anomaly score {0.7 + i / 100:.2f} on edge-{i % 4}"}
            for i in range(limit)
        ]
        self._answer(200, {"alerts": alerts})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/v1/analyze":
            self._answer(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if self._faulted():
            return
        self._answer(200, {"anomaly": True, "score": 0.91})


class _SentinelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: FaultScript) -> None:
        super().__init__(("127.0.0.1", 0), _SentinelHandler)
        self.script = script
        self.sequence = 0
        self.requests = 0  # every alerts or analyze request that reached Sentinel


class _Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health/Check`` of one server (``List`` and ``Watch``: UNIMPLEMENTED)."""

    def __init__(self, script: FaultScript, service: str) -> None:
        self.script = script
        self.services = ("", service)

    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service not in self.services:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        status = health_pb2.HealthCheckResponse.SERVING if self.script.healthy() else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


class _Shield(shield_pb2_grpc.ShieldServiceServicer):
    def __init__(self, script: FaultScript) -> None:
        self.script = script

    def AnalyzeSecurityEvent(self, request: shield_pb2.SecurityEvent,
                             context: grpc.ServicerContext) -> shield_pb2.SecurityVerdict:
        fail, delay = self.script.verdict()
        if delay:
            time.sleep(delay)
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shield is overloaded")
        allowed = "drop table" not in request.payload.lower()
        return shield_pb2.SecurityVerdict(event_id=request.event_id, allowed=allowed,
                                          reason="clean" if allowed else "injection pattern")


class _EdgeAgent(edge_pb2_grpc.EdgeAgentServiceServicer):
    def __init__(self, script: FaultScript) -> None:
        self.script = script

    def StreamInference(self, request_iterator: Iterator[edge_pb2.InferenceRequest],
                        context: grpc.ServicerContext) -> Iterator[edge_pb2.InferenceChunk]:
        for index, request in enumerate(request_iterator):
            fail, delay = self.script.verdict()
            if delay:
                time.sleep(delay)
            if fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "edge agent lost its accelerator")
            yield edge_pb2.InferenceChunk(request_id=request.request_id, index=index,
                                          text=f"summary of {request.prompt[:40]}")

    def GetResourceUsage(self, request: edge_pb2.ResourceUsageRequest,
                         context: grpc.ServicerContext) -> edge_pb2.ResourceUsage:
        return edge_pb2.ResourceUsage(agent_id=request.agent_id, cpu=0.42, memory_mb=512.0)


class DatabaseProxy:
    """A TCP proxy in front of PostgreSQL that the fault script can cut.

    While the script fails requests, new connections are refused and open
    ones are dropped, as when the database host goes away.
    """

    def __init__(self, upstream: tuple[str, int], script: FaultScript) -> None:
        self.upstream = upstream
        self.script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="demo-db-proxy", daemon=True).start()
        threading.Thread(target=self._watch, name="demo-db-proxy-watch", daemon=True).start()

    def _down(self) -> bool:
        return self.script.current() in ("outage", "slow")

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _watch(self) -> None:
        while not self._closed.wait(0.05):
            if self._down():
                with self._lock:
                    doomed = list(self._sockets)
                for sock in doomed:
                    self._drop(sock)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            doomed = list(self._sockets)
        for sock in doomed:
            self._drop(sock)


class Services:
    """The running simulated services and where they listen."""

    def __init__(self, script: FaultScript) -> None:
        self.script = script
        self._http = _SentinelServer(script)
        threading.Thread(target=self._http.serve_forever, name="demo-sentinel", daemon=True).start()
        # Two servers, as in production: each service has its own target.
        self._shield = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        shield_pb2_grpc.add_ShieldServiceServicer_to_server(_Shield(script), self._shield)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(script, "llm.shield.v1.ShieldService"), self._shield)
        self._shield_port = self._shield.add_insecure_port("127.0.0.1:0")
        self._edge = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        edge_pb2_grpc.add_EdgeAgentServiceServicer_to_server(_EdgeAgent(script), self._edge)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(script, "llm.edge.v1.EdgeAgentService"), self._edge)
        self._edge_port = self._edge.add_insecure_port("127.0.0.1:0")
        self._shield.start()
        self._edge.start()

    @property
    def sentinel_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def sentinel_requests(self) -> int:
        """How many alerts and analyze requests reached Sentinel."""
        return self._http.requests

    @property
    def shield_target(self) -> str:
        return f"127.0.0.1:{self._shield_port}"

    @property
    def edge_agent_target(self) -> str:
        return f"127.0.0.1:{self._edge_port}"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._shield.stop(grace=None)
        self._edge.stop(grace=None)


def start_services(script: FaultScript) -> Services:
    """Start Sentinel, Shield and EdgeAgent on loopback, following ``script``."""
    return Services(script)
