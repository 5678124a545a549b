"""The requests integration against a real loopback server: fault modes, classification, streams, patches.

No mocked adapters: every request goes over TCP to ``tests.http_server``,
whose request counter proves that an open breaker sent nothing.
"""

from __future__ import annotations

import contextlib
import email.utils
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
import wrapt

import otel_cb
from otel_cb import CircuitBreaker, CircuitOpenError, CircuitState
from otel_cb.integrations import requests as integration
from otel_cb.integrations.requests import RequestsCircuitOpenError
from otel_cb.plugin import Call, hookimpl

from .conftest import FakeClock
from .http_server import FaultServer
from .test_httpx import OPEN_TIMEOUT, RouteTo, WallClock, activated, config

TIMEOUT = (2.0, 0.5)  # healthy answers take milliseconds, even on a busy machine
ORIGINALS = [(requests.adapters.HTTPAdapter, "send"), (requests.Response, "iter_content"),
             (requests.Response, "close")]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@contextlib.contextmanager
def patches() -> Iterator[None]:
    """Apply the integration's patches as the engine does, and remove exactly them afterwards."""
    saved = [vars(owner)[name] for owner, name in ORIGINALS]
    for patch in integration.otel_cb_patches():
        assert patch.integration == "requests"
        wrapt.wrap_function_wrapper(patch.module, patch.target, patch.load_wrapper())
    try:
        yield
    finally:
        for (owner, name), original in zip(ORIGINALS, saved, strict=True):
            setattr(owner, name, original)


@contextlib.contextmanager
def protected(server: FaultServer, breaker: CircuitBreaker, *plugins: object,
              sections: dict[str, Any] | None = None) -> Iterator[requests.Session]:
    """A session whose calls to ``server`` go to ``breaker``, through the patches."""
    with patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", breaker.name), *plugins,
                              sections=sections, breakers=(breaker,)), requests.Session() as session:
        yield session


@contextlib.contextmanager
def instrumented(**defaults: Any) -> Iterator[Any]:
    """The engine itself: config, automatic breakers per destination, every integration's patches."""
    otel_cb.instrument({"circuit_breakers": {"defaults": defaults}}, disabled=())
    try:
        yield otel_cb.registry
    finally:
        otel_cb.uninstrument()


def unpatched() -> bool:
    return all(not isinstance(vars(owner)[name], wrapt.BaseObjectProxy) for owner, name in ORIGINALS)


# -- each fault mode: trips, rejects without network, probes, closes -----------------


EXPECTED: dict[str, int | type[Exception]] = {
    "error": 500, "throttle": 429, "unavailable": 503, "refused": requests.ConnectionError,
    "hang": requests.ReadTimeout, "slow": 200, "truncate": requests.exceptions.ChunkedEncodingError,
}


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_session_trips_rejects_probes_and_closes(server: FaultServer, fault: str) -> None:
    clock: FakeClock | WallClock
    if fault == "slow":
        clock = WallClock()
        breaker = CircuitBreaker("srv", config(failure_threshold=None, slow_call_duration=0.15,
                                               slow_call_rate_threshold=0.5, minimum_calls=4, window_type="count",
                                               window_size=4), clock=clock)
    else:
        clock = FakeClock()
        breaker = CircuitBreaker("srv", config(), clock=clock)
    server.retry_after = None
    server.delay = 0.3
    with protected(server, breaker) as session:
        def get() -> requests.Response:
            return session.get(f"{server.url}/item", timeout=TIMEOUT)

        assert get().status_code == 200
        if fault == "refused":
            server.stop()
        else:
            server.mode = fault
        expected = EXPECTED[fault]
        for _ in range(3):
            if isinstance(expected, int):
                assert get().status_code == expected  # failing statuses reach the application unchanged
            else:
                with pytest.raises(expected):  # and so do the client's own errors
                    get()
        assert breaker.state is CircuitState.OPEN, breaker.snapshot()
        assert breaker.snapshot().slow_calls["success"] == 3 if fault == "slow" else \
            breaker.snapshot().calls["failure"] == 3

        before = server.requests
        for _ in range(3):
            with pytest.raises(RequestsCircuitOpenError) as rejected:
                get()
            assert rejected.value.name == "srv"
            assert rejected.value.retry_after == pytest.approx(OPEN_TIMEOUT, abs=1.0)
        assert server.requests == before, "an open breaker must not touch the network"

        if fault == "refused":
            server.start()
        server.mode = "healthy"
        clock.advance(OPEN_TIMEOUT + 0.5)
        assert get().status_code == 200
        assert breaker.state is CircuitState.HALF_OPEN
        assert requests.get(server.url, timeout=TIMEOUT).status_code == 200  # module-level calls too
        assert breaker.state is CircuitState.CLOSED
        assert server.requests == before + 2


# -- classification ------------------------------------------------------------------


def test_statuses_and_failure_statuses_from_the_config_section(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("statuses", config(), clock=clock)
    with protected(server, breaker) as session:
        for status in (400, 404, 409, 429, 500):
            assert session.get(f"{server.url}/status/{status}").status_code == status
    assert breaker.snapshot().calls == {"success": 3, "failure": 2, "ignored": 0, "rejected": 0}

    custom = CircuitBreaker("custom", config(), clock=clock)
    sections = {"custom": {"failure_statuses": [404, "502-504"]}}
    with protected(server, custom, sections=sections) as session:
        for path in ("/status/500", "/status/429", "/status/404", "/status/503"):
            session.get(server.url + path)
    assert custom.snapshot().calls == {"success": 2, "failure": 2, "ignored": 0, "rejected": 0}


def test_classify_hook_sees_the_requests_response(server: FaultServer, clock: FakeClock) -> None:
    seen: list[tuple[str, str]] = []

    class Classifier:
        @hookimpl
        def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
            seen.append((call.target, type(result).__name__))
            if isinstance(result, requests.Response):
                return {418: "failure", 500: "ignored"}.get(result.status_code)
            return None

    breaker = CircuitBreaker("hooked", config(), clock=clock)
    with protected(server, breaker, Classifier()) as session:
        for status in (418, 500, 200):
            session.get(f"{server.url}/status/{status}")
    assert breaker.snapshot().calls == {"success": 1, "failure": 1, "ignored": 1, "rejected": 0}
    assert seen[0] == (f"http://127.0.0.1:{server.port}", "Response")


def test_requests_the_client_rejects_before_any_io_touch_no_breaker(server: FaultServer) -> None:
    with instrumented() as registry:
        before = {breaker.name for breaker in registry}  # the service plugins' own
        for url, error in (("127.0.0.1/no-scheme", requests.exceptions.MissingSchema),
                           ("gopher://127.0.0.1/", requests.exceptions.InvalidSchema),
                           ("http://", requests.exceptions.InvalidURL),
                           ("http://*.example/", requests.exceptions.InvalidURL)):
            with pytest.raises(error):
                requests.get(url)
        session = requests.Session()
        prepared = requests.Request("GET", server.url).prepare()
        prepared.url = "http://:80/"  # past requests' own checks: the adapter rejects it
        with pytest.raises(requests.exceptions.InvalidURL):
            session.send(prepared)
        assert {breaker.name for breaker in registry} == before
        assert requests.get(server.url).status_code == 200
        assert {breaker.name for breaker in registry} - before == {f"http://127.0.0.1:{server.port}"}


def test_httpx_and_requests_share_their_config_keys_checked_once() -> None:
    with pytest.raises(otel_cb.ConfigError) as bad:
        otel_cb.instrument({"circuit_breakers": {"api": {"failure_statuses": ["6xx"]}}}, disabled=())
    (problem,) = bad.value.problems
    assert problem.location.endswith("circuit_breakers.api.failure_statuses") and "'6xx' is not allowed" in \
        problem.message


# -- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [("120", 120.0), ("5", OPEN_TIMEOUT), (None, OPEN_TIMEOUT)])
def test_retry_after_lengthens_the_open_timeout(server: FaultServer, clock: FakeClock, header: str | None,
                                                 expected: float) -> None:
    breaker = CircuitBreaker("throttled", config(failure_threshold=1), clock=clock)
    server.mode = "throttle"
    server.retry_after = header
    with protected(server, breaker) as session:
        assert session.get(server.url).status_code == 429
        assert breaker.snapshot().retry_after == pytest.approx(expected)
        server.mode = "healthy"
        clock.advance(expected - 1)
        with pytest.raises(RequestsCircuitOpenError):
            session.get(server.url)
        clock.advance(1.5)
        assert session.get(server.url).status_code == 200


def test_retry_after_as_an_http_date(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("dated", config(failure_threshold=1), clock=clock)
    server.mode = "unavailable"
    server.retry_after = email.utils.formatdate(time.time() + 90, usegmt=True)
    with protected(server, breaker) as session:
        assert session.get(server.url).status_code == 503
    retry_after = breaker.snapshot().retry_after
    assert retry_after is not None and 85 <= retry_after <= 91


# -- the open-circuit error -------------------------------------------------------------


def test_rejection_is_a_requests_connection_error(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("rejecting", config(), clock=clock)
    breaker.force_open()
    with protected(server, breaker) as session:
        try:
            session.get(f"{server.url}/secret?token=abc")
        except requests.RequestException as exc:
            caught = exc
    assert isinstance(caught, CircuitOpenError) and isinstance(caught, requests.exceptions.ConnectionError)
    assert caught.state is CircuitState.FORCED_OPEN and caught.retry_after is None
    assert caught.request is not None and caught.request.path_url == "/secret?token=abc"
    assert caught.errno is None and caught.response is None
    assert "secret" not in str(caught) and "token" not in str(caught)
    copy = pickle.loads(pickle.dumps(caught))
    assert (type(copy), copy.name, copy.state, str(copy)) == (type(caught), caught.name, caught.state, str(caught))
    assert server.requests == 0


# -- streams --------------------------------------------------------------------------------


def test_stream_bodies_are_judged_when_consumed(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("streams", config(), clock=clock)
    with protected(server, breaker) as session:
        with session.get(server.url, stream=True) as response:
            assert breaker.snapshot().calls["success"] == 0  # judged when the body ends
            chunks = list(response.iter_content(4))
            assert b"".join(chunks).startswith(b'{"n": 1') and len(chunks) > 1
            assert breaker.snapshot().calls["success"] == 1
        lines = session.get(server.url, stream=True)
        assert list(lines.iter_lines()) and breaker.snapshot().calls["success"] == 2
        with session.get(f"{server.url}/status/500", stream=True):
            assert breaker.snapshot().calls["failure"] == 1  # a failing head is judged at once


def test_a_stream_closed_early_is_no_verdict(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("early", config(failure_threshold=1), clock=clock)
    with protected(server, breaker) as session:
        with session.get(server.url, stream=True) as response:
            assert response.status_code == 200
        for chunk in session.get(server.url, stream=True).iter_content(2):
            assert chunk
            break
        server.mode = "truncate"
        with session.get(server.url, stream=True) as response:
            next(response.iter_content(10))  # part of a body that would fail, then closed
    assert breaker.snapshot().calls == {"success": 0, "failure": 0, "ignored": 0, "rejected": 0}


def test_a_probe_closed_early_hands_its_slot_back(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("probe", config(failure_threshold=1, half_open_max_calls=1), clock=clock)
    with protected(server, breaker) as session:
        session.get(f"{server.url}/status/500")
        clock.advance(OPEN_TIMEOUT + 1)
        for _ in range(3):  # with the slot leaked, the second would be rejected
            with session.get(server.url, stream=True) as response:
                assert response.status_code == 200
                assert breaker.snapshot().half_open_calls == 1
            assert breaker.snapshot().half_open_calls == 0  # handed back at the close, not at a later admission
        response = session.get(server.url, stream=True)
        chunks = response.iter_content(2)  # alive after the close: the slot must not wait for its collection
        assert next(chunks)
        response.close()
        assert breaker.snapshot().half_open_calls == 0
        assert breaker.state is CircuitState.HALF_OPEN
        session.get(server.url)
        session.get(server.url)
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("read", ["content", "stream", "unread"])
def test_a_finished_response_and_its_exchange_are_freed_by_reference_counting(
        server: FaultServer, clock: FakeClock, read: str) -> None:
    import gc
    import weakref

    from otel_cb.integrations._requests_exchange import _Exchange

    def exchanges() -> int:
        return sum(type(thing) is _Exchange for thing in gc.get_objects())

    breaker = CircuitBreaker("freed", config(), clock=clock)
    with protected(server, breaker) as session:
        session.get(server.url)  # warm: the first request builds the breaker's settings and the session's pool
        gc.collect()
        gc.disable()
        try:
            response = session.get(server.url, stream=read != "content")
            if read == "stream":
                assert b"".join(response.iter_content(1))  # read through to its end, as iter_lines does
            alive = weakref.ref(response)
            del response
            assert alive() is None  # nothing of ours ties the response into a reference cycle
            assert exchanges() == 0  # nor keeps its exchange (and permit) after it
        finally:
            gc.enable()
    # Read to the end: judged; dropped unread: no verdict, and no half-open slot kept.
    assert breaker.snapshot().calls["success"] == (1 if read == "unread" else 2)


def test_a_read_error_while_streaming_is_a_failure(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("truncated", config(), clock=clock)
    server.mode = "truncate"
    with protected(server, breaker) as session:
        for _ in range(3):
            response = session.get(server.url, stream=True)
            assert response.status_code == 200
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                for _chunk in response.iter_content(100):
                    pass
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(RequestsCircuitOpenError):
            session.get(server.url, stream=True)


# -- behaviour while closed is requests' own -------------------------------------------------


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def redirecting_to(url: str) -> Iterator[str]:
    handler = type("Redirect", (_Redirect,), {"target": url})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def observe(session: requests.Session, server: FaultServer, redirector: str) -> list[Any]:
    """What an application sees of a series of calls: values, exception types, hook calls."""
    seen: list[Any] = []
    hook: Callable[..., None] = lambda response, **kwargs: seen.append(("hook", response.status_code))  # noqa: E731
    calls: list[Callable[[], Any]] = [
        lambda: session.get(f"{server.url}/a?b=1", hooks={"response": hook}).json()["path"],
        lambda: [r.status_code for r in session.get(f"{redirector}/moved").history],
        lambda: session.get(f"{redirector}/moved", allow_redirects=False).headers["Location"].endswith("/moved"),
        lambda: b"".join(session.get(server.url, stream=True).iter_content(3)).startswith(b"{"),
        lambda: session.post(server.url, data=b"x").status_code,
        lambda: session.head(server.url).status_code,
        lambda: session.get(f"{server.url}/status/503").reason,
        lambda: session.get("http://127.0.0.1:1/", timeout=TIMEOUT),
        lambda: session.get("nope"),
    ]
    for call in calls:
        try:
            seen.append(call())
        except Exception as exc:
            seen.append(type(exc))
    return seen


def test_behaviour_while_closed_is_identical(server: FaultServer, clock: FakeClock) -> None:
    with redirecting_to(server.url) as redirector, requests.Session() as plain:
        expected = observe(plain, server, redirector)
        with instrumented() as registry, requests.Session() as session:
            assert observe(session, server, redirector) == expected
            assert all(breaker.is_closed for breaker in registry)
            names = {breaker.name for breaker in registry}
            assert f"http://127.0.0.1:{server.port}" in names and redirector in names  # one per hop's origin
    assert expected[:3] == [("hook", 200), "/a?b=1", [302]]
    assert expected[-2:] == [requests.ConnectionError, requests.exceptions.MissingSchema]


def test_the_same_response_object_reaches_the_application(server: FaultServer, clock: FakeClock) -> None:
    made: list[requests.Response] = []

    class Kept(requests.adapters.HTTPAdapter):
        def build_response(self, req: Any, resp: Any) -> requests.Response:
            made.append(super().build_response(req, resp))
            return made[-1]

    breaker = CircuitBreaker("same", config(), clock=clock)
    with protected(server, breaker) as session:
        session.mount("http://", Kept())
        response = session.get(server.url)
    assert made == [response] and type(response) is requests.Response
    assert breaker.snapshot().calls["success"] == 1


# -- patches and the engine ---------------------------------------------------------------------


def test_uninstrument_restores_the_originals(server: FaultServer) -> None:
    originals = [vars(owner)[name] for owner, name in ORIGINALS]
    with instrumented(failure_threshold=1):
        assert not unpatched()
        server.mode = "error"
        requests.get(server.url)
        with pytest.raises(RequestsCircuitOpenError):
            requests.get(server.url)
    assert unpatched()
    assert [vars(owner)[name] for owner, name in ORIGINALS] == originals
    assert requests.get(server.url).status_code == 500


def test_httpx_and_requests_share_one_breaker_per_origin(server: FaultServer) -> None:
    with instrumented(failure_threshold=2) as registry:
        server.mode = "error"
        assert requests.get(f"{server.url}/private?token=secret").status_code == 500
        with httpx.Client() as client:
            assert client.get(f"{server.url}/other").status_code == 500
            with pytest.raises(httpx.TransportError) as from_httpx:
                client.get(server.url)
        with pytest.raises(RequestsCircuitOpenError) as from_requests:
            requests.get(server.url)
        assert from_httpx.value.name == from_requests.value.name == f"http://127.0.0.1:{server.port}"
        (shared,) = [b for b in registry if str(server.port) in b.name]
        assert shared.snapshot().calls == {"success": 0, "failure": 2, "ignored": 0, "rejected": 2}
        assert server.requests == 2


def test_loading_the_plugin_does_not_import_requests() -> None:
    code = ("import sys, otel_cb.integrations.requests as m; m.otel_cb_patches(); m.validate_settings('a', {}); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('requests', 'urllib3')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
