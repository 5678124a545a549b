"""The pytest plugin (``otel_cb.pytest_plugin``): fresh breakers per test while instrumented, inert otherwise.

Each scenario is a small test suite run by pytester in a subprocess of its
own, since instrumenting patches httpx for the whole process. The suites call
a closed loopback port, the way a suite tests its error handling against a
mock host: a refused connection is a failure, and with a threshold of 1 the
second call is rejected unless the breaker was made fresh.
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerRegistry, _plugins
from otel_cb.plugin import Call, hookimpl

pytest_plugins = ["pytester"]

OTHERS = sorted(ep.name for ep in entry_points(group="otel_cb") if ep.name != "httpx")


@pytest.fixture(autouse=True)
def installed() -> None:
    names = {ep.name for ep in entry_points(group="pytest11")}
    if "otel_cb" not in names or "httpx" not in {ep.name for ep in entry_points(group="otel_cb")}:
        pytest.skip("otel-cb's entry points are not installed (pip install -e .)")


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


INSTRUMENT = """
    import otel_cb
    otel_cb.instrument({{"circuit_breakers": {{
        "defaults": {{"failure_threshold": 1, "open_timeout": "60s"}},
        "configured": {{"failure_threshold": 1, "open_timeout": "60s",
                        "match": {{"http": ["http://127.0.0.1:{port}"]}}}}}}}}, disabled={others!r})
"""

COMMON = """
    import sys
    import httpx
    import pytest
    import otel_cb
    from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError

    HELD = otel_cb.registry.add(CircuitBreaker("by_hand", CircuitBreakerConfig(failure_threshold=1)))
    CONFIGURED = "http://127.0.0.1:{port}"
    AUTOMATIC = "http://localhost:{port}"  # no rule matches: an automatic breaker
    SEEN = {{}}

    def outcome(url):
        try:
            httpx.get(url, timeout=5)
        except CircuitOpenError:
            return "rejected"
        except httpx.ConnectError:
            return "refused"
        return "answered"

    def trip():
        assert [outcome(CONFIGURED), outcome(CONFIGURED)] == ["refused", "rejected"]
        assert [outcome(AUTOMATIC), outcome(AUTOMATIC)] == ["refused", "rejected"]
        HELD.force_open()
"""

TRIP_THEN_FRESH = """
    def test_trip(pytestconfig):
        assert pytestconfig.pluginmanager.has_plugin("otel_cb")
        trip()
        SEEN["configured"] = otel_cb.registry.get("configured")
        SEEN["automatic"] = otel_cb.registry.get("http://localhost:{port}")
        assert SEEN["configured"].is_open and SEEN["automatic"].is_open

    def test_the_next_test_starts_fresh():
        assert outcome(CONFIGURED) == "refused"
        assert outcome(AUTOMATIC) == "refused"
        assert HELD.is_closed and otel_cb.registry.get("by_hand") is HELD
        # Named breakers are reset in place; automatic ones are new.
        assert otel_cb.registry.get("configured") is SEEN["configured"]
        automatic = otel_cb.registry.get("http://localhost:{port}")
        assert automatic is not SEEN["automatic"]
        assert automatic.snapshot().calls == {{"success": 0, "failure": 1, "ignored": 0, "rejected": 0}}

    def test_trip_again():
        trip()

    @pytest.mark.otel_cb_keep_state
    def test_marked_keeps_the_state():
        assert outcome(CONFIGURED) == "rejected"
        assert outcome(AUTOMATIC) == "rejected"
        assert HELD.is_open
"""

NOT_INSTRUMENTED = """
    def test_trip(pytestconfig):
        assert pytestconfig.pluginmanager.has_plugin("otel_cb")
        assert outcome(CONFIGURED) == "refused"
        HELD.force_open()

    def test_nothing_is_reset():
        assert HELD.is_open
        assert outcome(CONFIGURED) == "refused"
        # Nothing that instrumenting loads (the breaker's default telemetry may load OpenTelemetry's
        # API, never the SDK).
        assert "otel_cb._plugins" not in sys.modules
        assert not any(name.split(".")[0] == "wrapt" or name.startswith("opentelemetry.sdk") for name in sys.modules)
        assert "otel_cb.integrations" not in sys.modules
"""


def run_suite(pytester: pytest.Pytester, port: int, conftest: str, tests: str) -> pytest.RunResult:
    pytester.makeconftest(textwrap.dedent(conftest.format(port=port, others=OTHERS)))
    pytester.makepyfile(test_suite=textwrap.dedent(COMMON.format(port=port)) + textwrap.dedent(tests.format(port=port)))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")


def test_a_trip_in_one_test_does_not_leak_into_the_next(pytester: pytest.Pytester, closed_port: int) -> None:
    result = run_suite(pytester, closed_port, INSTRUMENT, TRIP_THEN_FRESH)
    result.assert_outcomes(passed=4)


def test_instrumenting_in_a_fixture_counts_too(pytester: pytest.Pytester, closed_port: int) -> None:
    # Instrumented after collection, by a session fixture: the plugin looks at every test, not at start-up.
    fixture = "import pytest\n@pytest.fixture(scope='session', autouse=True)\ndef agent():\n" + textwrap.indent(
        textwrap.dedent(INSTRUMENT), "    ") + "\n    yield\n    otel_cb.uninstrument()\n"
    result = run_suite(pytester, closed_port, fixture, TRIP_THEN_FRESH)
    result.assert_outcomes(passed=4)


def test_without_the_plugin_the_trip_leaks(pytester: pytest.Pytester, closed_port: int) -> None:
    # The control: what the plugin prevents does happen without it.
    pytester.makeconftest(textwrap.dedent(INSTRUMENT.format(port=closed_port, others=OTHERS)))
    pytester.makepyfile(test_suite=textwrap.dedent(COMMON.format(port=closed_port)) + textwrap.dedent("""
        def test_trip():
            trip()

        def test_leaks():
            assert outcome(CONFIGURED) == "rejected"
            assert outcome(AUTOMATIC) == "rejected"
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:otel_cb", "-q")
    result.assert_outcomes(passed=2)


def test_inert_when_not_instrumented(pytester: pytest.Pytester, closed_port: int) -> None:
    result = run_suite(pytester, closed_port, "", NOT_INSTRUMENTED)
    result.assert_outcomes(passed=2)


def test_the_marker_is_registered_for_strict_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.otel_cb_keep_state
        def test_marked():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", "-q")
    result.assert_outcomes(passed=1)


# -- reset_breakers() itself, on a registry of its own -----------------------------------------


class ToDestination:
    @hookimpl
    def otel_cb_select_breaker(self, call: Call) -> str:
        return call.target


@pytest.fixture
def active() -> Iterator[Callable[[dict[str, Any]], _plugins.Active]]:
    def make(default_section: dict[str, Any]) -> _plugins.Active:
        manager = _plugins.new_manager()
        manager.register(ToDestination(), name="route")
        registry = CircuitBreakerRegistry()
        registry.add(CircuitBreaker("configured", CircuitBreakerConfig(failure_threshold=1)))
        state = _plugins.Active(manager, registry, CircuitBreakerConfig(failure_threshold=1), {},
                                default_section, created=["configured"])
        _plugins.activate(state)
        return state

    yield make
    _plugins.deactivate()


def fail(breaker: CircuitBreaker) -> None:
    with pytest.raises(OSError):
        breaker.call(_refuse)


def _refuse() -> None:
    raise OSError("refused")


def test_automatic_breakers_are_dropped_and_named_ones_reset_in_place(active: Any) -> None:
    state = active({})
    configured = state.registry.get("configured")
    for _ in range(3):
        automatic = _plugins.select_breaker(Call(kind="http", target="http://mock:80"))
        assert automatic is not None and automatic.is_closed
        fail(automatic)
        fail(configured)
        assert automatic.is_open and configured.is_open
        _plugins.reset_breakers()
        assert state.registry.get("http://mock:80") is None
        assert configured.is_closed and state.registry.get("configured") is configured
        # uninstrument() still knows what to remove, and the list does not grow test after test.
        assert state.created == ["configured"]
    assert configured.snapshot().calls["failure"] == 3  # reset in place keeps the counters


def test_a_fresh_breaker_is_left_alone(active: Any) -> None:
    state = active({})
    configured = state.registry.get("configured")
    events: list[object] = []
    configured.add_listener(events.append)
    _plugins.reset_breakers()
    assert events == []


def test_with_shared_state_automatic_breakers_are_reset_in_place(active: Any) -> None:
    # Their state lives in the shared store too: a new local breaker would read "open" back from it.
    state = active({"shared_state": {"backend": "redis", "url": "redis://127.0.0.1:1/0", "namespace": "x"}})
    automatic = _plugins.select_breaker(Call(kind="http", target="http://mock:80"))
    assert automatic is not None
    fail(automatic)
    _plugins.reset_breakers()
    assert state.registry.get("http://mock:80") is automatic and automatic.is_closed


def test_does_nothing_while_not_instrumented() -> None:
    assert _plugins.active() is None
    _plugins.reset_breakers()
