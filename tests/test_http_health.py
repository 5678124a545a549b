"""The HTTP integrations' configured health check (``health_check: {path, expect}``), against a real server.

Both clients, through their real patches: the check is attached to the breaker
a call is routed to, goes out while the breaker is open (the server counts it),
is neither counted as a user call nor refused, and moves the breaker to
half-open once the server answers ``expect``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

import otel_cb
from otel_cb import CircuitBreaker, CircuitState

from .conftest import FakeClock
from .http_server import FaultServer
from .test_httpx import RouteTo, activated, config
from .test_httpx import patches as httpx_patches
from .test_requests import patches as requests_patches

SECTION = {"health_check": {"path": "/status/204", "expect": [204]}}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def send(client: str, url: str) -> int:
    if client == "httpx":
        with httpx.Client() as session:
            return session.get(url).status_code
    with requests.Session() as session:
        return session.get(url).status_code


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_configured_check_recovers_the_breaker_without_a_user_probe(server: FaultServer, clock: FakeClock,
                                                                      client: str) -> None:
    breaker = CircuitBreaker("api", config(failure_threshold=1, health_check_interval=None), clock=clock)
    patches = httpx_patches if client == "httpx" else requests_patches
    with patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "api"), sections={"api": SECTION},
                              breakers=(breaker,)):
        server.mode = "error"
        with pytest.raises(otel_cb.CircuitOpenError):
            for _ in range(3):
                send(client, server.url)
        assert breaker.state is CircuitState.OPEN and breaker.health_check is not None
        calls = dict(breaker.snapshot().calls)
        reached = server.requests
        assert breaker.check_health() is False  # 500 is not in expect
        server.mode = "healthy"
        assert breaker.check_health() is True
        assert breaker.check_health() is True  # healthy_threshold is 2
        assert server.requests == reached + 3  # through the open breaker, to the server
        assert dict(breaker.snapshot().calls) == calls  # and not counted as user calls
        assert breaker.state is CircuitState.HALF_OPEN
        assert breaker.snapshot().health_checks == {"passed": 2, "failed": 1}


@pytest.mark.parametrize("expect", ["2xx", 200, [200, "3xx"]])
def test_expect_takes_a_class_a_code_or_a_list(server: FaultServer, clock: FakeClock, expect: object) -> None:
    breaker = CircuitBreaker("api", config(health_check_interval=None), clock=clock)
    section = {"health_check": {"path": "/healthz", "expect": expect}}
    with httpx_patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "api"), sections={"api": section},
                                    breakers=(breaker,)):
        send("httpx", server.url)
        assert breaker.check_health() is True


def test_no_section_no_check_and_the_users_check_wins(server: FaultServer, clock: FakeClock) -> None:
    plain = CircuitBreaker("plain", config(), clock=clock)
    with requests_patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "plain"), breakers=(plain,)):
        send("requests", server.url)
    assert plain.health_check is None

    def mine() -> bool:
        return True

    own = CircuitBreaker("own", config(), clock=clock, health_check=mine)
    with requests_patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "own"), sections={"own": SECTION},
                                       breakers=(own,)):
        send("requests", server.url)
    assert own.health_check is mine


@pytest.mark.parametrize(("value", "field", "says"), [
    ({"expect": "2xx"}, "health_check.path", "a path on the breaker's origin"),
    ({"path": "healthz"}, "health_check.path", "a path on the breaker's origin"),
    ({"path": "/healthz", "expect": "9xx"}, "health_check.expect", "'9xx' is not allowed"),
    ({"path": "/healthz", "method": "POST"}, "health_check.method", "takes expect, path"),
    ("/healthz", "health_check", "a mapping {path: /healthz, expect: 2xx}"),
])
def test_a_bad_section_is_a_config_error_naming_the_field(value: Any, field: str, says: str) -> None:
    with pytest.raises(otel_cb.ConfigError) as bad:
        otel_cb.instrument({"circuit_breakers": {"api": {"health_check": value}}}, disabled=())
    (problem,) = bad.value.problems
    assert problem.location.endswith(f"circuit_breakers.api.{field}") and says in problem.message


def test_a_path_is_never_repeated_in_the_error() -> None:
    with pytest.raises(otel_cb.ConfigError) as bad:
        otel_cb.instrument({"circuit_breakers": {"api": {"health_check": {"path": "x?token=hunter2"}}}},
                           disabled=())
    assert "hunter2" not in str(bad.value)
