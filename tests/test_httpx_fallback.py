"""httpx fallbacks against a real loopback server: stale cache, static response, hook; counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from otel_cb.integrations._http_policy import StaleCache
from otel_cb.integrations.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport, HTTPCircuitOpenError
from otel_cb.plugin import Call, Refusal, hookimpl

from .conftest import FakeClock
from .http_server import FaultServer
from .test_httpx import activated

STALE = {"type": "stale_cache", "ttl": "5m", "max_entries": 100}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def breaker(clock: FakeClock, name: str = "dep") -> CircuitBreaker:
    return CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1, open_timeout=120.0, minimum_calls=100),
                          clock=clock)


def client_for(cb: CircuitBreaker, fallback: Any = None) -> httpx.Client:
    return httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=cb, fallback=fallback))


def test_stale_cache_serves_the_last_good_get_while_open(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    with client_for(cb, STALE) as client:
        fresh = client.get(f"{server.url}/item?id=1")
        assert fresh.json()["n"] == 1
        server.mode = "error"
        assert client.get(f"{server.url}/item?id=1").status_code == 500  # a 5xx reaches the caller as sent
        assert cb.is_open
        before = server.requests
        clock.advance(42)
        served = client.get(f"{server.url}/item?id=1")
        assert served.status_code == 200
        assert served.json() == fresh.json()
        assert served.headers["X-Otel-CB-Fallback"] == "stale-cache"
        assert served.headers["Age"] == "42"
        assert server.requests == before
        # Another URL has no entry: the rejection propagates, counted as a failed fallback.
        with pytest.raises(HTTPCircuitOpenError):
            client.get(f"{server.url}/item?id=2")
    assert cb.snapshot().fallbacks == {"success": 1, "failure": 1, "refused": 0}


def test_stale_cache_serves_a_failed_request_while_closed(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", CircuitBreakerConfig(failure_threshold=5), clock=clock)
    server = FaultServer().start()
    try:
        with client_for(cb, STALE) as client:
            client.get(server.url)
            server.stop()
            served = client.get(server.url)
            assert served.headers["X-Otel-CB-Fallback"] == "stale-cache"
            assert cb.is_closed and cb.snapshot().calls["failure"] == 1
    finally:
        server.stop()


def test_stale_cache_entries_expire(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    with client_for(cb, {"type": "stale_cache", "ttl": "1m"}) as client:
        client.get(server.url)
        cb.force_open()
        clock.advance(59)
        assert client.get(server.url).headers["Age"] == "59"
        clock.advance(2)
        with pytest.raises(HTTPCircuitOpenError):
            client.get(server.url)


def test_stale_cache_never_replays_other_methods_or_credentials(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    with client_for(cb, STALE) as client:
        client.post(server.url, content=b"order")
        client.get(server.url, headers={"Authorization": "Bearer alice"})
        cb.force_open()
        with pytest.raises(HTTPCircuitOpenError):
            client.post(server.url, content=b"order")
        with pytest.raises(HTTPCircuitOpenError):
            client.get(server.url, headers={"Authorization": "Bearer mallory"})
        with pytest.raises(HTTPCircuitOpenError):
            client.get(server.url)
        assert client.get(server.url, headers={"Authorization": "Bearer alice"}).status_code == 200


def test_stale_cache_skips_error_responses_and_partial_bodies(server: FaultServer, clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", CircuitBreakerConfig(failure_threshold=10), clock=clock)
    with client_for(cb, STALE) as client:
        client.get(f"{server.url}/status/404")
        with client.stream("GET", server.url) as response:
            next(response.iter_raw(1))  # closed before the end
        cb.force_open()
        for path in ("/status/404", ""):
            with pytest.raises(HTTPCircuitOpenError):
                client.get(server.url + path)


def test_stale_cache_memory_is_bounded() -> None:
    clock = FakeClock()
    cache = StaleCache(ttl=60, max_entries=3, max_entry_bytes=10, clock=clock)
    keys = [cache.key("GET", f"http://h:1/{i}", []) for i in range(5)]
    assert cache.key("POST", "http://h:1/", []) is None
    for key in keys:
        assert key is not None
        cache.store(key, 200, [], b"ok")
    assert len(cache) == 3
    assert cache.lookup(keys[0]) is None  # least recently used went first
    assert cache.lookup(keys[4]) is not None
    big = cache.key("GET", "http://h:1/big", [])
    assert big is not None
    cache.store(big, 200, [], b"x" * 11)
    assert cache.lookup(big) is None


def test_static_fallback_serves_any_method(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    static = {"type": "static", "status": 503, "json": {"error": "catalog unavailable"}, "headers": {"X-A": "b"}}
    with client_for(cb, static) as client:
        cb.force_open()
        for method in ("GET", "POST"):
            response = client.request(method, server.url)
            assert response.status_code == 503
            assert response.json() == {"error": "catalog unavailable"}
            assert response.headers["X-Otel-CB-Fallback"] == "static"
            assert response.headers["X-A"] == "b"
    assert server.requests == 0
    assert cb.snapshot().fallbacks == {"success": 2, "failure": 0, "refused": 0}


def test_fallback_from_the_config_section(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock, "configured")
    sections = {"configured": {"fallback": {"type": "static", "status": 200, "body": "cached"}}}
    with activated(sections=sections, breakers=(cb,)), client_for(cb) as client:
        cb.force_open()
        assert client.get(server.url).text == "cached"


def test_fallback_hook_wins_and_sees_the_error(server: FaultServer, clock: FakeClock) -> None:
    errors: list[BaseException] = []

    class Fallback:
        @hookimpl
        def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
            errors.append(error)
            if call.url.endswith("/wrong-type"):
                return "not a response"
            return httpx.Response(299, text="from hook")

    cb = breaker(clock)
    with activated(Fallback(), breakers=(cb,)), client_for(cb, STALE) as client:
        cb.force_open()
        assert client.get(server.url).text == "from hook"
        with pytest.raises(HTTPCircuitOpenError):
            client.get(f"{server.url}/wrong-type")
    assert isinstance(errors[0], CircuitOpenError) and isinstance(errors[0], httpx.TransportError)
    assert cb.snapshot().fallbacks == {"success": 1, "failure": 1, "refused": 0}


def test_async_stale_cache(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)

    async def main() -> None:
        transport = AsyncCircuitBreakerTransport(httpx.AsyncHTTPTransport(), breaker=cb, fallback=STALE)
        async with httpx.AsyncClient(transport=transport) as client:
            fresh = await client.get(server.url)
            cb.force_open()
            served = await client.get(server.url)
            assert served.json() == fresh.json()
            assert served.headers["X-Otel-CB-Fallback"] == "stale-cache"

    asyncio.run(main())
    assert server.requests == 1


def test_a_refusal_from_the_hook_is_served_and_counted_refused(server: FaultServer, clock: FakeClock) -> None:
    class FailClosed:
        @hookimpl
        def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
            return Refusal(httpx.Response(503, text="not checked"))

    cb = breaker(clock)
    with activated(FailClosed(), breakers=(cb,)), client_for(cb) as client:
        cb.force_open()
        served = client.get(server.url)
        assert (served.status_code, served.text) == (503, "not checked")
    assert cb.snapshot().fallbacks == {"success": 0, "failure": 0, "refused": 1}
