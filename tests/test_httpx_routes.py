"""httpx's per-request shortcuts: the route memo's key, the guard only hand-wired transports set."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from otel_cb import CircuitBreaker
from otel_cb.integrations import _http_transport as transport
from otel_cb.integrations.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport

from .conftest import FakeClock
from .http_server import FaultServer
from .test_httpx import RouteTo, activated, config, patches


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def test_the_route_key_reads_what_the_url_properties_say() -> None:
    assert transport._PARSED_URLS
    for text in ("https://Example.org:8443/p?q", "http://[::1]/", "http://xn--fiqs8s.icom.museum:80/",
                 "http://user:pw@host/"):
        url = httpx.URL(text)
        parsed = url._uri_reference
        assert (parsed.scheme, parsed.host.encode("ascii"), parsed.port) == (url.scheme, url.raw_host, url.port)


def test_a_hand_wired_transport_built_after_patched_requests_still_guards_once(
        server: FaultServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_guards", False)  # as in a process that has built none yet
    auto = CircuitBreaker("auto_first", config(), clock=clock)
    mine = CircuitBreaker("mine_later", config(), clock=clock)
    with patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "auto_first"), breakers=(auto,)):
        with httpx.Client() as client:
            client.get(server.url)
        assert auto.snapshot().calls["success"] == 1
        with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=mine)) as client:
            client.get(server.url)

        async def wired() -> None:
            wrapped = AsyncCircuitBreakerTransport(httpx.AsyncHTTPTransport(), breaker=mine)
            async with httpx.AsyncClient(transport=wrapped) as client:
                await client.get(server.url)

        asyncio.run(wired())
    assert mine.snapshot().calls["success"] == 2
    assert auto.snapshot().calls["success"] == 1


def test_a_patched_request_sets_no_guard(server: FaultServer, clock: FakeClock) -> None:
    seen: list[bool] = []

    class Spy(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)  # the patched method: protected here
            seen.append(transport._GUARDED.get())
            return response

    breaker = CircuitBreaker("patched_only", config(), clock=clock)
    with patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "patched_only"), breakers=(breaker,)), \
            httpx.Client(transport=Spy()) as client:
        client.get(server.url)
    assert seen == [False]
    assert breaker.snapshot().calls["success"] == 1


@pytest.mark.parametrize("read", ["read", "stream", "close_early"])
def test_a_healthy_body_is_judged_once_and_lets_go_of_its_response(server: FaultServer, clock: FakeClock,
                                                                   read: str) -> None:
    import gc

    def pending() -> list[transport._Exchange]:
        return [thing for thing in gc.get_objects()
                if isinstance(thing, transport._Exchange) and thing.response is not None]

    breaker = CircuitBreaker("once", config(), clock=clock)
    with patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "once"), breakers=(breaker,)), \
            httpx.Client() as client:
        with client.stream("GET", server.url) as response:
            assert len(pending()) == 1
            if read == "read":
                response.read()
            elif read == "stream":
                assert b"".join(response.iter_bytes(1))
        assert pending() == []  # the exchange no longer ties the response into a cycle of ours
        assert response.is_closed
    assert breaker.snapshot().calls == {"success": 1, "failure": 0, "ignored": 0, "rejected": 0}
