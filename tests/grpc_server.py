"""A real gRPC server on loopback whose faults a test switches at will, and the stubs it serves.

Stubs are generated from ``tests/protos/*.proto`` with grpcio-tools on first
use, into ``tests/_generated/<hash of the protos>/`` (git-ignored), and
imported from there: ``stubs()`` returns them.

``FaultServer(secure=True)`` listens with local credentials, for
``grpc.secure_channel(address, grpc.local_channel_credentials())``.

Services: ``llm.shield.v1.ShieldService`` (unary ``AnalyzeSecurityEvent``) and
``llm.edge.v1.EdgeAgentService`` with one method per call kind:
``GetResourceUsage`` (unary-unary), ``WatchResourceUsage`` (unary-stream, three
samples), ``ReportUsage`` (stream-unary) and ``StreamInference``
(stream-stream, one chunk per request).

Modes (``server.mode = ...``), applied to every method:

- ``healthy``: normal answers;
- ``unavailable``: aborts with ``UNAVAILABLE`` before answering;
- ``invalid``: aborts with ``INVALID_ARGUMENT`` (a client error, not an outage);
- ``slow``: waits ``server.delay`` seconds (or until the client gives up), so a
  client deadline gives ``DEADLINE_EXCEEDED``;
- ``server.pushback_ms``: when set, injected errors carry a
  ``grpc-retry-pushback-ms`` trailer (the server's retry hint);
- ``abort_mid_stream``: a streaming response sends one message, then aborts
  with ``UNAVAILABLE``; a streaming request is aborted after its first message.

Test modules get the fixtures ``pb`` (the stubs) and ``server`` (one server per
module, back to ``healthy`` with its counts cleared for every test) by
importing ``pb_fixture``, ``server_fixture`` and ``module_server_fixture``.

``server.stop()`` stops the server, so the port refuses connections.
``server.calls`` counts the calls that reached a handler, per method name
(``server.total`` sums them): that is how tests prove a rejected call never
left the client.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

__all__ = ["MODES", "FaultServer", "module_server_fixture", "pb_fixture", "server_fixture", "stubs"]

MODES = ("healthy", "unavailable", "invalid", "slow", "abort_mid_stream")
PROTOS = Path(__file__).resolve().parent / "protos"
GENERATED = Path(__file__).resolve().parent / "_generated"
_lock = threading.Lock()
_stubs: SimpleNamespace | None = None


def stubs() -> SimpleNamespace:
    """Generate (once, cached on disk by content) and import the protobuf and gRPC stubs.

    Returns a namespace with ``shield_pb2``, ``shield_pb2_grpc``, ``edge_pb2``, ``edge_pb2_grpc``.
    """
    global _stubs
    with _lock:
        if _stubs is None:
            directory = _generate()
            if str(directory) not in sys.path:
                sys.path.insert(0, str(directory))
            _stubs = SimpleNamespace(**{
                name: importlib.import_module(name)
                for name in ("shield_pb2", "shield_pb2_grpc", "edge_pb2", "edge_pb2_grpc")
            })
        return _stubs


def _generate() -> Path:
    protos = sorted(PROTOS.glob("*.proto"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in protos)).hexdigest()[:16]
    target = GENERATED / digest
    if (target / "edge_pb2_grpc.py").exists():
        return target
    from grpc_tools import protoc

    GENERATED.mkdir(exist_ok=True)
    # Generate beside the final place, then rename: concurrent test processes never see half a package.
    scratch = Path(tempfile.mkdtemp(dir=GENERATED, prefix=".tmp-"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    status = protoc.main([
        "grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}",
        f"--python_out={scratch}", f"--grpc_python_out={scratch}",
        *(str(p) for p in protos),
    ])
    if status != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError(f"grpc_tools.protoc failed with status {status} on {[p.name for p in protos]}")
    try:
        os.rename(scratch, target)
    except OSError:  # another process won the race
        shutil.rmtree(scratch, ignore_errors=True)
    return target


class FaultServer:
    """A gRPC server on 127.0.0.1 (a free port) with switchable faults.

    Use as a context manager, or ``start()`` / ``stop()``. ``address`` is
    ``"127.0.0.1:<port>"``, usable as a channel target.
    """

    def __init__(self, *, mode: str = "healthy", delay: float = 2.0, secure: bool = False) -> None:
        self.mode = mode
        self.delay = delay
        self.secure = secure
        self.pushback_ms: int | None = None  # sent as grpc-retry-pushback-ms with injected errors
        self.calls: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        with self._count_lock:
            return sum(self.calls.values())

    def start(self) -> FaultServer:
        pb = stubs()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb.shield_pb2_grpc.add_ShieldServiceServicer_to_server(_Shield(self), server)
        pb.edge_pb2_grpc.add_EdgeAgentServiceServicer_to_server(_Edge(self), server)
        if self.secure:  # local credentials: a secure channel without certificates, loopback only
            credentials = grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        else:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5.0)
            self._server = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what every handler does first ------------------------------------------

    def _enter(self, method: str, context: grpc.ServicerContext, streaming: bool,
               requests: Iterator[Any] | None = None) -> None:
        with self._count_lock:
            self.calls[method] += 1
        mode = self.mode
        if requests is not None and mode in ("unavailable", "invalid"):
            # Read the whole request stream first: a status sent while the client
            # is still writing makes grpc.aio report INTERNAL instead of our code.
            for _ in requests:
                pass
        if self.pushback_ms is not None and mode in ("unavailable", "abort_mid_stream"):
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(self.pushback_ms)),))
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "fault injected: unavailable")
        if mode == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fault injected: invalid argument")
        if mode == "slow":
            done = threading.Event()
            context.add_callback(done.set)  # the client's deadline or cancellation ends the wait
            done.wait(self.delay)
        if mode == "abort_mid_stream" and not streaming:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fault injected: aborted")


class _Shield:
    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner

    def AnalyzeSecurityEvent(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.owner._enter("AnalyzeSecurityEvent", context, streaming=False)
        pb = stubs().shield_pb2
        return pb.SecurityVerdict(event_id=request.event_id, allowed="attack" not in request.payload, reason="ok")


class _Edge:
    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner

    def GetResourceUsage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.owner._enter("GetResourceUsage", context, streaming=False)
        return stubs().edge_pb2.ResourceUsage(agent_id=request.agent_id, cpu=0.5, memory_mb=512.0)

    def WatchResourceUsage(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.owner._enter("WatchResourceUsage", context, streaming=True)
        pb = stubs().edge_pb2
        for index in range(3):
            if index == 1 and self.owner.mode == "abort_mid_stream":
                context.abort(grpc.StatusCode.UNAVAILABLE, "fault injected: aborted mid-stream")
            yield pb.ResourceUsage(agent_id=request.agent_id, cpu=index / 10, memory_mb=100.0 * index)

    def ReportUsage(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        self.owner._enter("ReportUsage", context, streaming=True, requests=request_iterator)
        samples = []
        for sample in request_iterator:
            samples.append(sample.cpu)
            if self.owner.mode == "abort_mid_stream":
                context.abort(grpc.StatusCode.UNAVAILABLE, "fault injected: aborted mid-stream")
        mean = sum(samples) / len(samples) if samples else 0.0
        return stubs().edge_pb2.UsageSummary(samples=len(samples), mean_cpu=mean)

    def StreamInference(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        self.owner._enter("StreamInference", context, streaming=True, requests=request_iterator)
        pb = stubs().edge_pb2
        for index, request in enumerate(request_iterator):
            if index == 1 and self.owner.mode == "abort_mid_stream":
                context.abort(grpc.StatusCode.UNAVAILABLE, "fault injected: aborted mid-stream")
            yield pb.InferenceChunk(request_id=request.request_id, text=request.prompt.upper(), index=index)


# -- fixtures (named apart from their functions, so importing them shadows nothing) ----


@pytest.fixture(scope="module", name="pb")
def pb_fixture() -> SimpleNamespace:
    return stubs()


@pytest.fixture(scope="module", name="module_server")
def module_server_fixture() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture(name="server")
def server_fixture(module_server: FaultServer) -> FaultServer:
    module_server.mode = "healthy"
    module_server.delay = 2.0
    module_server.calls.clear()
    return module_server
