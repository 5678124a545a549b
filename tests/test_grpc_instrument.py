"""The gRPC integration under ``otel_cb.instrument()``: auto-patched channels, routing, config, hooks.

Only the ``grpc`` plugin is enabled here, so the result does not depend on
which other plugins are installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, ClassVar

import grpc
import grpc._channel
import grpc.aio
import grpc.aio._channel
import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, _plugins, registry
from otel_cb.integrations.grpc import GrpcCircuitOpenError
from otel_cb.plugin import Call, Refusal, hookimpl
from tests.conftest import FakeClock
from tests.grpc_server import FaultServer, module_server_fixture, pb_fixture, server_fixture, stubs  # noqa: F401
from tests.test_grpc import KINDS, aio_call, sync_call

SHIELD = {
    "failure_threshold": 2,
    "success_threshold": 1,
    "half_open_max_calls": 1,
    "open_timeout": "30s",
    "slow_call_duration": None,
}


def others() -> set[str]:
    return {ep.name for ep in entry_points(group="otel_cb") if ep.name != "grpc"}


def config(**shield: Any) -> dict[str, Any]:
    return {
        "circuit_breakers": {
            "shield": {**SHIELD, "match": {"grpc": ["llm.shield.v1.ShieldService"]}, **shield},
        },
        "auto_breakers": {"enabled": True, "max": 100},
    }


@pytest.fixture
def shield(clock: FakeClock) -> Iterator[CircuitBreaker]:
    """The configured breaker, made beforehand with a fake clock (instrument() keeps an existing one)."""
    breaker = CircuitBreaker("shield", CircuitBreakerConfig.from_dict(SHIELD), clock=clock)
    registry.add(breaker)
    yield breaker
    otel_cb.uninstrument()
    registry.remove("shield")


def analyze(pb: Any, channel: Any) -> Any:
    stub = pb.shield_pb2_grpc.ShieldServiceStub(channel)
    return stub.AnalyzeSecurityEvent(pb.shield_pb2.SecurityEvent(event_id="e", payload="login"), timeout=5)


def test_sync_channels_are_protected_and_routed(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                                 clock: FakeClock) -> None:
    otel_cb.instrument(config(), disabled=others())
    with grpc.insecure_channel(server.address) as channel:
        assert analyze(pb, channel).allowed
        for kind in KINDS:  # the edge service has no rule: an automatic breaker per target
            assert sync_call(pb, channel, kind)
        automatic = registry.get(f"grpc://{server.address}")
        assert automatic is not None and automatic.snapshot().calls["success"] == 4
        assert shield.snapshot().calls["success"] == 1

        server.mode = "unavailable"
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                analyze(pb, channel)
        assert shield.state is CircuitState.OPEN
        seen = server.total
        with pytest.raises(CircuitOpenError) as rejected:
            analyze(pb, channel)
        assert isinstance(rejected.value, GrpcCircuitOpenError) and rejected.value.name == "shield"
        assert server.total == seen
        assert automatic.state is CircuitState.CLOSED  # other destinations are unaffected

        clock.advance(30.0)
        server.mode = "healthy"
        assert analyze(pb, channel).allowed
        assert shield.state is CircuitState.CLOSED


def test_aio_channels_are_protected_and_routed(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                                clock: FakeClock) -> None:
    otel_cb.instrument(config(), disabled=others())

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb.shield_pb2_grpc.ShieldServiceStub(channel)
            event = pb.shield_pb2.SecurityEvent(event_id="e", payload="login")
            assert (await stub.AnalyzeSecurityEvent(event)).allowed
            for kind in KINDS:
                assert await aio_call(pb, channel, kind)
            server.mode = "unavailable"
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.AnalyzeSecurityEvent(event)
            seen = server.total
            with pytest.raises(grpc.aio.AioRpcError) as rejected:
                await stub.AnalyzeSecurityEvent(event)
            assert isinstance(rejected.value, CircuitOpenError)
            assert server.total == seen
            clock.advance(30.0)
            server.mode = "healthy"
            assert (await stub.AnalyzeSecurityEvent(event)).allowed

    asyncio.run(scenario())
    assert shield.state is CircuitState.CLOSED
    automatic = registry.get(f"grpc://{server.address}")
    assert automatic is not None and automatic.snapshot().calls["success"] == 4


@pytest.mark.parametrize("rule", ["/llm.shield.v1.ShieldService/AnalyzeSecurityEvent", "TARGET"])
def test_match_rules_by_method_and_by_target(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                             rule: str) -> None:
    rule = server.address if rule == "TARGET" else rule
    otel_cb.instrument(config(match={"grpc": [rule]}), disabled=others())
    with grpc.insecure_channel(server.address) as channel:
        assert analyze(pb, channel).allowed
        assert sync_call(pb, channel, "unary_unary")
    by_target = rule == server.address
    assert shield.snapshot().calls["success"] == (2 if by_target else 1)
    assert (registry.get(f"grpc://{server.address}") is None) == by_target


def test_secure_channels_are_protected(pb: Any, shield: CircuitBreaker) -> None:
    otel_cb.instrument(config(), disabled=others())
    shield.force_open()
    with FaultServer(secure=True) as server:
        with grpc.secure_channel(server.address, grpc.local_channel_credentials()) as channel:
            stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
            assert stub.GetResourceUsage(pb.edge_pb2.ResourceUsageRequest(agent_id="a"), timeout=5).agent_id == "a"
            with pytest.raises(CircuitOpenError):
                analyze(pb, channel)

        async def scenario() -> None:
            credentials = grpc.local_channel_credentials()
            async with grpc.aio.secure_channel(server.address, credentials) as channel:
                assert (await aio_call(pb, channel, "unary_unary")).agent_id == "a"
                with pytest.raises(CircuitOpenError):
                    await pb.shield_pb2_grpc.ShieldServiceStub(channel).AnalyzeSecurityEvent(
                        pb.shield_pb2.SecurityEvent(event_id="e"))

        asyncio.run(scenario())
        assert server.calls == {"GetResourceUsage": 2}
    automatic = registry.get(f"grpc://{server.address}")
    assert automatic is not None and automatic.snapshot().calls["success"] == 2


def test_calls_to_an_otlp_collector_are_not_protected(server: FaultServer, shield: CircuitBreaker) -> None:
    otel_cb.instrument(config(), disabled=others())
    with grpc.insecure_channel(server.address) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as failed:
            export(b"", timeout=5)  # our server does not implement it
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert registry.get(f"grpc://{server.address}") is None  # never routed, so no breaker


def test_failure_codes_from_the_config(pb: Any, server: FaultServer, shield: CircuitBreaker) -> None:
    otel_cb.instrument(config(failure_codes=["INVALID_ARGUMENT"]), disabled=others())
    server.mode = "invalid"
    with grpc.insecure_channel(server.address) as channel:
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                analyze(pb, channel)
    assert shield.state is CircuitState.OPEN


def test_bad_failure_codes_are_a_config_error(shield: CircuitBreaker) -> None:
    with pytest.raises(ValueError, match=r"failure_codes.*'UNAVAILBLE' is not allowed"):
        otel_cb.instrument(config(failure_codes=["UNAVAILBLE"]), disabled=others())


class ClassifyPlugin:
    """Counts INVALID_ARGUMENT as a failure; leaves every other outcome to the integration."""

    calls: ClassVar[list[tuple[Call, Any]]] = []

    @hookimpl
    def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
        ClassifyPlugin.calls.append((call, exception))
        if isinstance(exception, grpc.RpcError) and exception.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return "failure"
        return None


class _EntryPoint:
    """Stands in for an installed plugin's entry point."""

    dist = None

    def __init__(self, plugin: object) -> None:
        self.name = f"test_grpc_{type(plugin).__name__}"
        self.value = f"tests.test_grpc_instrument:{type(plugin).__name__}"
        self.plugin = plugin

    def load(self) -> object:
        return self.plugin


def install(monkeypatch: pytest.MonkeyPatch, plugin: object) -> None:
    found = _plugins._entry_points
    monkeypatch.setattr(_plugins, "_entry_points", lambda: [*found(), _EntryPoint(plugin)])


def test_the_classify_hook_decides_first(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, ClassifyPlugin())
    ClassifyPlugin.calls.clear()
    otel_cb.instrument(config(), disabled=others())
    with grpc.insecure_channel(server.address) as channel:
        assert analyze(pb, channel).allowed
        server.mode = "invalid"
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                analyze(pb, channel)
    assert shield.state is CircuitState.OPEN
    call, exception = ClassifyPlugin.calls[0]
    assert (call.kind, call.service, call.method) == (
        "grpc", "llm.shield.v1.ShieldService", "/llm.shield.v1.ShieldService/AnalyzeSecurityEvent")
    assert call.target == server.address and call.request.event_id == "e"
    assert exception is None


class FallbackPlugin:
    """Serves a cached usage report (unary) or a short stream of them; nothing for other methods."""

    errors: ClassVar[list[BaseException]] = []

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
        FallbackPlugin.errors.append(error)
        usage = stubs().edge_pb2.ResourceUsage(agent_id="cached")
        if call.method == "/llm.edge.v1.EdgeAgentService/GetResourceUsage":
            return usage
        if call.method == "/llm.edge.v1.EdgeAgentService/WatchResourceUsage":
            return [usage, usage]
        return None


def test_the_fallback_hook_serves_failed_and_rejected_calls(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FallbackPlugin())
    FallbackPlugin.errors.clear()
    otel_cb.instrument(config(match={"grpc": ["llm.edge.v1.EdgeAgentService"]}), disabled=others())
    request = pb.edge_pb2.ResourceUsageRequest(agent_id="a")
    server.mode = "unavailable"
    with grpc.insecure_channel(server.address) as channel:
        stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
        assert stub.GetResourceUsage(request).agent_id == "cached"  # failed, then served
        response, call = stub.GetResourceUsage.with_call(request)
        assert response.agent_id == "cached" and call.code() == grpc.StatusCode.OK
        assert shield.state is CircuitState.OPEN  # the failures still count
        seen = server.total
        assert stub.GetResourceUsage(request).agent_id == "cached"  # rejected, then served
        assert stub.GetResourceUsage.future(request).result().agent_id == "cached"
        assert [u.agent_id for u in stub.WatchResourceUsage(request)] == ["cached", "cached"]
        with pytest.raises(CircuitOpenError):  # no fallback for this method
            stub.ReportUsage(iter([pb.edge_pb2.UsageSample(cpu=1.0)]))
        assert server.total == seen
    assert isinstance(FallbackPlugin.errors[0], grpc.RpcError)
    assert not isinstance(FallbackPlugin.errors[0], CircuitOpenError)
    assert isinstance(FallbackPlugin.errors[2], GrpcCircuitOpenError)
    assert shield.snapshot().fallbacks["success"] == 5

    shield.reset()

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
            for _ in range(2):
                assert (await stub.GetResourceUsage(request)).agent_id == "cached"
            assert shield.state is CircuitState.OPEN
            assert (await stub.GetResourceUsage(request)).agent_id == "cached"
            assert [u.agent_id async for u in stub.WatchResourceUsage(request)] == ["cached", "cached"]
            watch = stub.WatchResourceUsage(request)
            assert (await watch.read()).agent_id == "cached"
            assert await watch.code() == grpc.StatusCode.OK
            with pytest.raises(CircuitOpenError):
                await stub.ReportUsage(iter([pb.edge_pb2.UsageSample(cpu=1.0)]))

    seen = server.total
    asyncio.run(scenario())
    assert server.total == seen + 2
    assert shield.snapshot().fallbacks["success"] == 10


def test_uninstrument_restores_grpc(pb: Any, server: FaultServer, shield: CircuitBreaker) -> None:
    originals = {kind: grpc._channel.Channel.__dict__[kind] for kind in KINDS}
    aio_init = grpc.aio._channel.Channel.__dict__["__init__"]
    otel_cb.instrument(config(), disabled=others())
    assert grpc._channel.Channel.__dict__["unary_unary"] is not originals["unary_unary"]
    assert grpc.aio._channel.Channel.__dict__["__init__"] is not aio_init
    kept = grpc.insecure_channel(server.address)  # a stub made while instrumented, used after
    kept_stub = pb.shield_pb2_grpc.ShieldServiceStub(kept)
    otel_cb.uninstrument()
    assert {kind: grpc._channel.Channel.__dict__[kind] for kind in KINDS} == originals
    assert grpc.aio._channel.Channel.__dict__["__init__"] is aio_init

    shield.force_open()
    with grpc.insecure_channel(server.address) as channel:
        assert analyze(pb, channel).allowed  # nothing protects it any more
    with kept:  # nor that stub: its interceptor stays, but the router answers None
        assert kept_stub.AnalyzeSecurityEvent(pb.shield_pb2.SecurityEvent(event_id="e"), timeout=5).allowed

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb.shield_pb2_grpc.ShieldServiceStub(channel)
            assert (await stub.AnalyzeSecurityEvent(pb.shield_pb2.SecurityEvent(event_id="e"))).allowed

    asyncio.run(scenario())


def test_hand_wired_and_automatic_do_not_count_twice(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                                     clock: FakeClock) -> None:
    from otel_cb.integrations.grpc import CircuitBreakerInterceptor

    own = CircuitBreaker("own", CircuitBreakerConfig(), clock=clock)
    otel_cb.instrument(config(), disabled=others())
    with grpc.intercept_channel(grpc.insecure_channel(server.address), CircuitBreakerInterceptor(own)) as channel:
        assert analyze(pb, channel).allowed
    assert own.snapshot().calls["success"] == 1
    assert shield.snapshot().calls["success"] == 0


class RefusingPlugin:
    """Fails closed for Shield calls: serves a refusal, as the shield service plugin does."""

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
        if call.service == "llm.shield.v1.ShieldService":
            return Refusal(stubs().shield_pb2.SecurityVerdict(event_id="e", allowed=False, reason="not scanned"))
        return None


def test_a_refusal_is_served_and_counted_refused(pb: Any, server: FaultServer, shield: CircuitBreaker,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, RefusingPlugin())
    otel_cb.instrument(config(), disabled=others())
    server.mode = "unavailable"
    with grpc.insecure_channel(server.address) as channel:
        for _ in range(3):  # two failures open it, then a rejection: each answered by the refusal
            assert analyze(pb, channel).reason == "not scanned"
    assert shield.state is CircuitState.OPEN

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb.shield_pb2_grpc.ShieldServiceStub(channel)
            verdict = await stub.AnalyzeSecurityEvent(pb.shield_pb2.SecurityEvent(event_id="e", payload="x"))
            assert verdict.reason == "not scanned"

    asyncio.run(scenario())
    assert shield.snapshot().fallbacks == {"success": 0, "failure": 0, "refused": 4}


def _sync_shapes(pb: Any, address: str) -> list[object]:
    """What a client sees of each call form on a failing server: types, codes, results."""
    event = pb.shield_pb2.SecurityEvent(event_id="e", payload="login")
    seen: list[object] = []
    with grpc.insecure_channel(address) as channel:
        method = pb.shield_pb2_grpc.ShieldServiceStub(channel).AnalyzeSecurityEvent
        seen.append(isinstance(method, grpc.UnaryUnaryMultiCallable))
        for call_form in (lambda: method(event, timeout=5), lambda: method.with_call(event, timeout=5)):
            with pytest.raises(grpc.RpcError) as raised:
                call_form()
            seen += [isinstance(raised.value, grpc.Call), raised.value.code(), raised.value.details()]
        future = method.future(event, timeout=5)
        seen += [isinstance(future, grpc.Future), isinstance(future, grpc.Call)]
        seen += [type(future.exception(timeout=5)).__mro__[-3:], future.code()]
    return seen


def _aio_shapes(pb: Any, address: str) -> list[object]:
    async def scenario() -> list[object]:
        event = pb.shield_pb2.SecurityEvent(event_id="e", payload="login")
        seen: list[object] = []
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb.shield_pb2_grpc.ShieldServiceStub(channel).AnalyzeSecurityEvent(event, timeout=5)
            seen += [isinstance(call, grpc.aio.UnaryUnaryCall), asyncio.iscoroutine(call)]
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            seen += [raised.value.code(), raised.value.details(), await call.code()]
        return seen

    return asyncio.run(scenario())


def test_call_forms_look_the_same_with_and_without_otel_cb(pb: Any, server: FaultServer) -> None:
    """Errors, codes, call and future objects of sync and aio calls, against the same failing server."""
    server.mode = "invalid"  # a status the breaker counts as a success: it stays closed throughout
    plain = (_sync_shapes(pb, server.address), _aio_shapes(pb, server.address))
    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 10}}, disabled=others())
    try:
        under = (_sync_shapes(pb, server.address), _aio_shapes(pb, server.address))
        breaker = registry.get(f"grpc://{server.address}")
        assert breaker is not None and breaker.snapshot().calls["success"] == 4
    finally:
        otel_cb.uninstrument()
    assert under == plain
