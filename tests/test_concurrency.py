"""Threads and asyncio tasks hitting one breaker: exact counts, real concurrency, no wedged half-open."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, StateChangeEvent

from .conftest import FakeClock
from .test_breaker_api import asyncio_test

THREADS = 8
QUIET = {"failure_threshold": None, "failure_rate_threshold": None, "slow_call_duration": None}


class Boom(Exception):
    pass


def run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # report it in the test, not as a thread warning
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


def race(worker: Callable[[int], None], churn: Callable[[], None]) -> None:
    """``THREADS`` threads run ``worker`` while one more runs ``churn`` over and
    over, with the interpreter switching threads as often as it can."""
    workers: list[threading.Thread] = []

    def churning(_: int) -> None:
        while any(t.is_alive() for t in workers):
            churn()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers.extend(threading.Thread(target=worker, args=(i,)) for i in range(THREADS))
        churner = threading.Thread(target=churning, args=(0,))
        for t in [*workers, churner]:
            t.start()
        for t in [*workers, churner]:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in [*workers, churner]), "a thread hung"


def test_eight_threads_lose_no_update(clock: FakeClock) -> None:
    cb = CircuitBreaker("threads", CircuitBreakerConfig(**QUIET, minimum_calls=1), clock=clock)  # type: ignore[arg-type]
    per_thread = 3000
    start = threading.Barrier(THREADS)

    @cb
    def work(i: int) -> int:
        if i % 5 == 0:
            raise Boom
        return i

    def worker(_: int) -> None:
        start.wait(timeout=10)
        for i in range(per_thread):
            try:
                work(i)
            except Boom:
                pass
            with cb:  # the block form too, from every thread at once
                pass

    run_threads(worker)
    snap = cb.snapshot()
    failures = THREADS * (per_thread // 5)
    successes = THREADS * per_thread * 2 - failures
    assert snap.calls == {"success": successes, "failure": failures, "ignored": 0, "rejected": 0}
    assert snap.buffered_calls == successes + failures  # the window saw every call too
    assert snap.failure_rate == failures / (successes + failures)


def test_successes_racing_stay_ends_and_readings_are_each_counted_once(clock: FakeClock) -> None:
    # Closed-state successes take no lock once the window is steady (always,
    # on a clock that stands still); resets end stays and readings take their
    # tallies in, from a thread of their own, while eight threads succeed. A
    # success lost or counted twice in the handover shows in the total. (The
    # two narrowest interleavings, a stay ending just before or just after a
    # success takes its value, are played step by step in test_breaker_states.)
    cb = CircuitBreaker("tally_race", CircuitBreakerConfig(**QUIET, minimum_calls=1), clock=clock)  # type: ignore[arg-type]
    per_thread = 20_000
    returned = [0] * THREADS

    @cb
    def work() -> int:
        return 1

    def succeed(index: int) -> None:
        for _ in range(per_thread):
            returned[index] += work()

    def churn() -> None:
        cb.reset()
        cb.snapshot()
        cb.activity()

    race(succeed, churn)
    assert sum(returned) == THREADS * per_thread
    assert cb.snapshot().calls == {"success": THREADS * per_thread, "failure": 0, "ignored": 0, "rejected": 0}


def test_no_lock_is_held_while_the_protected_call_runs() -> None:
    cb = CircuitBreaker("concurrent")
    inside = threading.Barrier(THREADS)

    @cb
    def meet() -> None:
        inside.wait(timeout=10)  # only passes if all eight calls run at once

    run_threads(lambda _: meet())
    assert cb.snapshot().calls["success"] == THREADS


def test_racing_failures_open_the_breaker_once(clock: FakeClock) -> None:
    cb = CircuitBreaker("race", CircuitBreakerConfig(**{**QUIET, "failure_threshold": 50}), clock=clock)  # type: ignore[arg-type]
    events: list[StateChangeEvent] = []
    cb.add_listener(events.append)
    start = threading.Barrier(THREADS)

    def worker(_: int) -> None:
        start.wait(timeout=10)
        for _ in range(100):
            try:
                cb.call(_boom)
            except (Boom, CircuitOpenError):
                pass

    run_threads(worker)
    snap = cb.snapshot()
    assert [e.state for e in events] == [CircuitState.OPEN]
    assert snap.calls["failure"] + snap.calls["rejected"] == THREADS * 100
    assert snap.calls["failure"] >= 50


def test_threads_in_half_open_get_exactly_max_probes(clock: FakeClock) -> None:
    cb = CircuitBreaker("probes", CircuitBreakerConfig(failure_threshold=1, open_timeout=5, half_open_max_calls=3),
                        clock=clock)
    cb.acquire().record_failure()
    clock.advance(5)
    start = threading.Barrier(THREADS)
    admitted, rejected = [], []

    def worker(_: int) -> None:
        start.wait(timeout=10)
        try:
            admitted.append(cb.acquire())
        except CircuitOpenError as exc:
            rejected.append(exc)

    run_threads(worker)
    assert len(admitted) == 3 and len(rejected) == 5
    assert all(e.state is CircuitState.HALF_OPEN and e.retry_after == 0.0 for e in rejected)
    for permit in admitted:
        permit.release()
    assert cb.snapshot().half_open_calls == 0


def _boom() -> None:
    raise Boom


@asyncio_test
async def test_ten_thousand_concurrent_tasks_exact_counts() -> None:
    cb = CircuitBreaker("tasks", CircuitBreakerConfig(**QUIET))  # type: ignore[arg-type]
    running = 0
    peak = 0

    @cb
    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        if i % 10 == 0:
            raise Boom
        return i

    results = await asyncio.gather(*(work(i) for i in range(10_000)), return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == 1000
    assert cb.snapshot().calls == {"success": 9000, "failure": 1000, "ignored": 0, "rejected": 0}
    assert peak == 10_000  # every call was in flight at once


@asyncio_test
async def test_cancellations_during_half_open_never_wedge_it(clock: FakeClock) -> None:
    cb = CircuitBreaker("wedge", CircuitBreakerConfig(failure_threshold=1, open_timeout=5, half_open_max_calls=3,
                                                      success_threshold=1), clock=clock)
    rng = random.Random(7)

    async def hang() -> None:
        await asyncio.Event().wait()

    async def stream() -> AsyncIterator[int]:
        await asyncio.Event().wait()
        yield 1

    async def through_stream() -> None:
        async for _ in cb.protect_stream(stream()):
            pass

    async def through_block() -> None:
        async with cb:
            await hang()

    for _ in range(50):
        cb.acquire().record_failure()
        assert cb.state is CircuitState.OPEN
        clock.advance(5)
        kinds = [lambda: cb.call_async(hang), through_stream, through_block]
        tasks = [asyncio.create_task(rng.choice(kinds)()) for _ in range(20)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert cb.snapshot().half_open_calls == 3  # 3 probes in flight, 17 rejected
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, CircuitOpenError) for r in results) == 17
        assert cb.state is CircuitState.HALF_OPEN and cb.snapshot().half_open_calls == 0
        assert await cb.call_async(asyncio.sleep, 0) is None  # a fresh probe is admitted and closes it
        assert cb.state is CircuitState.CLOSED
    assert cb.snapshot().calls["failure"] == 50


@pytest.mark.parametrize("window_type", ["time", "count"])
def test_threads_with_rules_on_keep_counts_and_state_consistent(clock: FakeClock, window_type: str) -> None:
    config = CircuitBreakerConfig(failure_threshold=20, failure_rate_threshold=0.5, minimum_calls=20,
                                  window_type=window_type, window_size=100, open_timeout=0.001,
                                  half_open_max_calls=2, success_threshold=2)  # type: ignore[arg-type]
    cb = CircuitBreaker("churn", config, clock=clock)
    events: list[StateChangeEvent] = []
    cb.add_listener(events.append)
    lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(index)
        for _ in range(1500):
            if rng.random() < 0.05:
                with lock:
                    clock.advance(0.001)
            try:
                cb.call(_boom if rng.random() < 0.45 else int)
            except (Boom, CircuitOpenError):
                pass

    run_threads(worker)
    snap = cb.snapshot()
    assert sum(snap.calls.values()) == THREADS * 1500
    # Listeners run outside the lock, so two threads' events may arrive out of
    # order; each one must still be an edge of the state machine.
    legal = {("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("half_open", "closed")}
    assert events and {(e.previous_state.value, e.state.value) for e in events} <= legal
    assert snap.half_open_calls <= 2


def test_timed_successes_without_the_lock_lose_no_duration(clock: FakeClock) -> None:
    # With a duration histogram, lock-free successes append their durations
    # and whoever reaches the fold limit buckets them; readings fold too, and
    # resets end stays (a success counted too late for its stay is recorded
    # as a stale outcome instead), from a thread of their own. Every success
    # shows in the histogram exactly once.
    cb = CircuitBreaker("timed_race", CircuitBreakerConfig(**QUIET, minimum_calls=1), clock=clock)  # type: ignore[arg-type]
    cb.enable_duration_histogram()
    per_thread = 10_000

    @cb
    def work() -> int:
        return 1

    def succeed(_: int) -> None:
        for _ in range(per_thread):
            work()

    def churn() -> None:
        cb.snapshot()
        cb.reset()

    race(succeed, churn)
    snap = cb.snapshot()
    assert snap.calls["success"] == THREADS * per_thread
    assert snap.durations["success"].count == THREADS * per_thread
