"""A real OTLP receiver on loopback for end-to-end telemetry tests, and a blackhole.

Implements the collector's trace, metrics and logs services from the
``opentelemetry-proto`` definitions over gRPC (``grpc_receiver``) and over
HTTP/protobuf (``http_receiver``: ``POST /v1/traces``, ``/v1/metrics`` and
``/v1/logs``), and keeps every request it received. Tests read what arrived
through plain helpers (spans by name, metric data points by name, log
records) rather than protobufs. ``blackhole()`` is a collector that accepts
connections and never answers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["Received", "attributes", "blackhole", "grpc_receiver", "http_receiver"]


def attributes(items: Any) -> dict[str, Any]:
    """Protobuf ``KeyValue`` list -> plain dict."""
    return {item.key: _value(item.value) for item in items}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Received:
    """Everything a receiver got, guarded by a lock (requests arrive on server threads)."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[logs_service_pb2.ExportLogsServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    endpoint: str = ""

    def spans(self) -> list[Any]:
        with self.lock:
            return [span for request in self.traces for rs in request.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]

    def log_records(self) -> list[tuple[str, Any]]:
        """(scope name, log record) of every record, in arrival order."""
        with self.lock:
            return [(sl.scope.name, record) for request in self.logs for rl in request.resource_logs
                    for sl in rl.scope_logs for record in sl.log_records]

    def resources(self) -> list[dict[str, Any]]:
        with self.lock:
            return [attributes(rs.resource.attributes) for request in self.traces for rs in request.resource_spans]

    def metric_points(self, name: str) -> list[tuple[str, Any]]:
        """(scope name, data point) of every point of metric ``name``, in arrival order."""
        with self.lock:
            found = []
            for request in self.metrics:
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            if metric.name != name:
                                continue
                            data = getattr(metric, metric.WhichOneof("data"))
                            found.extend((sm.scope.name, point) for point in data.data_points)
            return found

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0) -> bool:
        """Poll until ``predicate(self)`` holds; bounded, for exports that arrive on a timer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.logs.append(request)
        return logs_service_pb2.ExportLogsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[Received]:
    """An OTLP/gRPC receiver on 127.0.0.1 and a port the OS chose; ``endpoint`` is its URL."""
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(received), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(received), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    received.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield received
    finally:
        server.stop(grace=None)


@contextmanager
def http_receiver() -> Iterator[Received]:
    """An OTLP/HTTP (protobuf) receiver on 127.0.0.1 and a port the OS chose."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/v1/traces":
                request: Any = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                response: Any = trace_service_pb2.ExportTraceServiceResponse()
                with received.lock:
                    received.traces.append(request)
            elif self.path == "/v1/metrics":
                request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                response = metrics_service_pb2.ExportMetricsServiceResponse()
                with received.lock:
                    received.metrics.append(request)
            elif self.path == "/v1/logs":
                request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
                response = logs_service_pb2.ExportLogsServiceResponse()
                with received.lock:
                    received.logs.append(request)
            else:
                self.send_error(404)
                return
            payload = response.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def blackhole() -> Iterator[str]:
    """A collector that accepts connections on 127.0.0.1 and never answers; yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()
        for conn in held:
            conn.close()
