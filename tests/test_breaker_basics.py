"""The breaker's main transitions, with a fake clock."""

from __future__ import annotations

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState

from .conftest import FakeClock


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom


def trip(cb: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            cb.call(fail)


def test_consecutive_failures_open_then_probe_and_close(clock: FakeClock) -> None:
    config = CircuitBreakerConfig(failure_threshold=3, success_threshold=2, open_timeout=10)
    cb = CircuitBreaker("svc", config, clock=clock)
    trip(cb, 3)
    assert cb.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        cb.call(lambda: 1)
    assert info.value.name == "svc" and info.value.retry_after == pytest.approx(10)
    clock.advance(10)
    assert cb.call(lambda: 1) == 1
    assert cb.state is CircuitState.HALF_OPEN
    assert cb.call(lambda: 2) == 2
    assert cb.state is CircuitState.CLOSED


def test_failed_call_reraises_the_original_exception(clock: FakeClock) -> None:
    cb = CircuitBreaker("svc", clock=clock)
    error = Boom("original")

    def raise_it() -> None:
        raise error

    with pytest.raises(Boom) as info:
        cb.call(raise_it)
    assert info.value is error


def test_config_errors_name_field_value_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"failure_rate_threshold: 1\.5 .*\(0, 1\]"):
        CircuitBreakerConfig(failure_rate_threshold=1.5)
    with pytest.raises(ValueError, match=r"bogus: unknown setting"):
        CircuitBreakerConfig.from_dict({"bogus": 1})
    assert CircuitBreakerConfig.from_dict({"open_timeout": "2m"}).open_timeout == 120.0
