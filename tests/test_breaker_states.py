"""The state machine's seams: one class per state, a closed-state detector, the open state's probe decision,
the closed state's lock-free successes."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Callable

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, _states
from otel_cb._state import Reason
from otel_cb._stats import DurationHistogram

from .conftest import FakeClock


class Boom(Exception):
    pass


def _boom() -> None:
    raise Boom


class Detector:
    """Opens the breaker on the third outcome slower than 0.5 s (a stand-in for an adaptive one)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bool, bool]] = []
        self.resets = 0

    def record(self, now: float, duration: float, failed: bool, slow: bool) -> Reason | None:
        self.seen.append((duration, failed, slow))
        if sum(1 for d, _, _ in self.seen if d > 0.5) >= 3:
            return Reason.SLOW_CALL_RATE
        return None

    def reset(self) -> None:
        self.resets += 1
        self.seen.clear()


def _slow_call(breaker: CircuitBreaker, clock: FakeClock, seconds: float) -> None:
    permit = breaker.acquire()
    clock.advance(seconds)
    permit.record_success()


def test_each_state_is_one_object_swapped_whole(clock: FakeClock) -> None:
    breaker = CircuitBreaker("states", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    first = breaker._current
    assert isinstance(first, _states.Closed)
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert isinstance(breaker._current, _states.Open) and breaker.state is CircuitState.OPEN
    breaker.force_open()
    assert isinstance(breaker._current, _states.ForcedOpen)
    breaker.disable()
    assert isinstance(breaker._current, _states.Disabled)
    breaker.reset()
    assert isinstance(breaker._current, _states.Closed) and breaker._current is not first


def test_a_detector_is_consulted_on_every_closed_outcome_and_opens_with_its_reason(clock: FakeClock) -> None:
    breaker = CircuitBreaker("detected", CircuitBreakerConfig(slow_call_duration=None), clock=clock)
    detector = Detector()
    events = []
    breaker.add_listener(events.append)
    breaker.attach_failure_detector(detector)
    assert detector.resets == 1
    assert breaker.call(lambda: 1) == 1  # a fast success reaches the detector too
    assert detector.seen == [(0.0, False, False)]
    for _ in range(3):
        _slow_call(breaker, clock, 1.0)
    assert breaker.state is CircuitState.OPEN
    assert events[-1].reason is Reason.SLOW_CALL_RATE
    clock.advance(60)
    for _ in range(3):
        breaker.call(lambda: 1)
    assert breaker.state is CircuitState.CLOSED
    assert detector.resets == 2 and detector.seen == []  # a new closed stay starts afresh
    breaker.attach_failure_detector(None)
    for _ in range(5):
        _slow_call(breaker, clock, 1.0)
    assert breaker.state is CircuitState.CLOSED and detector.seen == []


def test_a_raising_detector_is_no_opinion(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def record(self, now: float, duration: float, failed: bool, slow: bool) -> Reason | None:
            raise RuntimeError("detector bug")

        def reset(self) -> None:
            pass

    breaker = CircuitBreaker("broken_detector", clock=clock)
    breaker.attach_failure_detector(Broken())
    for _ in range(20):
        assert breaker.call(lambda: 2) == 2
    assert breaker.state is CircuitState.CLOSED
    assert sum("failure detector" in r.getMessage() for r in caplog.records) == 1


def test_may_probe_is_the_open_states_one_decision(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = CircuitBreaker("gated", CircuitBreakerConfig(failure_threshold=1, open_timeout=10), clock=clock)
    with pytest.raises(Boom):
        breaker.call(_boom)
    healthy = {"ok": False}
    monkeypatch.setattr(_states.Open, "may_probe", lambda self, now: healthy["ok"])
    clock.advance(60)  # long past the open timeout: the gate still says no
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    assert breaker.state is CircuitState.OPEN
    healthy["ok"] = True
    assert breaker.call(lambda: 1) == 1
    assert breaker.state is CircuitState.HALF_OPEN


def test_rejections_are_counted_exactly_across_threads_and_reads() -> None:
    breaker = CircuitBreaker("counted")
    breaker.force_open()

    def reject(n: int) -> None:
        for _ in range(n):
            try:
                breaker.call(lambda: 1)
            except CircuitOpenError:
                pass
            if _ % 100 == 0:
                breaker.snapshot()

    threads = [threading.Thread(target=reject, args=(2000,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.snapshot().calls["rejected"] == 8000
    assert breaker.snapshot().calls["rejected"] == 8000  # reading does not count


def test_a_rejection_is_freed_without_the_cycle_collector() -> None:
    breaker = CircuitBreaker("freed")
    breaker.force_open()
    guarded = breaker(lambda: 1)
    refs = []
    gc.disable()
    try:
        for call in (guarded, lambda: breaker.call(int), breaker.acquire):
            try:
                call()
            except CircuitOpenError as exc:
                refs.append(weakref.ref(exc))
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()


# -- the closed state's lock-free successes ------------------------------------------


def _lock_free(breaker: CircuitBreaker) -> _states.Closed:
    """The closed stay, checked to count its next success without the lock."""
    stay = breaker._current
    assert isinstance(stay, _states.Closed)
    assert breaker.clock() < stay.free_until
    return stay


class _TallyWithAStep:
    """The closed stay's tally, running ``step`` once, just before or just after
    the next success takes its value: the two ways a thread can interleave there."""

    def __init__(self, start: int, step: Callable[[], object], before: bool) -> None:
        self._count = itertools.count(start)
        self._step: Callable[[], object] | None = step
        self._before = before

    def __next__(self) -> int:
        step, self._step = self._step, None
        if step is not None and self._before:
            step()
        value = next(self._count)
        if step is not None and not self._before:
            step()
        return value


def _interleave(stay: _states.Closed, breaker: CircuitBreaker, step: Callable[[], object], before: bool) -> None:
    breaker.snapshot()  # takes the tally: a fresh count from ``tallied`` on goes on where it stood
    stay.tally = _TallyWithAStep(stay.tallied, step, before)  # type: ignore[assignment]


def test_successes_without_the_lock_reach_the_counters_window_and_activity(clock: FakeClock) -> None:
    breaker = CircuitBreaker("tally", CircuitBreakerConfig(minimum_calls=3), clock=clock)
    guarded = breaker(lambda: 1)
    for _ in range(3):  # the window reaches minimum_calls under the lock
        guarded()
    stay = _lock_free(breaker)
    activity = breaker.activity()[0]
    for _ in range(5):
        guarded()
    assert breaker.activity()[0] == activity + 5
    assert stay.fast_successes == 8  # taken in by that reading
    snap = breaker.snapshot()
    assert snap.calls["success"] == 8 and snap.buffered_calls == 8
    clock.advance(120)  # a success in a new bucket takes the lock and ages the window
    guarded()
    assert breaker.snapshot().buffered_calls == 1 and breaker.snapshot().calls["success"] == 9
    guarded()
    guarded()
    _lock_free(breaker)
    guarded()  # no reading takes this one in: the stay's end does
    breaker.force_open()
    assert breaker.snapshot().calls["success"] == 12


def test_a_success_without_the_lock_ends_the_failure_streak(clock: FakeClock) -> None:
    breaker = CircuitBreaker("streak", CircuitBreakerConfig(failure_threshold=3, adaptive=False, minimum_calls=2,
                                                            failure_rate_threshold=None), clock=clock)
    guarded = breaker(lambda: 1)
    guarded()
    guarded()
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(_boom)
    _lock_free(breaker)
    guarded()
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(_boom)
    assert breaker.state is CircuitState.CLOSED and breaker.snapshot().consecutive_failures == 2
    with pytest.raises(Boom):
        breaker.call(_boom)
    assert breaker.state is CircuitState.OPEN


def _steady(name: str, clock: FakeClock) -> tuple[CircuitBreaker, Callable[[], int], _states.Closed]:
    breaker = CircuitBreaker(name, CircuitBreakerConfig(minimum_calls=2), clock=clock)
    guarded = breaker(lambda: 1)
    guarded()
    guarded()
    return breaker, guarded, _lock_free(breaker)


BEFORE_OR_AFTER = pytest.mark.parametrize("before", [True, False], ids=["step-first", "success-counted-first"])


@BEFORE_OR_AFTER
def test_a_success_counted_while_its_stay_ends_is_counted_once_and_moves_nothing(
        clock: FakeClock, before: bool) -> None:
    breaker, guarded, stay = _steady("racing", clock)
    # reset() ends the stay while the success is being counted: before it takes
    # its value (too late for the stay: a stale outcome) or just after (the
    # stay's last take has it).
    _interleave(stay, breaker, breaker.reset, before)
    assert guarded() == 1
    assert breaker._current is not stay
    snap = breaker.snapshot()
    assert snap.calls["success"] == 3
    assert snap.buffered_calls == 0  # the new stay's window never saw it


@BEFORE_OR_AFTER
def test_a_success_counted_while_the_histogram_arrives_stays_with_the_current_stay(
        clock: FakeClock, before: bool) -> None:
    breaker, guarded, stay = _steady("histogram", clock)
    # With a duration histogram the lock-free bound is ``timed_until``: the
    # untimed one falls as the success is counted, and the stay goes on.
    _interleave(stay, breaker, breaker.enable_duration_histogram, before)
    guarded()
    assert stay.free_until == -float("inf") and clock() < stay.timed_until and breaker._current is stay
    assert stay.fast_successes == 3  # taken in before the call returned
    guarded()  # without the lock: its duration waits for the histogram to fold it
    assert breaker._histogram is not None and breaker._histogram.successes == [0.0]
    snap = breaker.snapshot()
    assert snap.calls["success"] == 4 and snap.buffered_calls == 4
    assert snap.durations["success"].count == 1  # the call counted as the histogram came is not timed
    assert breaker._histogram.successes == []


def test_when_the_bound_falls_the_stay_takes_its_tally(clock: FakeClock) -> None:
    breaker, guarded, stay = _steady("settle", clock)
    guarded()  # without the lock: waits to be taken
    assert stay.fast_successes == 2
    breaker.enable_duration_histogram()
    assert stay.fast_successes == 3  # the untimed bound fell: whatever it let through is taken


def test_timed_successes_without_the_lock_are_bucketed_as_under_it() -> None:
    # The same calls, once recorded one by one under the lock (a window that
    # is not steady yet: minimum_calls is far away) and once appended without
    # it and folded in bulk: the same buckets and sum.
    durations = [0.0, 0.005, 0.0050001, 0.01, 0.3, 2.5, 10.0, 10.5, 99.0, 0.075, 0.0749]
    readings = []
    for minimum_calls in (100_000, 1):
        clock = FakeClock()  # the same clock readings, so the same float durations, on both sides
        breaker = CircuitBreaker(f"timed_{minimum_calls}", CircuitBreakerConfig(
            minimum_calls=minimum_calls, slow_call_duration=None, window_type="count", window_size=1000),
            clock=clock)
        breaker.enable_duration_histogram()
        guarded = breaker(clock.advance)
        guarded(0.0)  # with minimum_calls=1 the window is steady from here on
        for duration in durations:
            guarded(duration)
        stay = breaker._current
        assert isinstance(stay, _states.Closed)
        histogram = breaker._histogram
        assert histogram is not None
        assert len(histogram.successes) == (0 if minimum_calls > 1 else len(durations))
        readings.append(breaker.snapshot().durations["success"])
    by_lock, folded = readings
    assert folded.bucket_counts == by_lock.bucket_counts and folded.count == by_lock.count == len(durations) + 1
    assert folded.sum == pytest.approx(by_lock.sum)


def test_folding_puts_a_value_on_a_boundary_in_the_bucket_it_bounds() -> None:
    histogram = DurationHistogram((0.005, 0.01))
    histogram.successes.extend([0.01, 0.0, 0.005, 0.02, 0.0051])
    histogram.record(0, 0.005)  # one by one, for comparison
    histogram.fold()
    assert histogram.successes == []
    assert histogram.counts[0] == [2 + 1, 2, 1]
    assert histogram.data()["success"].sum == pytest.approx(0.01 + 0.005 + 0.02 + 0.0051 + 0.005)


def test_timed_successes_waiting_without_the_lock_stay_bounded(clock: FakeClock) -> None:
    breaker, guarded, stay = _steady("bounded", clock)
    breaker.enable_duration_histogram()
    histogram = breaker._histogram
    assert histogram is not None
    for _ in range(histogram.FOLD_AT * 3 + 5):
        guarded()
        assert len(histogram.successes) < histogram.FOLD_AT
    assert clock() < stay.timed_until and breaker._current is stay
    assert breaker.snapshot().durations["success"].count == histogram.FOLD_AT * 3 + 5
