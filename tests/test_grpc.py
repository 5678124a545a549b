"""The gRPC interceptors, by hand, against a real gRPC server on loopback.

Every call kind, sync and aio: trip, reject without the server seeing the
call, probe after the (fake) open timeout, close. Then the outcomes that are
specific to gRPC: status codes, deadlines, streams aborted, cancelled or
abandoned mid-way, futures and ``with_call``, a stopped server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import time
from typing import Any

import grpc
import grpc.aio
import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState
from otel_cb.integrations.grpc import (
    DEFAULT_FAILURE_CODES,
    AioCircuitBreakerInterceptor,
    AioGrpcCircuitOpenError,
    CircuitBreakerInterceptor,
    GrpcCircuitOpenError,
    aio_interceptors,
    clean_target,
    parse_failure_codes,
    validate_settings,
)
from otel_cb.plugin import Call
from tests.conftest import FakeClock
from tests.grpc_server import FaultServer, module_server_fixture, pb_fixture, server_fixture  # noqa: F401

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
SERVER_METHOD = {
    "unary_unary": "GetResourceUsage",
    "unary_stream": "WatchResourceUsage",
    "stream_unary": "ReportUsage",
    "stream_stream": "StreamInference",
}
CONFIG = CircuitBreakerConfig(failure_threshold=2, open_timeout=30.0, success_threshold=1,
                              half_open_max_calls=1, slow_call_duration=None)


def eventually(condition: Any) -> bool:
    """Poll ``condition`` for up to 5 s: grpc reports cancellations and futures on its own thread."""
    for _ in range(500):
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def breaker(clock: FakeClock, name: str = "edge", **changes: Any) -> CircuitBreaker:
    return CircuitBreaker(name, CONFIG.replace(**changes) if changes else CONFIG, clock=clock)


# -- one call of each kind -------------------------------------------------------------


def sync_call(pb: Any, channel: grpc.Channel, kind: str, timeout: float = 5.0) -> Any:
    edge = pb.edge_pb2
    stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
    if kind == "unary_unary":
        return stub.GetResourceUsage(edge.ResourceUsageRequest(agent_id="a"), timeout=timeout)
    if kind == "unary_stream":
        return list(stub.WatchResourceUsage(edge.ResourceUsageRequest(agent_id="a"), timeout=timeout))
    if kind == "stream_unary":
        return stub.ReportUsage(iter([edge.UsageSample(cpu=1.0), edge.UsageSample(cpu=3.0)]), timeout=timeout)
    requests = [edge.InferenceRequest(request_id=str(i), prompt="hi") for i in range(3)]
    return list(stub.StreamInference(iter(requests), timeout=timeout))


async def aio_call(pb: Any, channel: grpc.aio.Channel, kind: str, timeout: float = 5.0) -> Any:
    edge = pb.edge_pb2
    stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
    if kind == "unary_unary":
        return await stub.GetResourceUsage(edge.ResourceUsageRequest(agent_id="a"), timeout=timeout)
    if kind == "unary_stream":
        return [r async for r in stub.WatchResourceUsage(edge.ResourceUsageRequest(agent_id="a"), timeout=timeout)]
    if kind == "stream_unary":
        return await stub.ReportUsage(iter([edge.UsageSample(cpu=1.0), edge.UsageSample(cpu=3.0)]),
                                      timeout=timeout)
    requests = [edge.InferenceRequest(request_id=str(i), prompt="hi") for i in range(3)]
    return [r async for r in stub.StreamInference(iter(requests), timeout=timeout)]


def check_rejection(error: BaseException, name: str, aio: bool) -> None:
    assert isinstance(error, CircuitOpenError)
    assert isinstance(error, grpc.RpcError)
    assert isinstance(error, AioGrpcCircuitOpenError if aio else GrpcCircuitOpenError)
    if aio:
        assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert repr(name) in error.details()
    assert error.name == name


# -- the life cycle, every kind, sync and aio --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sync_trip_reject_probe_close(pb: Any, server: FaultServer, clock: FakeClock, kind: str) -> None:
    edge = breaker(clock)
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(edge))
    with channel:
        assert sync_call(pb, channel, kind)
        server.mode = "unavailable"
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as failed:
                sync_call(pb, channel, kind)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not isinstance(failed.value, CircuitOpenError)
        assert edge.state is CircuitState.OPEN
        seen = server.calls[SERVER_METHOD[kind]]

        with pytest.raises(grpc.RpcError) as rejected:
            sync_call(pb, channel, kind)
        check_rejection(rejected.value, "edge", aio=False)
        assert server.calls[SERVER_METHOD[kind]] == seen  # never left the client

        clock.advance(30.0)
        server.mode = "healthy"
        assert sync_call(pb, channel, kind)  # the probe
        assert edge.state is CircuitState.CLOSED
    assert edge.snapshot().calls == {"success": 2, "failure": 2, "ignored": 0, "rejected": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_aio_trip_reject_probe_close(pb: Any, server: FaultServer, clock: FakeClock, kind: str) -> None:
    edge = breaker(clock)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(edge)) as channel:
            assert await aio_call(pb, channel, kind)
            server.mode = "unavailable"
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await aio_call(pb, channel, kind)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                assert not isinstance(failed.value, CircuitOpenError)
            assert edge.state is CircuitState.OPEN
            seen = server.calls[SERVER_METHOD[kind]]

            with pytest.raises(grpc.aio.AioRpcError) as rejected:
                await aio_call(pb, channel, kind)
            check_rejection(rejected.value, "edge", aio=True)
            assert server.calls[SERVER_METHOD[kind]] == seen

            clock.advance(30.0)
            server.mode = "healthy"
            assert await aio_call(pb, channel, kind)
            assert edge.state is CircuitState.CLOSED

    asyncio.run(scenario())
    assert edge.snapshot().calls == {"success": 2, "failure": 2, "ignored": 0, "rejected": 1}


# -- what counts ------------------------------------------------------------------------


# Well below the slow server's 2 s, and long enough that the requests of a stream are sent
# before it passes: a deadline that expires while grpc.aio's interceptor machinery is still
# writing them ends the call INTERNAL ("Failed execute_batch"), not DEADLINE_EXCEEDED (seen
# once in a CI run on a loaded 2-core machine with 0.05 s).
DEADLINE = 0.5


@pytest.mark.parametrize("kind", ["unary_unary", "stream_stream"])
def test_deadline_exceeded_is_a_failure(pb: Any, server: FaultServer, clock: FakeClock, kind: str) -> None:
    sync_breaker, aio_breaker = breaker(clock, "sync"), breaker(clock, "aio")
    server.mode = "slow"
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(sync_breaker))
    with channel, pytest.raises(grpc.RpcError) as failed:
        sync_call(pb, channel, kind, timeout=DEADLINE)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(aio_breaker)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await aio_call(pb, channel, kind, timeout=DEADLINE)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(scenario())
    assert sync_breaker.snapshot().calls["failure"] == 1
    assert aio_breaker.snapshot().calls["failure"] == 1


@pytest.mark.parametrize("kind", ["unary_stream", "stream_unary", "stream_stream"])
def test_abort_mid_stream_is_a_failure(pb: Any, server: FaultServer, clock: FakeClock, kind: str) -> None:
    sync_breaker, aio_breaker = breaker(clock, "sync"), breaker(clock, "aio")
    server.mode = "abort_mid_stream"
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(sync_breaker))
    with channel, pytest.raises(grpc.RpcError):
        sync_call(pb, channel, kind)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(aio_breaker)) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await aio_call(pb, channel, kind)

    asyncio.run(scenario())
    assert sync_breaker.snapshot().calls["failure"] == 1
    assert aio_breaker.snapshot().calls["failure"] == 1


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream"])
def test_retry_pushback_lengthens_the_open_timeout(pb: Any, server: FaultServer, clock: FakeClock,
                                                   kind: str) -> None:
    sync_breaker, aio_breaker = breaker(clock, "sync"), breaker(clock, "aio")
    server.mode = "unavailable"
    server.pushback_ms = 120_000  # more than the 30 s open timeout
    with grpc.intercept_channel(grpc.insecure_channel(server.address),
                                CircuitBreakerInterceptor(sync_breaker)) as channel:
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                sync_call(pb, channel, kind)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(aio_breaker)) as channel:
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError):
                    await aio_call(pb, channel, kind)

    asyncio.run(scenario())
    for edge in (sync_breaker, aio_breaker):
        assert edge.state is CircuitState.OPEN
        assert edge.snapshot().retry_after == pytest.approx(120.0)


def test_client_errors_are_not_failures_unless_configured(pb: Any, server: FaultServer, clock: FakeClock) -> None:
    default, strict = breaker(clock, "default"), breaker(clock, "strict")
    server.mode = "invalid"
    for edge, codes in ((default, None), (strict, ["INVALID_ARGUMENT"])):
        interceptor = CircuitBreakerInterceptor(edge, failure_codes=codes)
        with grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor) as channel:
            with pytest.raises(grpc.RpcError) as failed:
                sync_call(pb, channel, "unary_unary")
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert default.snapshot().calls["failure"] == 0
    assert default.snapshot().calls["success"] == 1  # the server answered
    assert strict.snapshot().calls["failure"] == 1


def test_a_stopped_server_trips_the_breaker(pb: Any, clock: FakeClock) -> None:
    edge = breaker(clock)
    stopped = FaultServer().start()
    stopped.stop()
    with grpc.intercept_channel(grpc.insecure_channel(stopped.address), CircuitBreakerInterceptor(edge)) as channel:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as failed:
                sync_call(pb, channel, "unary_unary")
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(CircuitOpenError) as rejected:
            sync_call(pb, channel, "unary_unary")
    check_rejection(rejected.value, "edge", aio=False)

    aio_breaker = breaker(clock, "aio")

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(stopped.address, interceptors=aio_interceptors(aio_breaker)) as channel:
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await aio_call(pb, channel, "stream_stream")
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(CircuitOpenError) as rejected:
                await aio_call(pb, channel, "stream_stream")
            check_rejection(rejected.value, "aio", aio=True)

    asyncio.run(scenario())


# -- streams that end without an answer, and the half-open probe slot -------------------


def half_open(clock: FakeClock) -> CircuitBreaker:
    """A breaker whose open timeout has elapsed: its next call is the one probe allowed."""
    edge = breaker(clock)
    for _ in range(2):
        edge.acquire().record_failure()
    clock.advance(30.0)
    return edge


def test_sync_cancelled_stream_hands_the_probe_slot_back(pb: Any, server: FaultServer, clock: FakeClock) -> None:
    edge = half_open(clock)
    with grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(edge)) as channel:
        stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
        stream = stub.WatchResourceUsage(pb.edge_pb2.ResourceUsageRequest(agent_id="a"))
        next(stream)
        assert edge.snapshot().half_open_calls == 1
        stream.cancel()
        with pytest.raises(grpc.RpcError):
            list(stream)
        assert eventually(lambda: edge.snapshot().half_open_calls == 0)
        assert edge.state is CircuitState.HALF_OPEN  # no verdict
        assert sync_call(pb, channel, "unary_stream")  # the slot is free again
    assert edge.state is CircuitState.CLOSED


def test_sync_abandoned_stream_hands_the_probe_slot_back(pb: Any, server: FaultServer, clock: FakeClock) -> None:
    edge = half_open(clock)
    with grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(edge)) as channel:
        stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
        requests = iter([pb.edge_pb2.InferenceRequest(request_id=str(i)) for i in range(5)])
        stream = stub.StreamInference(requests)
        next(stream)
        del stream
        gc.collect()
        assert eventually(lambda: edge.snapshot().half_open_calls == 0)
        assert edge.state is CircuitState.HALF_OPEN


def test_aio_cancelled_and_abandoned_streams_hand_the_probe_slot_back(
        pb: Any, server: FaultServer, clock: FakeClock) -> None:
    edge = half_open(clock)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(edge)) as channel:
            stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
            call = stub.WatchResourceUsage(pb.edge_pb2.ResourceUsageRequest(agent_id="a"))
            await call.read()
            assert edge.snapshot().half_open_calls == 1
            call.cancel()
            for _ in range(100):
                await asyncio.sleep(0)
                if edge.snapshot().half_open_calls == 0:
                    break
            assert edge.snapshot().half_open_calls == 0
            assert edge.state is CircuitState.HALF_OPEN

            bidi = stub.StreamInference(iter([pb.edge_pb2.InferenceRequest(request_id="1", prompt="x")] * 5))
            assert (await bidi.read()).text == "X"
            assert edge.snapshot().half_open_calls == 1
        # Left unfinished: closing the channel cancels it (grpc.aio keeps
        # unfinished calls alive, so collection alone would not).
        assert edge.snapshot().half_open_calls == 0
        assert edge.state is CircuitState.HALF_OPEN

    asyncio.run(scenario())


def test_aio_cancelled_unary_call_is_no_verdict(pb: Any, server: FaultServer, clock: FakeClock) -> None:
    edge = half_open(clock)
    server.mode = "slow"
    server.delay = 1.0

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(edge)) as channel:
            stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
            call = stub.GetResourceUsage(pb.edge_pb2.ResourceUsageRequest(agent_id="a"))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    try:
        asyncio.run(scenario())
    finally:
        server.delay = 2.0
    assert edge.snapshot().half_open_calls == 0
    assert edge.snapshot().calls["failure"] == 2  # those that opened it; the cancelled call is not one
    assert edge.state is CircuitState.HALF_OPEN


# -- futures and with_call -------------------------------------------------------------------


def test_futures_and_with_call(pb: Any, server: FaultServer, clock: FakeClock) -> None:
    edge = breaker(clock)
    request = pb.edge_pb2.ResourceUsageRequest(agent_id="a")
    with grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(edge)) as channel:
        stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
        response, call = stub.GetResourceUsage.with_call(request)
        assert response.agent_id == "a" and call.code() == grpc.StatusCode.OK
        assert stub.GetResourceUsage.future(request).result(timeout=5).agent_id == "a"
        summary = stub.ReportUsage.future(iter([pb.edge_pb2.UsageSample(cpu=2.0)])).result(timeout=5)
        assert summary.samples == 1
        server.mode = "unavailable"
        for _ in range(2):
            future = stub.GetResourceUsage.future(request)
            assert future.exception(timeout=5).code() == grpc.StatusCode.UNAVAILABLE
        assert edge.state is CircuitState.OPEN

        rejected = stub.GetResourceUsage.future(request)  # a failed future, not an exception
        assert rejected.done()
        check_rejection(rejected.exception(), "edge", aio=False)
        with pytest.raises(CircuitOpenError):
            rejected.result()
        with pytest.raises(CircuitOpenError):
            stub.GetResourceUsage.with_call(request)
    assert eventually(lambda: edge.snapshot().calls["success"] == 3)
    assert edge.snapshot().calls == {"success": 3, "failure": 2, "ignored": 0, "rejected": 2}


# -- routing by selector, arguments, helpers ---------------------------------------------------


def test_a_selector_routes_by_service_and_method(pb: Any, server: FaultServer, clock: FakeClock) -> None:
    shield = breaker(clock, "shield")
    seen: list[Call] = []

    def select(call: Call) -> CircuitBreaker | None:
        seen.append(call)
        return shield if call.service == "llm.shield.v1.ShieldService" else None

    interceptor = CircuitBreakerInterceptor(selector=select, target=f"dns:///{server.address}")
    with grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor) as channel:
        verdict = pb.shield_pb2_grpc.ShieldServiceStub(channel).AnalyzeSecurityEvent(
            pb.shield_pb2.SecurityEvent(event_id="e1", payload="login"))
        assert verdict.allowed
        assert sync_call(pb, channel, "unary_unary")
    assert [c.method for c in seen] == ["/llm.shield.v1.ShieldService/AnalyzeSecurityEvent",
                                        "/llm.edge.v1.EdgeAgentService/GetResourceUsage"]
    assert seen[0].kind == "grpc" and seen[0].target == server.address
    assert seen[0].request.event_id == "e1"
    assert shield.snapshot().calls["success"] == 1  # the edge call went unprotected


def test_unprotected_calls_pass_through_untouched(pb: Any, server: FaultServer) -> None:
    interceptor = CircuitBreakerInterceptor()  # not instrumented: the router protects nothing
    with grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor) as channel:
        for kind in KINDS:
            assert sync_call(pb, channel, kind)
        server.mode = "unavailable"
        with pytest.raises(grpc.RpcError) as failed:
            sync_call(pb, channel, "unary_unary")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not isinstance(failed.value, CircuitOpenError)


def test_a_raising_selector_is_contained(pb: Any, server: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    def select(call: Call) -> CircuitBreaker | None:
        raise RuntimeError("broken selector")

    caplog.set_level(logging.DEBUG, logger="otel_cb")
    interceptor = CircuitBreakerInterceptor(selector=select)
    with grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor) as channel:
        for _ in range(3):
            assert sync_call(pb, channel, "unary_unary")  # unprotected, but it works
    records = [r for r in caplog.records if "broken selector" in r.getMessage()]
    assert len(records) == 3
    assert [r.levelname for r in records].count("WARNING") <= 1  # then DEBUG: a broken selector cannot flood logs


def test_bad_arguments_name_the_argument(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="breaker: 'shield'"):
        CircuitBreakerInterceptor("shield")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="selector"):
        CircuitBreakerInterceptor(breaker(clock), selector=lambda call: None)
    with pytest.raises(ValueError, match=r"failure_codes: 'UNAVAILBLE' is not allowed; use a list of gRPC"):
        aio_interceptors(breaker(clock), failure_codes=["UNAVAILBLE"])


def test_failure_codes_setting() -> None:
    assert parse_failure_codes("x", ["unavailable", grpc.StatusCode.INTERNAL]) == {
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}
    assert grpc.StatusCode.NOT_FOUND not in DEFAULT_FAILURE_CODES
    validate_settings("shield", {"failure_codes": ["DATA_LOSS"], "preset": "llm_service"})
    with pytest.raises(ValueError, match=r"circuit_breakers.shield.failure_codes: 'UNAVAILABLE' is not allowed"):
        validate_settings("shield", {"failure_codes": "UNAVAILABLE"})
    with pytest.raises(ValueError, match=r"circuit_breakers.shield.failure_codes: 503 is not allowed"):
        validate_settings("shield", {"failure_codes": [503]})


def test_clean_target() -> None:
    assert clean_target("shield:50051") == "shield:50051"
    assert clean_target("dns:///shield:50051") == "shield:50051"
    assert clean_target("dns://8.8.8.8/shield:50051") == "shield:50051"
    assert clean_target(b"ipv4:127.0.0.1:50051") == "127.0.0.1:50051"
    assert clean_target("user:secret@shield:50051") == "shield:50051"
    assert clean_target("unix:///run/edge.sock") == "unix:///run/edge.sock"


def test_open_errors_pickle_and_read_like_circuit_open_errors() -> None:
    for cls in (GrpcCircuitOpenError, AioGrpcCircuitOpenError):
        error = cls("shield", CircuitState.OPEN, 12.5)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls
        assert (copy.name, copy.state, copy.retry_after) == ("shield", CircuitState.OPEN, 12.5)
        assert copy.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry after 12.500s" in str(error)


def test_aio_interceptors_cover_each_kind_once(clock: FakeClock) -> None:
    interceptors = aio_interceptors(breaker(clock))
    kinds = (grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
             grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor)
    assert all(isinstance(i, AioCircuitBreakerInterceptor) for i in interceptors)
    assert [sum(isinstance(i, kind) for i in interceptors) for kind in kinds] == [1, 1, 1, 1]
