"""The ways of using a breaker: calls, decorators, blocks, streams, fallbacks, listeners, snapshots."""

from __future__ import annotations

import asyncio
import functools
import logging
import pickle
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

from otel_cb import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitOpenError,
    CircuitState,
    StateChangeEvent,
)

from .conftest import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def asyncio_test(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop (fixtures pass through)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


class Boom(Exception):
    pass


def breaker(clock: FakeClock, **settings: object) -> CircuitBreaker:
    base: dict[str, object] = {"failure_threshold": 2, "failure_rate_threshold": None, "slow_call_duration": None,
                               "open_timeout": 10, "success_threshold": 1, "half_open_max_calls": 1}
    return CircuitBreaker("api", CircuitBreakerConfig(**{**base, **settings}), clock=clock)  # type: ignore[arg-type]


def calls(cb: CircuitBreaker) -> dict[str, int]:
    return cb.snapshot().calls


def open_then_wait(cb: CircuitBreaker, clock: FakeClock) -> None:
    """Open ``cb`` and let its open timeout pass, so the next call is a probe."""
    cb.force_open()
    cb.reset()
    for _ in range(cb.config.failure_threshold or 1):
        cb.acquire().record_failure()
    assert cb.state is OPEN
    clock.advance(cb.config.open_timeout)


# -- errors ------------------------------------------------------------------------


def test_circuit_open_error_carries_name_state_retry_after_and_pickles(clock: FakeClock) -> None:
    cb = breaker(clock)
    cb.force_open()
    with pytest.raises(CircuitOpenError) as info:
        cb.call(lambda: None)
    error = info.value
    assert isinstance(error, CircuitBreakerError)
    assert (error.name, error.state, error.retry_after) == ("api", CircuitState.FORCED_OPEN, None)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.name, copy.state, copy.retry_after) == (error.name, error.state, error.retry_after)
    assert str(CircuitOpenError("db", OPEN, 1.5)) == "circuit breaker 'db' is open: call rejected, retry after 1.500s"


def test_a_subclass_with_another_base_can_set_the_attributes_itself() -> None:
    class HTTPishError(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)

    class Both(CircuitOpenError, HTTPishError):
        def __init__(self, name: str, state: CircuitState, retry_after: float | None) -> None:
            HTTPishError.__init__(self, "refused")
            self.name, self.state, self.retry_after = name, state, retry_after

    error = Both("svc", OPEN, 2.0)
    assert (error.name, error.state, error.retry_after, error.args) == ("svc", OPEN, 2.0, ("refused",))


def test_circuit_state_is_a_string_enum() -> None:
    assert [s.value for s in CircuitState] == ["closed", "open", "half_open", "forced_open", "disabled"]
    assert CircuitState.OPEN == "open" and str(CircuitState.HALF_OPEN) == "half_open"


# -- listeners and snapshots --------------------------------------------------------


def test_listeners_see_every_transition_and_a_raising_one_is_logged_once(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    cb = breaker(clock)
    seen: list[StateChangeEvent] = []

    def broken(event: StateChangeEvent) -> None:
        raise RuntimeError("listener bug")

    cb.add_listener(broken)
    cb.add_listener(seen.append)
    with caplog.at_level(logging.DEBUG, logger="otel_cb"):
        for _ in range(2):
            with pytest.raises(Boom):
                cb.call(_raise, Boom())  # the caller's own exception, not the listener's
        clock.advance(10)
        assert cb.call(lambda: "ok") == "ok"
    assert [(e.previous_state, e.state, e.reason.value) for e in seen] == [
        (CLOSED, OPEN, "consecutive_failures"), (OPEN, HALF_OPEN, "open_timeout_elapsed"),
        (HALF_OPEN, CLOSED, "probe_success")]
    assert seen[0].name == "api" and seen[0].open_timeout == 10 and seen[0].timestamp == 1000.0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "listener of circuit breaker 'api'" in errors[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2
    cb.remove_listener(seen.append)
    cb.force_open()
    assert len(seen) == 3


def test_a_listener_may_use_the_breaker_it_listens_to(clock: FakeClock) -> None:
    # Listeners run outside the lock: reading the breaker from one must not deadlock.
    cb = breaker(clock)
    states = []
    cb.add_listener(lambda event: states.append(cb.snapshot().state))
    cb.force_open()
    assert states == [CircuitState.FORCED_OPEN]


def test_snapshot_reports_rates_counts_and_time_in_state(clock: FakeClock) -> None:
    cb = breaker(clock, failure_threshold=3, slow_call_duration=1.0, minimum_calls=100)
    cb.enable_duration_histogram()

    def slow() -> str:
        clock.advance(1.0)
        return "ok"

    cb.call(slow)
    cb.call(lambda: "ok")
    with pytest.raises(Boom):
        cb.call(_raise, Boom())
    cb.call_with_fallback(_raise, lambda exc: "fallback", Boom())
    snap = cb.snapshot()
    assert (snap.name, snap.state, snap.buffered_calls, snap.consecutive_failures) == ("api", CLOSED, 4, 2)
    assert snap.failure_rate == 0.5 and snap.slow_call_rate == 0.25
    assert snap.calls == {"success": 2, "failure": 2, "ignored": 0, "rejected": 0}
    assert snap.slow_calls == {"success": 1, "failure": 0}
    assert snap.fallbacks == {"success": 1, "failure": 0, "refused": 0}
    assert (snap.half_open_calls, snap.retry_after) == (0, None)
    assert snap.durations["success"].count == 2 and snap.durations["success"].sum == 1.0
    assert snap.durations["failure"].count == 2
    clock.advance(4)  # 5 s closed in all
    cb.acquire().record_failure()
    clock.advance(3)
    with pytest.raises(CircuitOpenError):
        cb.call(lambda: None)
    snap = cb.snapshot()
    assert snap.state is OPEN and snap.retry_after == 7 and snap.calls["rejected"] == 1
    assert snap.time_in_state[CLOSED] == 5 and snap.time_in_state[OPEN] == 3
    assert snap.buffered_calls == 0 and snap.consecutive_failures == 0


# -- with / async with --------------------------------------------------------------


def test_with_block_records_success_and_failure(clock: FakeClock) -> None:
    cb = breaker(clock)
    with cb:
        pass
    with pytest.raises(Boom), cb:
        raise Boom
    assert calls(cb) == {"success": 1, "failure": 1, "ignored": 0, "rejected": 0}


def test_nested_with_blocks_keep_their_own_permits(clock: FakeClock) -> None:
    cb = breaker(clock, failure_threshold=10)
    with pytest.raises(Boom), cb:
        with cb:
            pass  # the inner block succeeds
        raise Boom  # the outer block fails
    assert calls(cb)["success"] == 1 and calls(cb)["failure"] == 1


def test_with_block_is_rejected_while_open(clock: FakeClock) -> None:
    cb = breaker(clock)
    cb.force_open()
    ran = False
    with pytest.raises(CircuitOpenError), cb:
        ran = True
    assert not ran


@asyncio_test
async def test_async_with_in_concurrent_tasks_keeps_each_tasks_permit(clock: FakeClock) -> None:
    cb = breaker(clock, failure_threshold=1000)
    gate = asyncio.Event()

    async def task(index: int) -> None:
        async with cb:
            await gate.wait()  # every task is inside its block at once
            if index % 3 == 0:
                raise Boom

    tasks = [asyncio.create_task(task(i)) for i in range(30)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == 10
    assert calls(cb) == {"success": 20, "failure": 10, "ignored": 0, "rejected": 0}


# -- decorators ---------------------------------------------------------------------


def test_decorating_a_function_keeps_its_name_and_behaviour(clock: FakeClock) -> None:
    cb = breaker(clock)

    @cb
    def add(a: int, b: int = 0) -> int:
        """Adds."""
        return a + b

    assert add(1, b=2) == 3 and add.__name__ == "add" and add.__doc__ == "Adds."
    assert calls(cb)["success"] == 1


def test_decorating_a_method_binds_self(clock: FakeClock) -> None:
    cb = breaker(clock)

    class Client:
        def __init__(self) -> None:
            self.value = 7

        @cb
        def get(self) -> int:
            return self.value

    assert Client().get() == 7


@asyncio_test
async def test_decorating_a_coroutine_function(clock: FakeClock) -> None:
    cb = breaker(clock)

    @cb
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise Boom
        return x * 2

    assert asyncio.iscoroutinefunction(fetch)
    assert await fetch(4) == 8
    for _ in range(2):
        with pytest.raises(Boom):
            await fetch(-1)
    with pytest.raises(CircuitOpenError):
        await fetch(1)
    assert calls(cb) == {"success": 1, "failure": 2, "ignored": 0, "rejected": 1}


@asyncio_test
async def test_decorating_an_async_generator_function(clock: FakeClock) -> None:
    cb = breaker(clock)

    @cb
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        if n == 0:
            raise Boom

    assert [i async for i in numbers(3)] == [0, 1, 2]
    with pytest.raises(Boom):
        async for _ in numbers(0):
            pass
    assert calls(cb)["success"] == 1 and calls(cb)["failure"] == 1


def test_decorating_a_generator_function(clock: FakeClock) -> None:
    cb = breaker(clock)

    @cb
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)
        if n == 0:
            raise Boom

    assert list(numbers(3)) == [0, 1, 2]
    with pytest.raises(Boom):
        list(numbers(0))
    for item in numbers(5):
        if item == 1:
            break  # early stop: no verdict
    assert calls(cb)["success"] == 1 and calls(cb)["failure"] == 1


# -- streams ------------------------------------------------------------------------


async def _items(*values: object) -> AsyncIterator[object]:
    for value in values:
        await asyncio.sleep(0)
        if isinstance(value, BaseException):
            raise value
        yield value


@asyncio_test
async def test_protect_stream_records_one_success_when_the_stream_ends(clock: FakeClock) -> None:
    cb = breaker(clock)
    assert [x async for x in cb.protect_stream(_items(1, 2, 3))] == [1, 2, 3]
    assert calls(cb) == {"success": 1, "failure": 0, "ignored": 0, "rejected": 0}


@asyncio_test
async def test_protect_stream_records_a_failure_mid_stream(clock: FakeClock) -> None:
    cb = breaker(clock)
    received = []
    with pytest.raises(Boom):
        async for x in cb.protect_stream(_items(1, Boom())):
            received.append(x)
    assert received == [1] and calls(cb)["failure"] == 1 and calls(cb)["success"] == 0


@asyncio_test
async def test_protect_stream_early_stop_is_no_verdict_and_returns_the_probe_slot(clock: FakeClock) -> None:
    cb = breaker(clock)
    open_then_wait(cb, clock)
    stream = cb.protect_stream(_items(1, 2, 3))
    async for _ in stream:
        break
    assert cb.state is HALF_OPEN and cb.snapshot().half_open_calls == 1
    await stream.aclose()
    assert cb.snapshot().half_open_calls == 0
    # The consumer that just drops the stream hands the slot back too.
    async for _ in cb.protect_stream(_items(1, 2)):
        break
    assert cb.snapshot().half_open_calls == 0
    assert [x async for x in cb.protect_stream(_items(4))] == [4]
    assert cb.state is CLOSED
    assert calls(cb)["success"] == 1


@asyncio_test
async def test_protect_stream_is_rejected_when_first_read_while_open(clock: FakeClock) -> None:
    cb = breaker(clock)
    cb.force_open()
    stream = cb.protect_stream(_items(1))  # not admitted yet
    with pytest.raises(CircuitOpenError):
        await stream.__anext__()


@asyncio_test
async def test_a_cancelled_stream_consumer_is_no_verdict(clock: FakeClock) -> None:
    cb = breaker(clock)
    open_then_wait(cb, clock)
    started = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        started.set()
        await asyncio.Event().wait()
        yield 1

    async def consume() -> None:
        async for _ in cb.protect_stream(endless()):
            pass

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cb.state is HALF_OPEN and cb.snapshot().half_open_calls == 0
    assert calls(cb)["failure"] == 2  # the two that opened it: the cancelled stream adds none


# -- fallbacks ----------------------------------------------------------------------


def _raise(exc: BaseException) -> None:
    raise exc


def test_call_with_fallback_serves_failures_and_rejections(clock: FakeClock) -> None:
    cb = breaker(clock, ignore_exceptions=(KeyError,))
    errors: list[BaseException] = []

    def fallback(exc: BaseException) -> str:
        errors.append(exc)
        return "cached"

    assert cb.call_with_fallback(lambda x: x, fallback, "live") == "live"
    assert cb.call_with_fallback(_raise, fallback, Boom()) == "cached"
    with pytest.raises(KeyError):  # ignored: a wrong request, not a broken dependency
        cb.call_with_fallback(_raise, fallback, KeyError("k"))
    assert cb.call_with_fallback(_raise, fallback, Boom()) == "cached"
    assert cb.state is OPEN
    assert cb.call_with_fallback(lambda: "never", fallback) == "cached"
    assert [type(e) for e in errors] == [Boom, Boom, CircuitOpenError]
    assert cb.snapshot().fallbacks == {"success": 3, "failure": 0, "refused": 0}


def test_a_failing_fallback_is_counted_and_raises(clock: FakeClock) -> None:
    cb = breaker(clock)
    with pytest.raises(ZeroDivisionError):
        cb.call_with_fallback(_raise, lambda exc: 1 / 0, Boom())
    assert cb.snapshot().fallbacks == {"success": 0, "failure": 1, "refused": 0}


@asyncio_test
async def test_call_with_fallback_async_takes_sync_and_async_fallbacks(clock: FakeClock) -> None:
    cb = breaker(clock, ignore_exceptions=(KeyError,))

    async def work(exc: BaseException | None) -> str:
        await asyncio.sleep(0)
        if exc is not None:
            raise exc
        return "live"

    async def async_fallback(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return f"async {type(exc).__name__}"

    assert await cb.call_with_fallback_async(work, async_fallback, None) == "live"
    assert await cb.call_with_fallback_async(work, async_fallback, Boom()) == "async Boom"
    with pytest.raises(KeyError):
        await cb.call_with_fallback_async(work, lambda exc: "sync", KeyError("k"))
    assert await cb.call_with_fallback_async(work, lambda exc: "sync", Boom()) == "sync"
    assert cb.state is OPEN
    assert await cb.call_with_fallback_async(work, async_fallback, None) == "async CircuitOpenError"
    assert cb.snapshot().fallbacks == {"success": 3, "failure": 0, "refused": 0}


# -- call_timeout -------------------------------------------------------------------


@asyncio_test
async def test_call_timeout_cancels_and_counts_a_failure_whatever_the_rules(clock: FakeClock) -> None:
    # TimeoutError is ignored by the exception rules; the breaker's own timeout still counts.
    cb = breaker(clock, failure_threshold=1, call_timeout=0.001, ignore_exceptions=(TimeoutError,))
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(asyncio.TimeoutError):
        await cb.call_async(hang)
    assert cancelled.is_set() and cb.state is OPEN and calls(cb)["failure"] == 1


@asyncio_test
async def test_a_timeout_raised_by_the_call_itself_follows_the_rules(clock: FakeClock) -> None:
    cb = breaker(clock, failure_threshold=1, call_timeout=10.0, ignore_exceptions=(TimeoutError,))

    async def own_timeout() -> None:
        raise TimeoutError("the client's own")

    with pytest.raises(TimeoutError):
        await cb.call_async(own_timeout)
    assert cb.state is CLOSED and calls(cb)["ignored"] == 1


@asyncio_test
async def test_call_timeout_with_fallback(clock: FakeClock) -> None:
    cb = breaker(clock, call_timeout=0.001)

    async def hang() -> None:
        await asyncio.Event().wait()

    assert await cb.call_with_fallback_async(hang, lambda exc: type(exc).__name__) == "TimeoutError"
    assert calls(cb)["failure"] == 1


@asyncio_test
async def test_a_cancelled_half_open_call_hands_its_slot_back(clock: FakeClock) -> None:
    cb = breaker(clock)
    open_then_wait(cb, clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(cb.call_async(hang))
    await started.wait()
    assert cb.snapshot().half_open_calls == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cb.snapshot().half_open_calls == 0 and calls(cb)["failure"] == 2
    assert await cb.call_async(asyncio.sleep, 0) is None
    assert cb.state is CLOSED


def test_a_breakers_call_and_call_async_keep_working_when_only_they_are_held() -> None:
    # ``call = CircuitBreaker(...).call``, as a bound method would, keeps its breaker alive.
    import gc

    call = CircuitBreaker("held_by_its_call").call
    call_async = CircuitBreaker("held_by_its_call_async").call_async
    gc.collect()

    async def answer() -> int:
        return 43

    assert call(lambda: 42) == 42
    assert asyncio.run(call_async(answer)) == 43
