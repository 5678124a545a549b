"""requests fallbacks against a real loopback server: stale cache (shared with httpx), static response, hook."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests

from otel_cb import CircuitBreaker, CircuitBreakerConfig
from otel_cb.integrations.httpx import CircuitBreakerTransport
from otel_cb.integrations.requests import RequestsCircuitOpenError
from otel_cb.plugin import Call, Refusal, hookimpl

from .conftest import FakeClock
from .http_server import FaultServer
from .test_requests import protected

STALE = {"type": "stale_cache", "ttl": "5m", "max_entries": 100}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("dep", CircuitBreakerConfig(failure_threshold=1, open_timeout=120.0, minimum_calls=100),
                          clock=clock)


def test_stale_cache_serves_the_last_good_get_while_open(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    with protected(server, cb, sections={"dep": {"fallback": STALE}}) as session:
        fresh = session.get(f"{server.url}/item?id=1", headers={"Authorization": "Bearer a"})
        assert fresh.json()["n"] == 1
        server.mode = "error"
        assert session.get(f"{server.url}/item?id=1").status_code == 500  # a 5xx reaches the caller as sent
        assert cb.is_open
        before = server.requests
        clock.advance(42)
        hooked: list[int] = []
        served = session.get(f"{server.url}/item?id=1", headers={"Authorization": "Bearer a"},
                             hooks={"response": lambda r, **kw: hooked.append(r.status_code)})
        assert served.status_code == 200 and served.reason == "OK" and hooked == [200]
        assert served.json() == fresh.json()
        assert served.headers["X-Otel-CB-Fallback"] == "stale-cache" and served.headers["Age"] == "42"
        assert served.url == f"{server.url}/item?id=1"
        streamed = session.get(f"{server.url}/item?id=1", headers={"Authorization": "Bearer a"}, stream=True)
        assert b"".join(streamed.iter_content(5)) == fresh.content
        assert server.requests == before
        # Other credentials, or another URL, have no entry: the rejection propagates.
        with pytest.raises(RequestsCircuitOpenError):
            session.get(f"{server.url}/item?id=1", headers={"Authorization": "Bearer b"})
        with pytest.raises(RequestsCircuitOpenError):
            session.get(f"{server.url}/item?id=2")
    assert cb.snapshot().fallbacks == {"success": 2, "failure": 2, "refused": 0}


def test_stale_cache_serves_a_failed_request_while_closed_and_expires(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", CircuitBreakerConfig(failure_threshold=5), clock=clock)
    server = FaultServer().start()
    try:
        with protected(server, cb, sections={"dep": {"fallback": {"type": "stale_cache", "ttl": "1m"}}}) as session:
            session.get(server.url)
            server.stop()
            served = session.get(server.url)
            assert served.headers["X-Otel-CB-Fallback"] == "stale-cache"
            assert cb.is_closed and cb.snapshot().calls["failure"] == 1
            clock.advance(61)
            with pytest.raises(requests.ConnectionError):
                session.get(server.url)
    finally:
        server.stop()


def test_a_streamed_body_is_cached_only_when_read_to_its_end(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    with protected(server, cb, sections={"dep": {"fallback": STALE}}) as session:
        with session.get(server.url, stream=True):
            pass  # closed unread: nothing to cache
        cb.force_open()
        with pytest.raises(RequestsCircuitOpenError):
            session.get(server.url)


def test_httpx_and_requests_share_the_stale_cache_of_a_breaker(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    with protected(server, cb, sections={"dep": {"fallback": STALE}}) as session, \
            httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=cb)) as client:
        by_httpx = client.get(f"{server.url}/a")
        by_requests = session.get(f"{server.url}/b")
        cb.force_open()
        assert session.get(f"{server.url}/a").json() == by_httpx.json()
        assert client.get(f"{server.url}/b").json() == by_requests.json()


def test_a_compressed_body_is_replayed_decoded(clock: FakeClock) -> None:
    body = gzip.compress(b'{"zipped": true}')

    class Gzip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Gzip)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fake = FaultServer()
    fake.port = httpd.server_address[1]
    cb = breaker(clock)
    try:
        with protected(fake, cb, sections={"dep": {"fallback": STALE}}) as session:
            assert session.get(fake.url).json() == {"zipped": True}
            cb.force_open()
            served = session.get(fake.url)
            assert served.json() == {"zipped": True} and "Content-Encoding" not in served.headers
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_static_fallback_serves_any_method(server: FaultServer, clock: FakeClock) -> None:
    cb = breaker(clock)
    cb.force_open()
    static = {"type": "static", "status": 503, "json": {"error": "down"}, "headers": {"X-Why": "open"}}
    with protected(server, cb, sections={"dep": {"fallback": static}}) as session:
        served = session.post(server.url, data=b"x")
        assert served.status_code == 503 and served.json() == {"error": "down"}
        assert served.reason == "Service Unavailable" and not served.ok
        assert served.headers["X-Otel-CB-Fallback"] == "static" and served.headers["X-Why"] == "open"
    assert server.requests == 0
    assert cb.snapshot().fallbacks["success"] == 1


class Serving:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object:
        return self.answer


def canned(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"canned"
    return response


@pytest.mark.parametrize(("answer", "status", "counted"), [
    (canned(200), 200, "success"),
    (Refusal(canned(403)), 403, "refused"),
    ("not a response", 503, "success"),  # not served: the configured static response is
])
def test_a_fallback_hook_wins_and_is_counted(server: FaultServer, clock: FakeClock, answer: object,
                                             status: int, counted: str) -> None:
    cb = breaker(clock)
    cb.force_open()
    with protected(server, cb, Serving(answer), sections={"dep": {"fallback": {"type": "static"}}}) as session:
        response = session.get(server.url)
    assert response.status_code == status
    assert cb.snapshot().fallbacks[counted] == 1
