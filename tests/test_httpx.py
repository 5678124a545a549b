"""The httpx integration against a real loopback server: fault modes, classification, streams, patches.

No mocked transports: every request goes over TCP to ``tests.http_server``,
whose request counter proves that an open breaker sent nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import wrapt

from otel_cb import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CircuitOpenError,
    CircuitState,
    _plugins,
)
from otel_cb.integrations import httpx as integration
from otel_cb.integrations._http_policy import parse_retry_after, validate_settings
from otel_cb.integrations.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport, HTTPCircuitOpenError
from otel_cb.plugin import Call, hookimpl

from .conftest import FakeClock
from .http_server import FaultServer

OPEN_TIMEOUT = 10.0
TIMEOUT = httpx.Timeout(2.0, read=0.5)  # healthy answers take milliseconds, even on a busy machine


class WallClock:
    """Real monotonic time plus jumps: real call durations (slow calls) and instant open timeouts."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def config(**overrides: Any) -> CircuitBreakerConfig:
    settings: dict[str, Any] = dict(failure_threshold=3, success_threshold=2, open_timeout=OPEN_TIMEOUT,
                                    minimum_calls=100, slow_call_duration=None)
    settings.update(overrides)
    return CircuitBreakerConfig(**settings)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@contextlib.contextmanager
def activated(*plugins: object, sections: dict[str, Any] | None = None,
              breakers: tuple[CircuitBreaker, ...] = ()) -> Iterator[CircuitBreakerRegistry]:
    """Make the runtime helpers answer from ``plugins`` and config ``sections``, as instrument() does."""
    manager = _plugins.new_manager()
    for index, plugin in enumerate(plugins):
        manager.register(plugin, name=f"test_plugin_{index}")
    registry = CircuitBreakerRegistry()
    for breaker in breakers:
        registry.add(breaker)
    _plugins.activate(_plugins.Active(manager, registry, config(), sections or {}))
    try:
        yield registry
    finally:
        _plugins.deactivate()


class RouteTo:
    """A plugin routing every call for ``target`` to breaker ``name``."""

    def __init__(self, target: str, name: str) -> None:
        self.target = target
        self.name = name

    @hookimpl
    def otel_cb_select_breaker(self, call: Call) -> str | None:
        return self.name if call.target == self.target else None


# -- each fault mode: trips, rejects without network, probes, closes -----------------


EXPECTED: dict[str, int | type[Exception]] = {
    "error": 500, "throttle": 429, "unavailable": 503, "refused": httpx.ConnectError, "hang": httpx.ReadTimeout,
    "slow": 200,
}
FAULTS = list(EXPECTED)


def break_server(server: FaultServer, fault: str) -> None:
    server.delay = 0.3  # slow mode: twice the slow-call duration, and under the read timeout
    if fault == "refused":
        server.stop()
    else:
        server.mode = fault


def heal_server(server: FaultServer, fault: str) -> None:
    if fault == "refused":
        server.start()
    server.mode = "healthy"


def run_fault_scenario(server: FaultServer, breaker: CircuitBreaker, clock: FakeClock | WallClock,
                       fault: str, get: Callable[[], httpx.Response]) -> None:
    server.retry_after = None
    assert get().status_code == 200
    break_server(server, fault)
    expected: int | type[Exception] = EXPECTED[fault]
    for _ in range(3):
        if isinstance(expected, int):
            # Failing statuses reach the application unchanged.
            assert get().status_code == expected
        else:
            with pytest.raises(expected):  # and so do the client's own errors
                get()
    assert breaker.state is CircuitState.OPEN, breaker.snapshot()
    if fault == "slow":
        assert breaker.snapshot().slow_calls["success"] == 3
    else:
        assert breaker.snapshot().calls["failure"] == 3

    before = server.requests
    for _ in range(5):
        with pytest.raises(HTTPCircuitOpenError) as rejected:
            get()
        assert isinstance(rejected.value, httpx.TransportError)
        assert rejected.value.name == breaker.name
        assert rejected.value.retry_after == pytest.approx(OPEN_TIMEOUT, abs=1.0)
    assert server.requests == before, "an open breaker must not touch the network"
    assert breaker.snapshot().calls["rejected"] == 5

    heal_server(server, fault)
    clock.advance(OPEN_TIMEOUT + 0.5)
    assert get().status_code == 200
    assert breaker.state is CircuitState.HALF_OPEN
    assert get().status_code == 200
    assert breaker.state is CircuitState.CLOSED
    assert server.requests == before + 2


def fault_breaker(fault: str) -> tuple[CircuitBreaker, FakeClock | WallClock]:
    if fault == "slow":
        wall = WallClock()
        slow_config = config(failure_threshold=None, slow_call_duration=0.15, slow_call_rate_threshold=0.5,
                             minimum_calls=4, window_type="count", window_size=4)
        return CircuitBreaker(f"srv_{fault}", slow_config, clock=wall), wall
    fake = FakeClock()
    return CircuitBreaker(f"srv_{fault}", config(), clock=fake), fake


@pytest.mark.parametrize("fault", FAULTS)
def test_sync_client_trips_rejects_probes_and_closes(server: FaultServer, fault: str) -> None:
    breaker, clock = fault_breaker(fault)
    transport = CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        run_fault_scenario(server, breaker, clock, fault, lambda: client.get(f"{server.url}/item"))


@pytest.mark.parametrize("fault", FAULTS)
def test_async_client_trips_rejects_probes_and_closes(server: FaultServer, fault: str) -> None:
    breaker, clock = fault_breaker(fault)
    transport = AsyncCircuitBreakerTransport(httpx.AsyncHTTPTransport(), breaker=breaker)
    loop = asyncio.new_event_loop()  # one loop for every request: the client's connections belong to it
    client = httpx.AsyncClient(transport=transport, timeout=TIMEOUT)
    try:
        run_fault_scenario(server, breaker, clock, fault,
                           lambda: loop.run_until_complete(client.get(f"{server.url}/item")))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


# -- classification ------------------------------------------------------------------


def test_other_4xx_are_successes_and_failure_statuses_override(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("statuses", config(), clock=clock)
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        for status in (400, 404, 409, 404):
            assert client.get(f"{server.url}/status/{status}").status_code == status
        assert client.get(f"{server.url}/status/429").status_code == 429
        assert breaker.snapshot().calls == {"success": 4, "failure": 1, "ignored": 0, "rejected": 0}

    custom = CircuitBreaker("custom_statuses", config(), clock=clock)
    transport = CircuitBreakerTransport(httpx.HTTPTransport(), breaker=custom, failure_statuses=[404, "502-504"])
    with httpx.Client(transport=transport) as client:
        for path in ("/status/500", "/status/429", "/status/404", "/status/503"):
            client.get(server.url + path)
        assert custom.snapshot().calls == {"success": 2, "failure": 2, "ignored": 0, "rejected": 0}


def test_failure_statuses_from_the_config_section(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("configured", config(), clock=clock)
    sections = {"configured": {"failure_statuses": ["4xx"]}}
    with activated(sections=sections, breakers=(breaker,)), \
            httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        client.get(f"{server.url}/status/404")
        client.get(f"{server.url}/status/500")
    assert breaker.snapshot().calls["failure"] == 1
    assert breaker.snapshot().calls["success"] == 1


def test_classify_hook_overrides_the_rules(server: FaultServer, clock: FakeClock) -> None:
    seen: list[tuple[str, object, object]] = []

    class Classifier:
        @hookimpl
        def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
            seen.append((call.target, type(result).__name__, type(exception).__name__))
            if isinstance(result, httpx.Response):
                return {418: "failure", 500: "ignored"}.get(result.status_code)
            return None

    breaker = CircuitBreaker("hooked", config(), clock=clock)
    with activated(Classifier(), breakers=(breaker,)), \
            httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        client.get(f"{server.url}/status/418")
        client.get(f"{server.url}/status/500")
        client.get(f"{server.url}/status/200")
    assert breaker.snapshot().calls == {"success": 1, "failure": 1, "ignored": 1, "rejected": 0}
    assert seen[0] == (f"http://127.0.0.1:{server.port}", "Response", "NoneType")


def test_a_classify_hook_answering_outside_the_vocabulary_never_disables_protection(
        server: FaultServer, clock: FakeClock) -> None:
    class Broken:
        @hookimpl
        def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> object:
            return ["failure"]  # unhashable, not a verdict: no answer

    breaker = CircuitBreaker("unhashable", config(), clock=clock)
    with activated(Broken(), breakers=(breaker,)), \
            httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        for _ in range(3):  # the status rule decides: three 500s open it
            assert client.get(f"{server.url}/status/500").status_code == 500
        with pytest.raises(HTTPCircuitOpenError):
            client.get(f"{server.url}/status/200")
    assert breaker.snapshot().calls["failure"] == 3


def test_a_connection_error_is_a_failure_and_reaches_the_caller_unchanged(clock: FakeClock) -> None:
    server = FaultServer().start()
    url = server.url
    server.stop()
    breaker = CircuitBreaker("refused", config(), clock=clock)
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(url)
    assert breaker.snapshot().calls["failure"] == 1


def test_errors_that_never_reached_the_server_are_ignored(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("pool", config(failure_threshold=1), clock=clock)
    transport = CircuitBreakerTransport(httpx.HTTPTransport(limits=httpx.Limits(max_connections=1)), breaker=breaker)
    with httpx.Client(transport=transport, timeout=httpx.Timeout(5.0, pool=0.05)) as client:
        with client.stream("GET", server.url):  # holds the only connection
            with pytest.raises(httpx.PoolTimeout):
                client.get(server.url)
        inner = CircuitBreaker("inner", config(), clock=clock)
        inner.force_open()
        nested = CircuitBreakerTransport(CircuitBreakerTransport(httpx.HTTPTransport(), breaker=inner), breaker=breaker)
        with httpx.Client(transport=nested) as nested_client, pytest.raises(HTTPCircuitOpenError) as rejected:
            nested_client.get(server.url)
        assert rejected.value.name == "inner"
    assert breaker.is_closed
    assert breaker.snapshot().calls == {"success": 1, "failure": 0, "ignored": 2, "rejected": 0}


# -- Retry-After -----------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0),
    ("100000", 300.0),  # capped by max_open_timeout
    ("5", OPEN_TIMEOUT),  # shorter than the configured timeout: no effect
    (None, OPEN_TIMEOUT),
])
def test_retry_after_lengthens_the_open_timeout(server: FaultServer, clock: FakeClock, header: str | None,
                                                 expected: float) -> None:
    breaker = CircuitBreaker("throttled", config(failure_threshold=1), clock=clock)
    server.mode = "throttle"
    server.retry_after = header
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        assert client.get(server.url).status_code == 429
        assert breaker.snapshot().retry_after == pytest.approx(expected)
        server.mode = "healthy"
        clock.advance(expected - 1)
        with pytest.raises(HTTPCircuitOpenError):
            client.get(server.url)
        clock.advance(1.5)
        assert client.get(server.url).status_code == 200


def test_retry_after_as_an_http_date(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("dated", config(failure_threshold=1), clock=clock)
    server.mode = "unavailable"
    server.retry_after = email.utils.formatdate(time.time() + 90, usegmt=True)
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        assert client.get(server.url).status_code == 503
    retry_after = breaker.snapshot().retry_after
    assert retry_after is not None and 85 <= retry_after <= 91


def test_retry_after_parsing() -> None:
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 60) == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 60) == 0.0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad) is None


# -- the open-circuit error ---------------------------------------------------------------


def test_rejection_is_an_httpx_error_existing_handlers_catch(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("rejecting", config(), clock=clock)
    breaker.force_open()
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        try:
            client.get(f"{server.url}/secret?token=abc")
        except httpx.HTTPError as exc:
            caught = exc
    assert isinstance(caught, CircuitOpenError) and isinstance(caught, httpx.TransportError)
    assert caught.state is CircuitState.FORCED_OPEN and caught.retry_after is None
    assert caught.request.url.path == "/secret"
    assert "secret" not in str(caught) and "token" not in str(caught)
    assert server.requests == 0


# -- streams --------------------------------------------------------------------------------


def test_a_read_error_while_streaming_is_a_failure(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("streams", config(), clock=clock)
    server.mode = "truncate"
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        for _ in range(3):
            with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", server.url) as response:
                assert response.status_code == 200
                for _chunk in response.iter_bytes():
                    pass
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(HTTPCircuitOpenError), client.stream("GET", server.url):
            pass


def test_a_stream_with_a_healthy_head_is_a_success_even_when_closed_early(server: FaultServer,
                                                                           clock: FakeClock) -> None:
    breaker = CircuitBreaker("early", config(), clock=clock)
    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        with client.stream("GET", server.url) as response:
            assert response.status_code == 200
            assert breaker.snapshot().calls["success"] == 0  # judged when the body ends
        assert breaker.snapshot().calls["success"] == 1
        with client.stream("GET", f"{server.url}/status/500") as response:
            assert breaker.snapshot().calls["failure"] == 1  # a failing head is judged at once


def test_async_stream_read_error_is_a_failure(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("async_streams", config(failure_threshold=1), clock=clock)
    server.mode = "truncate"

    async def main() -> None:
        transport = AsyncCircuitBreakerTransport(httpx.AsyncHTTPTransport(), breaker=breaker)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("GET", server.url) as response:
                    async for _chunk in response.aiter_bytes():
                        pass

    asyncio.run(main())
    assert breaker.state is CircuitState.OPEN


# -- hand-wired routing -------------------------------------------------------------------------


def test_selector_picks_a_breaker_per_request_and_none_leaves_it_unprotected(server: FaultServer,
                                                                            clock: FakeClock) -> None:
    breaker = CircuitBreaker("selected", config(), clock=clock)
    calls: list[Call] = []

    def selector(call: Call) -> CircuitBreaker | None:
        calls.append(call)
        return breaker if call.method == "GET" else None

    with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), selector=selector)) as client:
        client.get(f"http://user:pw@127.0.0.1:{server.port}/a?b=c")
        client.post(server.url, content=b"x")
    assert breaker.snapshot().calls["success"] == 1
    assert calls[0].target == f"http://127.0.0.1:{server.port}"
    assert calls[0].url == f"http://127.0.0.1:{server.port}/a?b=c"
    assert [c.method for c in calls] == ["GET", "POST"]


def test_a_broken_selector_or_hook_never_changes_the_outcome(server: FaultServer, clock: FakeClock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def raising(call: Call) -> CircuitBreaker | None:
        raise RuntimeError("broken selector")

    def wrong_type(call: Call) -> Any:
        return "not a breaker"

    for selector in (raising, wrong_type):
        with httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), selector=selector)) as client:
            assert client.get(server.url).status_code == 200
    assert "unprotected" in caplog.text

    class BrokenClassifier:
        @hookimpl
        def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
            raise RuntimeError("broken hook")

    breaker = CircuitBreaker("broken_hooks", config(), clock=clock)
    server.mode = "error"
    with activated(BrokenClassifier(), breakers=(breaker,)), \
            httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker)) as client:
        assert client.get(server.url).status_code == 500
    assert breaker.snapshot().calls["failure"] == 1  # the default rules decided


def test_bad_arguments_name_the_field() -> None:
    breaker = CircuitBreaker("args")
    with pytest.raises(ValueError, match="breaker, selector"):
        CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker, selector=lambda call: None)
    with pytest.raises(ValueError, match=r"failure_statuses: '6xx' is not allowed"):
        CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker, failure_statuses=["6xx"])
    with pytest.raises(ValueError, match=r"fallback: .*'redis'.* is not allowed; use \{type: stale_cache"):
        CircuitBreakerTransport(httpx.HTTPTransport(), breaker=breaker, fallback={"type": "redis"})
    with pytest.raises(ValueError, match="transport: "):
        CircuitBreakerTransport(httpx.AsyncHTTPTransport(), breaker=breaker)  # type: ignore[arg-type]


def test_validate_settings_names_field_value_and_allowed() -> None:
    validate_settings("ok", {"failure_statuses": [429, "5xx"], "fallback": {"type": "static", "status": 503}})
    validate_settings("other_keys_are_not_ours", {"failure_codes": ["UNAVAILABLE"], "preset": "default"})
    cases = [
        ({"failure_statuses": "5xx"}, r"^failure_statuses: '5xx' is not allowed; use a list"),
        ({"failure_statuses": [700]}, r"^failure_statuses: 700 is not allowed"),
        ({"fallback": {"type": "stale_cache", "ttl": "soon"}}, r"^fallback\.ttl: 'soon'"),
        ({"fallback": {"type": "stale_cache", "max_entries": 0}}, r"fallback\.max_entries: 0 is not allowed"),
        ({"fallback": {"type": "static", "status": 99}}, r"fallback\.status: 99 is not allowed; use an HTTP"),
        ({"fallback": {"type": "static", "colour": "red"}}, r"fallback\.colour: 'red' is not allowed"),
    ]
    for section, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_settings("a", section)


def test_the_config_loader_reports_http_settings_with_their_location() -> None:
    import otel_cb

    with pytest.raises(ValueError, match=r"circuit_breakers\.api\.fallback\.ttl.*'soon' is not a duration"):
        otel_cb.instrument({"circuit_breakers": {"api": {"fallback": {"type": "stale_cache", "ttl": "soon"}}}},
                           disabled=())


# -- auto-patching ----------------------------------------------------------------------------


@contextlib.contextmanager
def patches() -> Iterator[None]:
    """Apply the integration's patches as the engine does, and remove exactly them afterwards."""
    originals = [(httpx.HTTPTransport, "handle_request"), (httpx.AsyncHTTPTransport, "handle_async_request")]
    saved = [vars(owner)[name] for owner, name in originals]
    for patch in integration.otel_cb_patches():
        assert patch.module == "httpx" and patch.integration == "httpx"
        wrapt.wrap_function_wrapper(patch.module, patch.target, patch.load_wrapper())
    try:
        yield
    finally:
        for (owner, name), original in zip(originals, saved, strict=True):
            setattr(owner, name, original)


@pytest.fixture
def patched() -> Iterator[None]:
    with patches():
        yield


def test_patches_protect_clients_built_before_and_custom_mounts(server: FaultServer, clock: FakeClock) -> None:
    breaker = CircuitBreaker("auto", config(failure_threshold=2), clock=clock)
    early = httpx.Client()
    mounted = httpx.Client(mounts={"http://": httpx.HTTPTransport(retries=0)})
    try:
        with patches(), activated(RouteTo(f"http://127.0.0.1:{server.port}", "auto"), breakers=(breaker,)):
            server.mode = "error"
            early.get(server.url)
            mounted.get(server.url)
            assert breaker.state is CircuitState.OPEN
            before = server.requests
            with httpx.Client() as later, pytest.raises(HTTPCircuitOpenError):
                later.get(server.url)
            with pytest.raises(HTTPCircuitOpenError):
                mounted.get(server.url)
            assert server.requests == before
        # Unpatched again: the original methods are back and the same request goes out.
        assert not isinstance(vars(httpx.HTTPTransport)["handle_request"], wrapt.ObjectProxy)
        assert early.get(server.url).status_code == 500
    finally:
        early.close()
        mounted.close()


def test_patched_async_transport(server: FaultServer, clock: FakeClock, patched: None) -> None:
    breaker = CircuitBreaker("auto_async", config(failure_threshold=1), clock=clock)

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            server.mode = "error"
            await client.get(server.url)
            with pytest.raises(HTTPCircuitOpenError):
                await client.get(server.url)

    with activated(RouteTo(f"http://127.0.0.1:{server.port}", "auto_async"), breakers=(breaker,)):
        asyncio.run(main())
    assert server.requests == 1


def test_patches_leave_unrouted_and_uninstrumented_calls_alone(server: FaultServer, patched: None) -> None:
    # Not instrumented: no breaker anywhere.
    assert httpx.get(server.url).status_code == 200
    with activated(RouteTo("http://elsewhere:80", "other")) as registry:
        server.mode = "error"
        for _ in range(10):
            assert httpx.get(server.url).status_code == 500
        assert list(registry) == []


def test_hand_wired_transport_inside_patches_guards_once(server: FaultServer, clock: FakeClock,
                                                          patched: None) -> None:
    mine = CircuitBreaker("mine", config(), clock=clock)
    auto = CircuitBreaker("auto_too", config(), clock=clock)
    with activated(RouteTo(f"http://127.0.0.1:{server.port}", "auto_too"), breakers=(auto,)), \
            httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=mine)) as client:
        client.get(server.url)
    assert mine.snapshot().calls["success"] == 1
    assert auto.snapshot().calls["success"] == 0


# -- through the engine: automatic breakers per destination ------------------------------------


@pytest.fixture
def instrumented() -> Iterator[None]:
    import otel_cb

    try:
        yield
    finally:
        otel_cb.uninstrument()


def test_instrument_gives_each_destination_its_own_breaker(server: FaultServer, instrumented: None) -> None:
    import otel_cb

    otel_cb.instrument({"circuit_breakers": {"defaults": {"failure_threshold": 2}}}, disabled=())
    other = FaultServer().start()
    try:
        server.mode = "error"
        with httpx.Client() as client:
            for _ in range(2):
                client.get(f"{server.url}/private/path?token=secret")
            assert client.get(other.url).status_code == 200
            with pytest.raises(HTTPCircuitOpenError) as rejected:
                client.get(f"{server.url}/elsewhere")
        names = {breaker.name for breaker in otel_cb.registry}
        tripped = rejected.value.name
        assert tripped in names and str(server.port) in tripped
        assert not any(word in name for name in names for word in ("private", "token", "secret", "elsewhere"))
        assert any(str(other.port) in name for name in names - {tripped})
        assert other.requests == 1 and server.requests == 2
    finally:
        other.stop()
    otel_cb.uninstrument()
    assert not isinstance(vars(httpx.HTTPTransport)["handle_request"], wrapt.ObjectProxy)
    assert httpx.get(server.url).status_code == 500


def test_loading_the_plugin_does_not_import_httpx() -> None:
    # The plugin loads at every start-up under otel-cb-instrument; httpx costs ~90 ms to import.
    code = ("import sys, otel_cb.integrations.httpx as m; m.otel_cb_patches(); m.validate_settings('a', {}); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('httpx', 'httpcore')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("url", ["example.org/path", "invalid://example.org/", "ftp://example.org/x"])
def test_a_request_the_client_refuses_itself_creates_no_breaker(url: str, instrumented: None) -> None:
    import otel_cb

    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 10}}, disabled=())
    before = {breaker.name for breaker in otel_cb.registry}

    async def async_get() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(url)

    with pytest.raises(httpx.UnsupportedProtocol), httpx.Client() as client:  # as without otel-cb
        client.get(url)
    with pytest.raises(httpx.UnsupportedProtocol):
        asyncio.run(async_get())
    assert {breaker.name for breaker in otel_cb.registry} == before


def test_an_empty_host_gets_no_automatic_breaker(instrumented: None) -> None:
    import otel_cb

    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 10}}, disabled=())
    before = {breaker.name for breaker in otel_cb.registry}
    with pytest.raises(httpx.ConnectError), httpx.Client() as client:
        client.send(httpx.Request("GET", "http://:80/nothing"))
    assert {breaker.name for breaker in otel_cb.registry} == before


def test_the_patched_async_transport_returns_httpx_s_own_coroutine_when_unprotected() -> None:
    import inspect

    with patches():
        transport = httpx.AsyncHTTPTransport()
        assert inspect.iscoroutinefunction(httpx.AsyncHTTPTransport.handle_async_request)
        pending = transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:1/"))
        try:  # not instrumented: nothing routes, the call is httpx's own coroutine
            assert pending.cr_code is vars(httpx.AsyncHTTPTransport)["handle_async_request"].__wrapped__.__code__
        finally:
            pending.close()


class _Streamed(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory body", "streamed body"])
def test_a_finished_response_is_judged_and_freed_without_the_cycle_collector(streamed: bool) -> None:
    import gc
    import weakref

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Streamed()) if streamed else httpx.Response(200, content=b"ok")

    breaker = CircuitBreaker("freed", config())
    transport = CircuitBreakerTransport(httpx.MockTransport(answer), breaker=breaker)
    gc.disable()
    try:
        response = transport.handle_request(httpx.Request("GET", "http://freed.example/"))
        # An in-memory body was read and closed before it reached us: judged at once.
        assert breaker.snapshot().calls["success"] == (0 if streamed else 1)
        assert response.read() == b"ok"
        response.close()
        alive = weakref.ref(response)
        del response
        assert alive() is None  # our body wrapper does not tie the response into a reference cycle
    finally:
        gc.enable()
    assert breaker.snapshot().calls["success"] == 1
