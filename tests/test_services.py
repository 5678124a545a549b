"""The service plugins (sentinel, shield, edge_agent, db) against the demo's simulated services.

The plugins are found through their entry points, as users install them
(``pip install -e plugins``); the simulated services are the demo's own, on
loopback, held in one fault phase at a time. The demo itself is tests/test_demo.py's.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, registry
from otel_cb.plugin import Call, hookimpl, select_breaker

pytest.importorskip("otel_cb_services", reason="the service plugins are not installed (pip install -e plugins)")

from otel_cb_services.clients import EdgeAgentClient, SentinelClient, ShieldClient, ShieldUnavailableError
from otel_cb_services.demo.faults import FaultScript, Phase
from otel_cb_services.demo.servers import Services, start_services
from otel_cb_services.protos import edge_pb2, shield_pb2

from .postgres import postgres_cluster, postgres_dsn  # noqa: F401  (fixtures)

BREAKERS = ("sentinel_client", "shield_client", "edge_agent_client", "database_pool")
# No background health checks: each test runs them when it says so.
FAST = {"circuit_breakers": {name: {"open_timeout": "200ms", "health_check_interval": None} for name in BREAKERS}}
BIN = Path(sys.executable).parent


async def attached(breaker: CircuitBreaker) -> bool:
    """The gRPC default check is attached once its first Check answered, off the caller's thread."""
    for _ in range(250):
        if breaker.health_check is not None:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    running = start_services(FaultScript([Phase("healthy", 3600)]))
    monkeypatch.setenv("SENTINEL_URL", running.sentinel_url)
    monkeypatch.setenv("SHIELD_TARGET", running.shield_target)
    monkeypatch.setenv("EDGE_AGENT_TARGET", running.edge_agent_target)
    monkeypatch.delenv("OTEL_CB_DISABLED", raising=False)
    yield running
    otel_cb.uninstrument()
    running.close()


def test_the_committed_grpc_stubs_match_the_protos() -> None:
    script = Path(__file__).resolve().parent.parent / "plugins" / "generate_protos.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_four_plugins_are_discovered_through_their_entry_points() -> None:
    result = subprocess.run([str(BIN / "otel-cb"), "plugins"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    for name in ("sentinel", "shield", "edge_agent", "db"):
        assert rows[name][1:] == ["otel-cb-services", "0.1.0", "loaded"], result.stdout


def test_each_plugin_configures_its_breaker_and_a_user_section_overrides_it(services: Services) -> None:
    otel_cb.instrument({"circuit_breakers": {"sentinel_client": {"open_timeout": "2s"}}})
    sentinel = registry.get("sentinel_client")
    assert sentinel is not None
    config = sentinel.config
    assert (config.failure_threshold, config.failure_rate_threshold, config.minimum_calls, config.window_size,
            config.open_timeout) == (3, 0.3, 5, 30.0, 2.0)
    shield = registry.get("shield_client")
    assert shield is not None and shield.config == CircuitBreakerConfig.preset("aggressive")
    edge = registry.get("edge_agent_client")
    assert edge is not None
    assert (edge.config.failure_threshold, edge.config.failure_rate_threshold, edge.config.open_timeout,
            edge.config.success_threshold) == (2, 0.2, 5.0, 5)
    database = registry.get("database_pool")
    assert database is not None and database.config == CircuitBreakerConfig.preset("database")


def test_a_plugin_can_be_disabled_by_name(services: Services) -> None:
    otel_cb.instrument({}, disabled={"sentinel"})
    assert registry.get("sentinel_client") is None
    routed = select_breaker(Call(kind="http", target=services.sentinel_url))
    assert routed is not None and routed.name != "sentinel_client"
    assert registry.get("shield_client") is not None


def test_sentinel_serves_the_last_good_alerts_while_open_and_never_replays_analyze(services: Services) -> None:
    otel_cb.instrument(FAST)

    async def scenario() -> None:
        client = SentinelClient()
        try:
            good = await client.fetch_alerts(limit=3)
            assert not good.stale and len(good.alerts) == 3
            assert client.circuit_breaker.name == "sentinel_client"
            services.script.hold("outage")
            for _ in range(3):
                with pytest.raises(httpx.HTTPStatusError):
                    await client.fetch_alerts(limit=3)
            assert client.circuit_state is CircuitState.OPEN and not client.is_healthy
            served = services.sentinel_requests
            stale = await client.fetch_alerts(limit=3)
            assert stale.stale and stale.alerts == good.alerts
            with pytest.raises(CircuitOpenError):
                await client.analyze(good.alerts[0])
            assert services.sentinel_requests == served  # neither reached Sentinel
            await asyncio.sleep(0.25)  # past the open timeout: still no user probe while /healthz fails
            assert await client.circuit_breaker.check_health_async() is False
            assert (await client.fetch_alerts(limit=3)).stale
            services.script.hold("healthy")
            assert await client.circuit_breaker.check_health_async() is True
            assert await client.circuit_breaker.check_health_async() is True  # healthy_threshold
            assert client.circuit_state is CircuitState.HALF_OPEN
            assert services.sentinel_requests == served  # /healthz is not a user request
            for _ in range(3):  # the default preset's 3 probe successes
                assert not (await client.fetch_alerts(limit=3)).stale
            assert client.is_healthy
        finally:
            await client.aclose()

    asyncio.run(scenario())


class FakeVerdictPlugin:
    """A plugin that would let anything through: the shield plugin must win over it."""

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
        request = call.request
        event_id = getattr(request, "event_id", "")
        return shield_pb2.SecurityVerdict(event_id=event_id, allowed=True, reason="made up")


def test_shield_fails_closed_even_when_another_plugin_offers_a_verdict(services: Services) -> None:
    otel_cb.instrument(FAST, plugins=[FakeVerdictPlugin()])

    async def scenario() -> None:
        client = ShieldClient()
        try:
            verdict = await client.analyze_security_event("e1", "hello")
            assert verdict.allowed and verdict.reason == "clean"
            services.script.hold("outage")
            for _ in range(3):
                with pytest.raises(ShieldUnavailableError, match="NOT scanned"):
                    await client.analyze_security_event("e2", "hello")
            assert client.circuit_state is CircuitState.OPEN
            with pytest.raises(ShieldUnavailableError, match="NOT scanned") as info:
                await client.analyze_security_event("e3", "hello")
            assert isinstance(info.value.__cause__, CircuitOpenError)
            assert info.value.scanned is False
            breaker = client.circuit_breaker
            assert await attached(breaker)  # Shield serves grpc.health.v1.Health
            assert await breaker.check_health_async() is False  # NOT_SERVING in the outage
            services.script.hold("healthy")
            assert await breaker.check_health_async() is True
            # Served to the client as a refusal, never counted as a successful fallback.
            fallbacks = client.circuit_breaker.snapshot().fallbacks
            assert fallbacks["success"] == 0 and fallbacks["refused"] >= 1
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_edge_agent_protects_each_inference_stream(services: Services) -> None:
    otel_cb.instrument(FAST)

    async def requests() -> AsyncIterator[edge_pb2.InferenceRequest]:
        for index in range(2):
            yield edge_pb2.InferenceRequest(request_id=f"r{index}", prompt="disk full")

    async def scenario() -> None:
        client = EdgeAgentClient()
        try:
            chunks = [chunk async for chunk in client.stream_inference(requests())]
            assert [chunk.index for chunk in chunks] == [0, 1]
            assert client.circuit_breaker.name == "edge_agent_client"
            services.script.hold("outage")
            for _ in range(2):  # two consecutive failed streams open it
                with pytest.raises(Exception):  # noqa: B017 - grpc's AioRpcError
                    [chunk async for chunk in client.stream_inference(requests())]
            assert client.circuit_state is CircuitState.OPEN
            with pytest.raises(CircuitOpenError):
                [chunk async for chunk in client.stream_inference(requests())]
            breaker = client.circuit_breaker
            assert await attached(breaker)  # EdgeAgent serves grpc.health.v1.Health
            assert await breaker.check_health_async() is False
            services.script.hold("healthy")
            assert await breaker.check_health_async() is True
            assert await breaker.check_health_async() is True
            assert client.circuit_state is CircuitState.HALF_OPEN
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_db_routes_the_database_of_database_url(services: Services, postgres_dsn: str,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncpg

    monkeypatch.setenv("DATABASE_URL", postgres_dsn)
    otel_cb.instrument({})

    async def query() -> int:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            return int(await connection.fetchval("SELECT 41 + 1"))
        finally:
            await connection.close()

    assert asyncio.run(query()) == 42
    database = registry.get("database_pool")
    assert database is not None
    assert database.snapshot().calls["success"] >= 2  # connect and the query
    assert database.health_check is not None and database.check_health() is True  # SELECT 1
