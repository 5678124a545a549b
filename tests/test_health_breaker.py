"""Health checks of a breaker: what a check's result does while open, and the background monitor.

Checks are driven by hand (``health_check_interval=None``) on the fake clock,
except where the background monitor itself is under test.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, StateChangeEvent, _observers

from .conftest import FakeClock

ROOT = Path(__file__).resolve().parent.parent
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Dependency:
    """A dependency whose health endpoint and real calls can disagree."""

    def __init__(self) -> None:
        self.healthy = True  # what the health check reports
        self.serving = True  # what real calls see
        self.calls = 0
        self.checks = 0

    def check(self) -> bool:
        self.checks += 1
        return self.healthy

    def __call__(self) -> str:
        self.calls += 1
        if not self.serving:
            raise ConnectionError("down")
        return "ok"


def make(clock: FakeClock, **overrides: Any) -> tuple[CircuitBreaker, Dependency, list[StateChangeEvent]]:
    settings: dict[str, Any] = {"failure_threshold": 2, "open_timeout": 10.0, "max_open_timeout": 100.0,
                                "success_threshold": 2, "half_open_max_calls": 1, "healthy_threshold": 2,
                                "health_check_interval": None, **overrides}
    dependency = Dependency()
    breaker = CircuitBreaker("checked", CircuitBreakerConfig(**settings), clock=clock, health_check=dependency.check)
    events: list[StateChangeEvent] = []
    breaker.add_listener(events.append)
    return breaker, dependency, events


def call(breaker: CircuitBreaker, dependency: Dependency) -> str:
    """'ok', 'failed' or 'rejected'."""
    try:
        return breaker.call(dependency)
    except ConnectionError:
        return "failed"
    except CircuitOpenError:
        return "rejected"


def trip(breaker: CircuitBreaker, dependency: Dependency) -> None:
    dependency.healthy = dependency.serving = False
    while breaker.state is CLOSED:
        call(breaker, dependency)
    assert breaker.state is OPEN


def reasons(events: list[StateChangeEvent]) -> list[tuple[str, str]]:
    return [(e.state.value, e.reason.value) for e in events]


def test_no_user_call_is_a_probe_while_the_check_fails(clock: FakeClock) -> None:
    breaker, dependency, _ = make(clock)
    trip(breaker, dependency)
    reached = dependency.calls
    for _ in range(50):  # 50 s: five open timeouts
        clock.advance(1.0)
        assert breaker.check_health() is False
        assert call(breaker, dependency) == "rejected"
    assert dependency.calls == reached and breaker.state is OPEN
    assert breaker.snapshot().retry_after == 0.0  # never negative, though the timeout has passed


def test_passes_move_it_to_half_open_at_once_and_user_calls_confirm(clock: FakeClock) -> None:
    breaker, dependency, events = make(clock)
    trip(breaker, dependency)
    dependency.healthy = dependency.serving = True
    clock.advance(1.0)
    assert breaker.check_health() is True
    assert breaker.state is OPEN  # one pass of two
    clock.advance(1.0)
    assert breaker.check_health() is True
    assert breaker.state is HALF_OPEN and events[-1].reason.value == "health_check_passed"
    assert [call(breaker, dependency), call(breaker, dependency)] == ["ok", "ok"]
    assert breaker.state is CLOSED and events[-1].reason.value == "probe_success"
    assert breaker.snapshot().health_checks == {"passed": 2, "failed": 0}


def test_a_failed_check_between_passes_starts_the_count_again(clock: FakeClock) -> None:
    breaker, dependency, _ = make(clock)
    trip(breaker, dependency)
    dependency.healthy = True
    breaker.check_health()
    dependency.healthy = False
    breaker.check_health()
    dependency.healthy = True
    breaker.check_health()
    assert breaker.state is OPEN
    breaker.check_health()
    assert breaker.state is HALF_OPEN


def test_a_shallow_check_loses_its_authority_and_costs_no_more_probes_than_timed_probing(clock: FakeClock) -> None:
    breaker, dependency, events = make(clock)
    trip(breaker, dependency)
    dependency.healthy = True  # says healthy; real calls still fail
    opened = clock.now
    clock.advance(1.0)
    breaker.check_health()
    breaker.check_health()
    assert breaker.state is HALF_OPEN
    reached = dependency.calls
    assert call(breaker, dependency) == "failed"  # the confirmation fails
    assert breaker.state is OPEN
    # The early probe took the place of the one due at opened + 10: the next is at opened + 20.
    assert events[-1].open_timeout == pytest.approx(opened + 20.0 - clock.now)
    probes_at = []
    while clock.now < opened + 60.0:
        clock.advance(0.5)
        breaker.check_health()  # passes, but only vetoes now
        if call(breaker, dependency) != "rejected":
            probes_at.append(clock.now - opened)
    assert probes_at == [20.0, 30.0, 40.0, 50.0, 60.0]  # the timed schedule, as without a check
    assert dependency.calls - reached - 1 == len(probes_at)
    dependency.serving = True  # recovered: the next timed probe confirms and the check is trusted again
    clock.advance(10.0)
    assert [call(breaker, dependency), call(breaker, dependency)] == ["ok", "ok"]
    assert breaker.state is CLOSED
    trip(breaker, dependency)
    dependency.healthy = dependency.serving = True
    breaker.check_health()
    breaker.check_health()
    assert breaker.state is HALF_OPEN and events[-1].reason.value == "health_check_passed"


def test_an_untrusted_check_still_vetoes_probes(clock: FakeClock) -> None:
    breaker, dependency, _ = make(clock)
    trip(breaker, dependency)
    dependency.healthy = True
    breaker.check_health()
    breaker.check_health()
    call(breaker, dependency)  # fails: authority lost
    dependency.healthy = False
    clock.advance(100.0 - 1.0)  # past the timed deadline, before max_open_timeout of this stay
    breaker.check_health()
    assert call(breaker, dependency) == "rejected"


def test_a_check_that_keeps_failing_gives_way_to_timed_probes_after_max_open_timeout(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    breaker, dependency, events = make(clock)
    trip(breaker, dependency)
    dependency.serving = True  # serves, but the check keeps saying unhealthy
    for _ in range(99):
        clock.advance(1.0)
        breaker.check_health()
        assert call(breaker, dependency) == "rejected"
    clock.advance(1.0)
    with caplog.at_level(logging.WARNING, logger="otel_cb"):
        breaker.check_health()
        breaker.check_health()
    assert caplog.text.count("health check has failed for max_open_timeout") == 1
    assert call(breaker, dependency) == "ok"
    assert reasons(events)[-1] == ("half_open", "open_timeout_elapsed")


def test_without_a_check_the_move_to_half_open_shows_without_a_call(clock: FakeClock) -> None:
    breaker = CircuitBreaker("timed", CircuitBreakerConfig(failure_threshold=1, open_timeout=10.0), clock=clock)
    events: list[StateChangeEvent] = []
    breaker.add_listener(events.append)
    with pytest.raises(ConnectionError):
        breaker.call(_down())
    clock.advance(9.9)
    assert breaker.snapshot().state is OPEN and breaker.is_open
    clock.advance(0.1)
    assert breaker.snapshot().state is HALF_OPEN
    assert breaker.is_half_open and not breaker.is_open
    assert reasons(events) == [("open", "consecutive_failures"), ("half_open", "open_timeout_elapsed")]


def _down() -> Dependency:
    dependency = Dependency()
    dependency.serving = False
    return dependency


def test_attaching_and_detaching_a_check(clock: FakeClock) -> None:
    breaker = CircuitBreaker("late", CircuitBreakerConfig(failure_threshold=1, open_timeout=10.0,
                                                          health_check_interval=None), clock=clock)
    with pytest.raises(ValueError, match="has no health check"):
        breaker.check_health()
    with pytest.raises(ValueError, match=r"^health_check: 5 is not allowed"):
        breaker.attach_health_check(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^health_check: 'x' is not allowed"):
        CircuitBreaker("bad", health_check="x")  # type: ignore[arg-type]
    dependency = _down()
    call(breaker, dependency)
    assert breaker.state is OPEN
    dependency.healthy = False
    breaker.attach_health_check(dependency.check)  # the open stay takes the check at once
    assert breaker.health_check == dependency.check
    clock.advance(20.0)
    breaker.check_health()
    assert breaker.state is OPEN
    breaker.attach_health_check(None)  # timed probing again
    assert breaker.state is HALF_OPEN


def test_checks_while_closed_change_nothing_but_are_counted_and_observed(clock: FakeClock) -> None:
    seen: list[tuple[str, bool]] = []

    class Observer:
        def health_checked(self, breaker: CircuitBreaker, passed: bool) -> None:
            seen.append((breaker.name, passed))

    observer = Observer()
    _observers.add_observer(observer)
    try:
        breaker, dependency, events = make(clock)
        assert breaker.check_health() is True
        dependency.healthy = False
        assert breaker.check_health() is False
    finally:
        _observers.remove_observer(observer)
    assert breaker.state is CLOSED and events == []
    assert seen == [("checked", True), ("checked", False)]
    assert breaker.snapshot().health_checks == {"passed": 1, "failed": 1}


def test_coroutine_checks(clock: FakeClock) -> None:
    answers = iter([True, True, True])

    async def check() -> bool:
        await asyncio.sleep(0)
        return next(answers)

    breaker = CircuitBreaker("async", CircuitBreakerConfig(failure_threshold=1, health_check_interval=None),
                             clock=clock, health_check=check)
    call(breaker, _down())

    async def main() -> list[bool]:
        return [await breaker.check_health_async(), await breaker.check_health_async()]

    assert asyncio.run(main()) == [True, True]
    assert breaker.state is HALF_OPEN
    assert breaker.check_health() is True  # from sync code: on the monitor's loop


def test_a_slow_check_fails_at_its_timeout(clock: FakeClock) -> None:
    release = threading.Event()
    breaker = CircuitBreaker("slow", CircuitBreakerConfig(health_check_timeout=0.05, health_check_interval=None),
                             clock=clock, health_check=release.wait)
    assert breaker.check_health() is False
    release.set()


def test_the_monitor_checks_an_open_breaker_until_it_goes_half_open() -> None:
    moved = threading.Event()
    dependency = _down()
    config = CircuitBreakerConfig(failure_threshold=1, health_check_interval=0.01, healthy_threshold=2)
    breaker = CircuitBreaker("monitored", config, health_check=dependency.check)
    breaker.add_listener(lambda event: moved.set() if event.state is HALF_OPEN else None)
    dependency.healthy = False
    call(breaker, dependency)
    assert breaker.state is OPEN
    while dependency.checks < 3:
        moved.wait(0.01)
    assert breaker.state is OPEN  # failing checks: still open
    dependency.healthy = True
    assert moved.wait(10)
    assert breaker.snapshot().health_checks["passed"] == 2


def test_the_monitor_starts_when_a_breaker_with_a_check_opens() -> None:
    script = (
        "import otel_cb, otel_cb._health as health\n"
        "config = otel_cb.CircuitBreakerConfig(failure_threshold=1)\n"
        "b = otel_cb.CircuitBreaker('b', config, health_check=lambda: False)\n"
        "b.call(lambda: 1)\n"
        "assert not health.monitor.running\n"
        "try:\n"
        "    b.call(lambda: 1 / 0)\n"
        "except ZeroDivisionError:\n"
        "    pass\n"
        "assert b.state is otel_cb.CircuitState.OPEN and health.monitor.running\n"
        "timed = otel_cb.CircuitBreaker('t', otel_cb.CircuitBreakerConfig(health_check_interval=None),\n"
        "                               health_check=lambda: True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
