"""requests routes from a memo keyed by ``scheme://netloc`` and method: what it skips, and what it must not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from otel_cb import CircuitBreaker
from otel_cb.integrations import _requests_exchange as exchange
from otel_cb.plugin import Call, hookimpl

from .conftest import FakeClock
from .http_server import FaultServer
from .test_httpx import RouteTo, activated, config
from .test_requests import patches, protected


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture
def described(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs ``describe`` was asked about (it runs for a route the memo does not hold)."""
    seen: list[str] = []
    original = exchange.describe

    def counting(request: Any) -> Call | None:
        seen.append(request.url)
        return original(request)

    monkeypatch.setattr(exchange, "describe", counting)
    exchange._ROUTES.clear()
    return seen


def test_repeat_requests_route_from_the_memo_per_origin_and_method(server: FaultServer, clock: FakeClock,
                                                                     described: list[str]) -> None:
    breaker = CircuitBreaker("memo", config(), clock=clock)
    with protected(server, breaker) as session:
        for path in ("/a", "/b?token=x", "/c"):
            session.get(f"{server.url}{path}")
        session.post(f"{server.url}/d")
        session.post(f"{server.url}/e")
    assert breaker.snapshot().calls["success"] == 5
    assert described == [f"{server.url}/a", f"{server.url}/d"]  # one GET, one POST


def test_hooks_see_the_call_as_describe_built_it(server: FaultServer, clock: FakeClock,
                                                 described: list[str]) -> None:
    seen: list[Call] = []

    class Classifier:
        @hookimpl
        def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
            seen.append(call)
            return None

    breaker = CircuitBreaker("hooked", config(), clock=clock)
    with protected(server, breaker, Classifier()) as session:
        session.get(f"{server.url}/first")
        response = session.get(f"{server.url}/second?q=1")
    assert len(described) == 1  # the second call comes from the memo, and its Call is built for the hook
    call = seen[-1]
    assert (call.kind, call.target, call.method, call.service) == ("http", f"http://127.0.0.1:{server.port}",
                                                                    "GET", "")
    assert call.url == f"{server.url}/second?q=1"
    assert call.request is response.request


def test_urls_with_userinfo_are_described_each_time(server: FaultServer, clock: FakeClock,
                                                    described: list[str]) -> None:
    seen: list[str] = []

    class Classifier:
        @hookimpl
        def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
            seen.append(call.url)
            return None

    breaker = CircuitBreaker("userinfo", config(), clock=clock)
    url = f"http://user:secret@127.0.0.1:{server.port}/x"
    with protected(server, breaker, Classifier()) as session:
        session.get(url)
        session.get(url)
    assert len(described) == 2  # no memo key holds the credentials
    assert breaker.snapshot().calls["success"] == 2
    assert seen == [f"{server.url}/x"] * 2


def test_a_new_routing_epoch_routes_again(server: FaultServer, clock: FakeClock, described: list[str]) -> None:
    import requests

    first = CircuitBreaker("first", config(), clock=clock)
    second = CircuitBreaker("second", config(), clock=clock)
    target = f"http://127.0.0.1:{server.port}"
    with patches(), requests.Session() as session:
        with activated(RouteTo(target, "first"), breakers=(first,)):
            session.get(server.url)
            session.get(server.url)
        session.get(server.url)  # not instrumented: unprotected
        with activated(RouteTo(target, "second"), breakers=(second,)):
            session.get(server.url)
    assert first.snapshot().calls["success"] == 2
    assert second.snapshot().calls["success"] == 1
    assert len(described) == 3


def test_odd_prepared_urls_are_routed_as_describe_routes_them(server: FaultServer, clock: FakeClock) -> None:
    import requests

    breaker = CircuitBreaker("odd", config(), clock=clock)
    port = server.port
    with protected(server, breaker):
        for url, protected_ in ((f"HTTP://127.0.0.1:{port}/upper", False), (f"http://127.0.0.1:{port}?q", True),
                                (f"http://127.0.0.1:{port}?next=/x", True), (f"http://127.0.0.1:{port}#/x", True),
                                ("not a url/x", False), (f"a:b://127.0.0.1:{port}/x", False)):
            prepared = requests.Request("GET", server.url).prepare()
            prepared.url = url  # past requests' own normalisation
            for _ in range(2):  # a miss, then the memo
                found = exchange._prepare(prepared)
                assert (found.route if found else None) == exchange.route_http(exchange.describe(prepared),
                                                                               "requests")
                assert (found is not None) is protected_, url
