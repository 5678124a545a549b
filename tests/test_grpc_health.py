"""The grpc integration's default health check (``grpc.health.v1.Health/Check``), against a real server.

The server serves the standard Health service (or not, or not for every
service); its counters show that checks are RPCs of their own, never user
calls, and that they reach the server while the breaker is open.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitState, registry
from otel_cb.integrations.grpc import CircuitBreakerInterceptor
from tests.conftest import FakeClock
from tests.grpc_server import FaultServer, pb_fixture  # noqa: F401

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
    assert eventually(lambda: breaker.health_check is not None)  # attached once the first Check answered
    health_server.mode = "unavailable"
    with pytest.raises(grpc.RpcError):
        edge_call(pb, health_server.address, breaker)
    assert breaker.state is CircuitState.OPEN
    calls, user_calls, checks = dict(breaker.snapshot().calls), health_server.total, health_server.health_checks
    assert breaker.check_health() is False  # NOT_SERVING
    health_server.mode = "healthy"
    assert breaker.check_health() is True
    assert breaker.check_health() is True
    assert breaker.state is CircuitState.HALF_OPEN
    assert health_server.health_checks == checks + 3  # each check reached the server through the open breaker
    assert health_server.total == user_calls  # and none was a user call
    assert dict(breaker.snapshot().calls) == calls


@pytest.mark.parametrize("health", [False, {"llm.shield.v1.ShieldService"}], ids=["unimplemented", "not_found"])
def test_no_health_service_means_no_check_said_once(pb: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
                                                     health: bool | set[str]) -> None:
    breaker = CircuitBreaker(f"edge-plain-{bool(health)}", CONFIG, clock=clock)  # log_once: one name each
    with FaultServer(health=health) as server, caplog.at_level(logging.WARNING, logger="otel_cb"):
        assert edge_call(pb, server.address, breaker)
        assert eventually(lambda: any("no default health check" in r.getMessage() for r in caplog.records))
        assert edge_call(pb, server.address, breaker)
    said = [r.getMessage() for r in caplog.records if "no default health check" in r.getMessage()]
    assert len(said) == 1 and "does not answer grpc.health.v1.Health/Check" in said[0]
    assert breaker.health_check is None
    trip(breaker)
    clock.advance(30.1)
    assert breaker.state is CircuitState.HALF_OPEN  # timed probing, as without a check


def test_the_users_own_check_wins(pb: Any, health_server: FaultServer, clock: FakeClock) -> None:
    def mine() -> bool:
        return True

    breaker = CircuitBreaker("edge-own", CONFIG, clock=clock, health_check=mine)
    assert edge_call(pb, health_server.address, breaker)
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
        assert eventually(lambda: automatic.health_check is not None)
        trip(automatic)
        calls = dict(automatic.snapshot().calls)
        assert automatic.check_health() is True  # not refused by the open breaker it checks
        assert dict(automatic.snapshot().calls) == calls
    finally:
        otel_cb.uninstrument()
