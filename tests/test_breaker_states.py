"""The state machine's seams: one class per state, a closed-state detector, the open state's probe decision."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, _states
from otel_cb._state import Reason

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
