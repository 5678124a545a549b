"""The grpc integration's default health check (``grpc.health.v1.Health/Check``), against a real server.

The server serves the standard Health service (or not, or not for every
service); its counters show that checks are RPCs of their own, never user
calls, that they reach the server while the breaker is open, and that
nothing but the application's calls reaches it while the breaker is closed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitState, registry
from otel_cb.integrations import _grpc_health
from otel_cb.integrations.grpc import CircuitBreakerInterceptor
from tests.conftest import FakeClock
from tests.grpc_server import FaultServer, pb_fixture  # noqa: F401

from .tcp_proxy import TcpProxy
from .test_grpc import eventually, sync_call
from .test_grpc_instrument import others

CONFIG = CircuitBreakerConfig(failure_threshold=1, open_timeout=30.0, slow_call_duration=None,
                              health_check_interval=None, health_check_timeout=2.0)


@pytest.fixture
def health_server() -> Iterator[FaultServer]:
    with FaultServer(health=True) as running:
        yield running


def edge_call(pb: Any, target: str, breaker: CircuitBreaker) -> Any:
    interceptor = CircuitBreakerInterceptor(breaker, target=target)
    with grpc.intercept_channel(grpc.insecure_channel(target), interceptor) as channel:
        return sync_call(pb, channel, "unary_unary")


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        breaker.acquire().record("failure")
    assert breaker.state is CircuitState.OPEN


def test_the_standard_check_recovers_the_breaker_without_a_user_call(pb: Any, health_server: FaultServer,
                                                                       clock: FakeClock) -> None:
    breaker = CircuitBreaker("edge", CONFIG, clock=clock)
    assert edge_call(pb, health_server.address, breaker)
    assert edge_call(pb, health_server.address, breaker)
    assert health_server.health_checks == 0 and breaker.health_check is None  # closed: the application's calls only
    health_server.mode = "unavailable"
    with pytest.raises(grpc.RpcError):
        edge_call(pb, health_server.address, breaker)
    assert breaker.state is CircuitState.OPEN
    assert eventually(lambda: breaker.health_check is not None)  # looked for at the opening, attached on an answer
    calls, user_calls, checks = dict(breaker.snapshot().calls), health_server.total, health_server.health_checks
    assert checks == 1
    assert breaker.check_health() is False  # NOT_SERVING
    health_server.mode = "healthy"
    assert breaker.check_health() is True
    assert breaker.check_health() is True
    assert breaker.state is CircuitState.HALF_OPEN
    assert health_server.health_checks == checks + 3  # each check reached the server through the open breaker
    assert health_server.total == user_calls  # and none was a user call
    assert dict(breaker.snapshot().calls) == calls


def test_a_server_out_of_reach_is_asked_again_while_open_and_at_the_next_opening(
        pb: Any, health_server: FaultServer, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    host, port = health_server.address.rsplit(":", 1)
    config = dataclasses.replace(CONFIG, health_check_timeout=0.5, health_check_interval=0.2)
    with TcpProxy(host, int(port)) as proxy:
        target = f"127.0.0.1:{proxy.port}"
        breaker = CircuitBreaker("edge-unreachable", config, clock=clock)
        assert edge_call(pb, target, breaker)
        proxy.set_mode("blackhole")  # a check can no longer reach the server
        with caplog.at_level(logging.WARNING, logger="otel_cb"):
            trip(breaker)
            assert eventually(lambda: any("was not reachable" in r.getMessage() for r in caplog.records))
        clock.advance(30.1)
        assert breaker.state is CircuitState.HALF_OPEN  # timed probing meanwhile
        assert eventually(lambda: breaker not in _grpc_health._looking)  # the search ends with the open stay
        assert breaker.health_check is None and health_server.health_checks == 0
        breaker.reset()
        proxy.set_mode("forward")
        proxy.cut()
        trip(breaker)
        assert eventually(lambda: breaker.health_check is not None)  # asked again, until the server answered
        assert health_server.health_checks >= 1
        breaker.reset()  # closed: the health monitor leaves it alone


@pytest.mark.parametrize("health", [False, {"llm.shield.v1.ShieldService"}], ids=["unimplemented", "not_found"])
def test_no_health_service_means_no_check_said_once(pb: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
                                                     health: bool | set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    asks: list[str] = []
    ask = _grpc_health.ask_health
    monkeypatch.setattr(_grpc_health, "ask_health", lambda *args: asks.append(args[0]) or ask(*args))
    breaker = CircuitBreaker(f"edge-plain-{bool(health)}", CONFIG, clock=clock)  # log_once: one name each
    with FaultServer(health=health) as server, caplog.at_level(logging.WARNING, logger="otel_cb"):
        assert edge_call(pb, server.address, breaker)
        trip(breaker)
        assert eventually(lambda: any("no default health check" in r.getMessage() for r in caplog.records))
        assert asks.count(server.address) == 1  # (another test's monitor may still be asking its own server)
        breaker.reset()
        assert edge_call(pb, server.address, breaker)
        trip(breaker)  # not asked again: it said it has no Health service
        time.sleep(0.2)  # room for a wrongly started search to show
        assert asks.count(server.address) == 1
    said = [r.getMessage() for r in caplog.records if "no default health check" in r.getMessage()]
    assert len(said) == 1 and "does not answer grpc.health.v1.Health/Check" in said[0]
    assert breaker.health_check is None
    clock.advance(30.1)
    assert breaker.state is CircuitState.HALF_OPEN  # timed probing, as without a check


def test_the_users_own_check_wins(pb: Any, health_server: FaultServer, clock: FakeClock) -> None:
    def mine() -> bool:
        return True

    breaker = CircuitBreaker("edge-own", CONFIG, clock=clock, health_check=mine)
    assert edge_call(pb, health_server.address, breaker)
    trip(breaker)
    assert breaker.check_health() is True
    assert health_server.health_checks == 0
    assert breaker.health_check is mine


def test_automatic_breakers_get_it_and_checks_pass_the_patched_channel(pb: Any, health_server: FaultServer,
                                                                       clock: FakeClock) -> None:
    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 100},
                        "circuit_breakers": {"defaults": {"health_check_interval": None}}}, disabled=others())
    try:
        with grpc.insecure_channel(health_server.address) as channel:
            assert sync_call(pb, channel, "unary_unary")
        automatic = registry.get(f"grpc://{health_server.address}")
        assert automatic is not None
        assert automatic.health_check is None and health_server.health_checks == 0
        trip(automatic)
        assert eventually(lambda: automatic.health_check is not None)
        calls = dict(automatic.snapshot().calls)
        assert automatic.check_health() is True  # not refused by the open breaker it checks
        assert dict(automatic.snapshot().calls) == calls
    finally:
        otel_cb.uninstrument()
