"""Every opening, half-open and manual rule of the breaker, with a fake clock."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, StateChangeEvent
from otel_cb._window import CountWindow, TimeWindow

from .conftest import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

# Every rule off; each test switches on the one it looks at.
QUIET = {"failure_threshold": None, "failure_rate_threshold": None, "slow_call_duration": None}


class Boom(Exception):
    pass


def make(clock: FakeClock, **settings: object) -> tuple[CircuitBreaker, list[StateChangeEvent]]:
    cb = CircuitBreaker("rules", CircuitBreakerConfig(**{**QUIET, **settings}), clock=clock)  # type: ignore[arg-type]
    events: list[StateChangeEvent] = []
    cb.add_listener(events.append)
    return cb, events


def fail(cb: CircuitBreaker, times: int = 1, exc: type[BaseException] = Boom) -> None:
    def raise_it() -> None:
        raise exc

    for _ in range(times):
        with pytest.raises(exc):
            cb.call(raise_it)


def succeed(cb: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert cb.call(lambda: "ok") == "ok"


def taking(clock: FakeClock, seconds: float, outcome: Callable[[], object] = lambda: "ok") -> Callable[[], object]:
    """A call that lasts ``seconds`` on the fake clock."""
    def call() -> object:
        clock.advance(seconds)
        return outcome()
    return call


def trip(cb: CircuitBreaker, clock: FakeClock) -> None:
    fail(cb, cb.config.failure_threshold or 1)
    assert cb.state is OPEN


def rejected(cb: CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        cb.call(lambda: pytest.fail("a rejected call ran"))
    return info.value


# -- closed -> open ---------------------------------------------------------------


def test_consecutive_failures_open_and_a_success_resets_the_run(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=3)
    fail(cb, 2)
    succeed(cb)
    fail(cb, 2)
    assert cb.state is CLOSED and cb.snapshot().consecutive_failures == 2
    fail(cb)
    assert cb.state is OPEN
    assert [(e.previous_state, e.state, e.reason.value) for e in events] == [(CLOSED, OPEN, "consecutive_failures")]


def test_failure_rate_waits_for_minimum_calls(clock: FakeClock) -> None:
    cb, events = make(clock, failure_rate_threshold=0.5, minimum_calls=10)
    fail(cb, 4)
    succeed(cb, 5)
    assert cb.state is CLOSED  # 4 of 9: below minimum_calls
    fail(cb)
    assert cb.state is OPEN and events[-1].reason.value == "failure_rate"  # 5 of 10


def test_a_success_that_fills_the_window_to_minimum_calls_can_open_it(clock: FakeClock) -> None:
    cb, events = make(clock, failure_rate_threshold=0.5, minimum_calls=10)
    fail(cb, 5)
    succeed(cb, 4)
    assert cb.state is CLOSED
    succeed(cb)  # 5 failures of 10 calls: the rate has reached its threshold
    assert cb.state is OPEN and events[-1].reason.value == "failure_rate"


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_rate_threshold=0.5, minimum_calls=4)
    for _ in range(10):
        succeed(cb, 2)
        fail(cb)  # never more than a third once the window holds 4 calls
    assert cb.state is CLOSED
    assert cb.snapshot().failure_rate == pytest.approx(10 / 30)


def test_slow_call_rate_opens_on_slow_successes(clock: FakeClock) -> None:
    cb, events = make(clock, slow_call_duration=2.0, slow_call_rate_threshold=0.5, minimum_calls=4)
    succeed(cb, 2)
    cb.call(taking(clock, 2.0))
    assert cb.state is CLOSED and cb.snapshot().slow_call_rate == pytest.approx(1 / 3)
    cb.call(taking(clock, 5.0))
    assert cb.state is OPEN and events[-1].reason.value == "slow_call_rate"
    assert cb.snapshot().slow_calls == {"success": 2, "failure": 0}


def test_a_call_just_under_slow_call_duration_is_not_slow(clock: FakeClock) -> None:
    cb, _ = make(clock, slow_call_duration=2.0, slow_call_rate_threshold=0.5, minimum_calls=1)
    cb.call(taking(clock, 1.5))
    assert cb.state is CLOSED and cb.snapshot().slow_calls == {"success": 0, "failure": 0}


def test_time_window_forgets_calls_older_than_its_size(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_rate_threshold=0.5, minimum_calls=4, window_size=60)
    fail(cb, 2)
    clock.advance(59.0)
    assert cb.snapshot().buffered_calls == 2
    clock.advance(1.0)  # 60 s on: those two have left the window
    assert cb.snapshot().buffered_calls == 0
    fail(cb)
    succeed(cb)
    assert cb.state is CLOSED and cb.snapshot().buffered_calls == 2  # 3 failures of 4 had they stayed


def test_a_success_after_old_successes_expire_can_open_it(clock: FakeClock) -> None:
    cb, events = make(clock, failure_rate_threshold=0.5, minimum_calls=3, window_size=60)
    succeed(cb, 4)
    clock.advance(30)
    fail(cb, 3)  # 3 of 7
    assert cb.state is CLOSED
    clock.advance(30)  # the 4 successes expire
    succeed(cb)  # 3 failures of 4, on a success: only the aging re-check can see it
    assert cb.state is OPEN and events[-1].reason.value == "failure_rate"


def test_count_window_keeps_only_the_last_calls(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_rate_threshold=0.5, minimum_calls=4, window_type="count", window_size=4)
    fail(cb)
    succeed(cb, 3)  # F S S S: 1 of 4
    succeed(cb)  # the failure falls out: S S S S
    assert cb.snapshot().failure_rate == 0.0 and cb.snapshot().buffered_calls == 4
    fail(cb)  # S S S F
    assert cb.state is CLOSED
    fail(cb)  # S S F F: 2 of 4
    assert cb.state is OPEN


def test_count_window_smaller_than_minimum_calls_still_applies_the_rates(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_rate_threshold=1.0, minimum_calls=10, window_type="count", window_size=3)
    fail(cb, 3)
    assert cb.state is OPEN


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 8), calls=st.lists(st.sampled_from([(False, False), (True, False), (False, True),
                                                               (True, True)]), max_size=20),
       bulk=st.integers(0, 20))
def test_count_window_takes_successes_in_bulk_as_one_by_one(
        size: int, calls: list[tuple[bool, bool]], bulk: int) -> None:
    # The closed state hands over the successes it counted without the lock in bulk.
    one_by_one, in_bulk = CountWindow(size), CountWindow(size)
    for window in (one_by_one, in_bulk):
        for failed, slow in calls:
            window.record(0.0, failed, slow)
    for _ in range(bulk):
        one_by_one.record(0.0, False, False)
    in_bulk.add_successes(bulk)
    assert in_bulk.counts(0.0) == one_by_one.counts(0.0)
    for failed, slow in calls:  # and they age alike afterwards
        one_by_one.record(0.0, failed, slow)
        in_bulk.record(0.0, failed, slow)
        assert in_bulk.counts(0.0) == one_by_one.counts(0.0)


def test_steady_until_bounds_the_successes_that_cannot_move_a_rule() -> None:
    window = TimeWindow(10, check_at=2)  # 1 s buckets
    assert window.steady_until() == -math.inf  # nothing recorded yet
    window.record(100.5, True, False)
    assert window.steady_until() == -math.inf  # below check_at: a success could bring it there
    window.add_success(100.6)
    assert window.steady_until() == 101.0  # the end of the newest bucket: a later success ages it
    window.add_successes(3)
    assert window.counts(100.9) == (5, 1, 0)
    assert window.counts(110.5) == (0, 0, 0)
    count = CountWindow(3, check_at=2)
    count.record(0.0, True, False)
    assert count.steady_until() == -math.inf
    count.add_successes(1)
    assert count.steady_until() == math.inf  # a count window never ages


# -- open -> half-open -> closed / open -------------------------------------------


def test_open_rejects_until_the_timeout_then_admits_a_probe(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=10)
    trip(cb, clock)
    error = rejected(cb)
    assert (error.name, error.state, error.retry_after) == ("rules", OPEN, 10.0)
    clock.advance(9.5)
    assert rejected(cb).retry_after == pytest.approx(0.5)
    assert cb.state is OPEN
    clock.advance(0.5)
    assert cb.state is HALF_OPEN  # reading it moves it: dashboards see it ready to probe without a call
    assert events[-1].reason.value == "open_timeout_elapsed" and events[-1].state is HALF_OPEN
    succeed(cb)  # the first probe
    assert cb.snapshot().calls["success"] == 1


def test_half_open_admits_at_most_max_calls_probes(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, half_open_max_calls=2, success_threshold=2)
    trip(cb, clock)
    clock.advance(5)
    first, second = cb.acquire(), cb.acquire()
    assert cb.state is HALF_OPEN and cb.snapshot().half_open_calls == 2
    error = rejected(cb)
    assert (error.state, error.retry_after) == (HALF_OPEN, 0.0)
    first.release()  # no verdict: the slot comes back
    third = cb.acquire()
    second.record_success()
    third.record_success()
    assert cb.state is CLOSED


def test_success_threshold_consecutive_probe_successes_close_it(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=5, success_threshold=3, half_open_max_calls=1)
    trip(cb, clock)
    clock.advance(5)
    succeed(cb, 2)
    assert cb.state is HALF_OPEN
    succeed(cb)
    assert cb.state is CLOSED and events[-1].reason.value == "probe_success"
    assert cb.snapshot().buffered_calls == 0 and cb.snapshot().consecutive_failures == 0


def test_a_probe_failure_reopens_it(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=5, success_threshold=3)
    trip(cb, clock)
    clock.advance(5)
    succeed(cb, 2)
    fail(cb)
    assert cb.state is OPEN and events[-1].reason.value == "probe_failure"
    clock.advance(5)
    succeed(cb, 2)
    assert cb.state is HALF_OPEN  # the successes before the failure no longer count


def test_a_slow_probe_reopens_it(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=5, slow_call_duration=1.0, success_threshold=1)
    trip(cb, clock)
    clock.advance(5)
    assert cb.call(taking(clock, 1.0)) == "ok"  # the caller still gets its result
    assert cb.state is OPEN and events[-1].reason.value == "probe_failure"


def test_backoff_grows_per_consecutive_reopening_up_to_the_max_and_resets_on_close(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=10, backoff_multiplier=2.0,
                      max_open_timeout=35, success_threshold=1)
    timeouts = []
    trip(cb, clock)
    for _ in range(3):
        timeouts.append(events[-1].open_timeout)
        clock.advance(events[-1].open_timeout or 0)
        fail(cb)  # the probe fails: the k-th reopening
    timeouts.append(events[-1].open_timeout)
    assert timeouts == [10, 20, 35, 35]  # min(10 * 2**k, 35)
    assert rejected(cb).retry_after == 35
    clock.advance(35)
    succeed(cb)
    assert cb.state is CLOSED
    fail(cb)
    assert events[-1].open_timeout == 10


def test_backoff_survives_a_thousand_reopenings(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=1, backoff_multiplier=2.0, max_open_timeout=300)
    trip(cb, clock)
    for _ in range(1100):  # 2.0 ** 1100 overflows a float
        clock.advance(300)
        fail(cb)
    assert cb.state is OPEN and events[-1].open_timeout == 300


def test_jitter_adds_up_to_its_fraction_of_the_timeout(clock: FakeClock) -> None:
    timeouts = set()
    for _ in range(200):
        cb, events = make(clock, failure_threshold=1, open_timeout=10, jitter=0.5)
        trip(cb, clock)
        timeout = events[-1].open_timeout or 0
        assert 10 <= timeout <= 15
        assert rejected(cb).retry_after == pytest.approx(timeout)
        timeouts.add(timeout)
    assert len(timeouts) > 150  # spread, not one value


def test_jitter_applies_after_backoff(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=10, backoff_multiplier=3.0,
                      max_open_timeout=100, jitter=0.1)
    trip(cb, clock)
    clock.advance(11)
    fail(cb)
    assert 30 <= (events[-1].open_timeout or 0) <= 33


def test_retry_after_hint_lengthens_the_open_timeout_up_to_the_max(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=10, max_open_timeout=60)
    cb.acquire().record_failure(retry_after=45)
    assert events[-1].open_timeout == 45
    cb.reset()
    cb.acquire().record_failure(retry_after=600)
    assert events[-1].open_timeout == 60
    cb.reset()
    cb.acquire().record_failure(retry_after=1)  # shorter than open_timeout: ignored
    assert events[-1].open_timeout == 10


# -- what counts -----------------------------------------------------------------


def test_ignored_exceptions_propagate_and_count_as_neither(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=2, ignore_exceptions=(KeyError,))
    fail(cb)
    fail(cb, exc=KeyError)  # does not break the run of failures either
    assert cb.state is CLOSED and cb.snapshot().consecutive_failures == 1
    fail(cb)
    assert cb.state is OPEN
    assert cb.snapshot().calls == {"success": 0, "failure": 2, "ignored": 1, "rejected": 0}


def test_an_ignored_probe_hands_its_slot_back_without_a_verdict(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, ignore_exceptions=(KeyError,),
                 half_open_max_calls=1, success_threshold=1)
    trip(cb, clock)
    clock.advance(5)
    fail(cb, exc=KeyError)
    assert cb.state is HALF_OPEN and cb.snapshot().half_open_calls == 0
    succeed(cb)
    assert cb.state is CLOSED


def test_record_exceptions_limits_what_is_a_failure(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, record_exceptions=(OSError,))
    fail(cb, exc=ValueError)
    assert cb.state is CLOSED and cb.snapshot().calls["ignored"] == 1
    fail(cb, exc=ConnectionError)  # an OSError
    assert cb.state is OPEN


def test_is_failure_decides_instead_of_record_exceptions(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, record_exceptions=(OSError,),
                 is_failure=lambda exc: "fatal" in str(exc))

    def raising(message: str) -> Callable[[], None]:
        def call() -> None:
            raise ValueError(message)
        return call

    with pytest.raises(ValueError):
        cb.call(raising("benign"))
    assert cb.state is CLOSED and cb.snapshot().calls["ignored"] == 1
    with pytest.raises(ValueError):
        cb.call(raising("fatal"))
    assert cb.state is OPEN


def test_is_failure_result_counts_a_returned_value_as_a_failure(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=2, is_failure_result=lambda status: status >= 500)
    assert cb.call(lambda: 503) == 503  # the caller still gets the value
    assert cb.call(lambda: 200) == 200
    assert cb.call(lambda: 503) == 503
    assert cb.state is CLOSED
    assert cb.call(lambda: 500) == 500
    assert cb.state is OPEN
    assert cb.snapshot().calls == {"success": 1, "failure": 3, "ignored": 0, "rejected": 0}


def test_a_raising_is_failure_is_logged_once_and_the_default_rule_decides(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in the predicate")

    cb, _ = make(clock, failure_threshold=2, is_failure=broken)
    with caplog.at_level(logging.DEBUG, logger="otel_cb"):
        fail(cb, 2)  # the caller sees its own exception, not the predicate's
    assert cb.state is OPEN
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "is_failure" in errors[0].getMessage()


def test_a_raising_is_failure_result_counts_the_call_as_a_success(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    cb, _ = make(clock, failure_threshold=1, is_failure_result=lambda result: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="otel_cb"):
        assert cb.call(lambda: "value") == "value"
    assert cb.state is CLOSED and cb.snapshot().calls["success"] == 1
    assert "is_failure_result" in caplog.text


@pytest.mark.parametrize("exc", [KeyboardInterrupt, asyncio.CancelledError, GeneratorExit, SystemExit])
def test_base_exceptions_are_never_failures_and_return_the_probe_slot(clock: FakeClock,
                                                                     exc: type[BaseException]) -> None:
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, half_open_max_calls=1)
    fail(cb, 3, exc=exc)
    assert cb.state is CLOSED and cb.snapshot().calls["failure"] == 0
    trip(cb, clock)
    clock.advance(5)
    fail(cb, exc=exc)
    assert cb.state is HALF_OPEN and cb.snapshot().half_open_calls == 0
    succeed(cb)  # the slot is free again


# -- manual states and stale outcomes ---------------------------------------------


def test_forced_open_rejects_everything_until_reset(clock: FakeClock) -> None:
    cb, events = make(clock, open_timeout=1)
    cb.force_open()
    assert cb.state is CircuitState.FORCED_OPEN and cb.is_open
    clock.advance(1000)
    error = rejected(cb)
    assert (error.state, error.retry_after) == (CircuitState.FORCED_OPEN, None)
    assert "until reset()" in str(error)
    cb.reset()
    succeed(cb)
    assert [(e.state, e.reason.value) for e in events] == [(CircuitState.FORCED_OPEN, "force_open"), (CLOSED, "reset")]


def test_disabled_admits_everything_and_records_nothing(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1)
    cb.disable()
    fail(cb, 5)
    succeed(cb, 5)
    assert cb.state is CircuitState.DISABLED
    assert cb.snapshot().calls == {"success": 0, "failure": 0, "ignored": 0, "rejected": 0}
    cb.reset()
    assert cb.state is CLOSED and [e.reason.value for e in events] == ["disable", "reset"]


def test_reset_forgets_window_run_and_backoff(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=3, failure_rate_threshold=0.5, minimum_calls=4,
                      open_timeout=10, backoff_multiplier=2.0, max_open_timeout=100)
    fail(cb, 2)
    cb.reset()
    assert cb.snapshot().buffered_calls == 0 and cb.snapshot().consecutive_failures == 0
    fail(cb, 2)
    assert cb.state is CLOSED
    fail(cb)
    clock.advance(10)
    fail(cb)  # reopening: 20 s
    assert events[-1].open_timeout == 20
    cb.reset()
    fail(cb, 3)
    assert events[-1].open_timeout == 10


def test_a_stale_outcome_counts_in_stats_but_does_not_move_the_state(clock: FakeClock) -> None:
    cb, events = make(clock, failure_threshold=1, open_timeout=5, success_threshold=1)
    slow_permit = cb.acquire()  # admitted while closed
    trip(cb, clock)
    clock.advance(5)
    probe = cb.acquire()
    assert cb.state is HALF_OPEN
    slow_permit.record_success()  # admitted in an earlier epoch: not a probe
    assert cb.state is HALF_OPEN and cb.snapshot().half_open_calls == 1
    probe.record_success()
    assert cb.state is CLOSED
    assert cb.snapshot().calls["success"] == 2
    assert len(events) == 3


def test_a_stale_failure_does_not_reopen_a_recovered_breaker(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, success_threshold=1, half_open_max_calls=2)
    trip(cb, clock)
    clock.advance(5)
    first, second = cb.acquire(), cb.acquire()
    first.record_success()  # closes it
    second.record_failure()  # a probe of the half-open stay that has ended
    assert cb.state is CLOSED
    assert cb.snapshot().calls["failure"] == 2 and cb.snapshot().consecutive_failures == 0


def test_a_permit_reports_once(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1)
    permit = cb.acquire()
    permit.record_success()
    permit.record_failure()
    permit.release()
    assert permit.record_exception(Boom()) is None
    assert permit.done and cb.state is CLOSED
    assert cb.snapshot().calls["success"] == 1 and cb.snapshot().calls["failure"] == 0


def test_a_dropped_probe_permit_hands_its_slot_back(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, half_open_max_calls=1, success_threshold=1)
    trip(cb, clock)
    clock.advance(5)
    permit = cb.acquire()
    assert cb.snapshot().half_open_calls == 1
    del permit
    assert cb.snapshot().half_open_calls == 0
    succeed(cb)
    assert cb.state is CLOSED


def test_a_permit_dropped_while_its_breaker_lock_is_held_does_not_deadlock(clock: FakeClock) -> None:
    # A finaliser can run inside any allocation, including one made while
    # the breaker's own lock is held by the same thread.
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, half_open_max_calls=1, success_threshold=1)
    trip(cb, clock)
    clock.advance(5)
    permit = cb.acquire()
    with cb._lock:
        del permit
    succeed(cb)
    assert cb.state is CLOSED


def test_a_permit_tells_the_state_its_call_was_admitted_in(clock: FakeClock) -> None:
    cb, _ = make(clock, failure_threshold=1, open_timeout=5, half_open_max_calls=2, success_threshold=1)
    assert cb.acquire().state is CLOSED
    trip(cb, clock)
    clock.advance(5)
    probe, other = cb.acquire(), cb.acquire()
    assert probe.state is CircuitState.HALF_OPEN
    other.record_failure()  # the breaker opens again; the probe was still admitted half-open
    assert cb.state is CircuitState.OPEN and probe.state is CircuitState.HALF_OPEN
    cb.disable()
    assert cb.acquire().state is CircuitState.DISABLED
