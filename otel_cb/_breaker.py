"""`CircuitBreaker`: the state machine, its call paths and its permits.

The breaker is I/O-free: all time comes from the injected clock, and every
call out to code it does not own (listeners, observers) goes through
``_observers``. One non-reentrant lock guards the state; it is never held while
the protected call runs, and never while listeners run.

Each transition bumps an epoch. A call carries the epoch it was admitted in,
and its outcome moves the state machine only if the epoch is still current:
a slow call admitted while closed cannot, say, close a breaker that has since
opened and gone half-open.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import random
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

from . import _observers
from ._config import CircuitBreakerConfig
from ._errors import CircuitOpenError
from ._state import CircuitState, Reason, StateChangeEvent
from ._stats import DurationHistogram, HistogramData
from ._window import CountWindow, TimeWindow, Window

__all__ = ["BreakerSnapshot", "CircuitBreaker", "Permit", "Verdict", "SharedStateSync"]

T = TypeVar("T")
Verdict = Literal["success", "failure", "ignored", "none"]
Clock = Callable[[], float]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_STATE_INDEX = {state: index for index, state in enumerate(CircuitState)}
_DEFAULT_CONFIG = CircuitBreakerConfig()
_DISABLED_EPOCH = -1  # calls admitted while disabled record nothing


class SharedStateSync(Protocol):
    """What a shared-state backend (``otel_cb.shared``) plugs into a breaker.

    The breaker calls these; none may block for long or raise (the backend
    contains its own faults and falls back to local state).
    """

    def on_outcome(self, failed: bool, slow: bool) -> None:
        """One recorded closed-state outcome, to be aggregated fleet-wide."""

    def on_transition(self, event: StateChangeEvent) -> None:
        """A local transition, to be published to the fleet."""

    def acquire_probe(self) -> bool:
        """Take a fleet-wide half-open probe lease; False rejects the probe."""

    def release_probe(self) -> None:
        """Hand a probe lease back."""


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent picture of one breaker at one moment.

    Attributes:
        name: The breaker's name.
        state: Its current state.
        failure_rate: Failed share of the calls in the window (0.0 when empty).
        slow_call_rate: Slow share of the calls in the window (0.0 when empty).
        buffered_calls: Calls the window holds now.
        consecutive_failures: Failures since the last success (closed state).
        half_open_calls: Probes in flight (half-open state).
        retry_after: Seconds until a probe is admitted while open, else None.
        time_in_state: Seconds spent in each state since the breaker was made,
            the current stay included.
        calls: Calls since the breaker was made, by outcome
            (``success``, ``failure``, ``ignored``, ``rejected``).
        slow_calls: Slow calls by outcome (``success``, ``failure``).
        fallbacks: Fallbacks served, by outcome (``success``, ``failure``).
        durations: Call-duration histograms by outcome, when enabled (telemetry).
    """

    name: str
    state: CircuitState
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    consecutive_failures: int
    half_open_calls: int
    retry_after: float | None
    time_in_state: dict[CircuitState, float]
    calls: dict[str, int]
    slow_calls: dict[str, int]
    fallbacks: dict[str, int]
    durations: dict[str, HistogramData]


class CircuitBreaker:
    """A circuit breaker guarding calls to one dependency.

    Args:
        name: Identifies the breaker in telemetry, logs and the registry.
        config: Its settings; the default preset when None.
        clock: Zero-argument callable returning monotonic seconds
            (``time.monotonic`` when None); inject a fake one in tests.

    A breaker is used by calling through it (``call``, ``call_async``,
    ``call_with_fallback``), decorating a function, guarding a block
    (``with breaker:``), protecting a stream, or taking a ``Permit`` by hand.
    """

    __slots__ = (
        "name", "config", "_clock", "_lock", "_state", "_epoch", "_window",
        "_consecutive_failures", "_consecutive_successes", "_probes", "_open_until",
        "_open_timeout", "_reopenings", "_since", "_state_time", "_listeners",
        "_slow", "_n_success", "_n_failure", "_n_ignored", "_n_rejected",
        "_n_slow_success", "_n_slow_failure", "_n_fallback_success", "_n_fallback_failure",
        "_histogram", "_stack", "_shared", "__weakref__",
    )

    def __init__(self, name: str, config: CircuitBreakerConfig | None = None, *, clock: Clock | None = None) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"name: {name!r} is not allowed; use a non-empty string of at most 200 characters")
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise ValueError(f"config: {config!r} is not allowed; use a CircuitBreakerConfig or None")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock: {clock!r} is not allowed; use a zero-argument callable returning seconds")
        self.name = name
        self.config = config if config is not None else _DEFAULT_CONFIG
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        self._state = _CLOSED
        self._epoch = 0
        self._window: Window | None = None
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        self._probes = 0
        self._open_until = 0.0
        self._open_timeout = 0.0
        self._reopenings = 0
        self._since = self._clock()
        self._state_time: list[float] | None = None
        self._listeners: tuple[Callable[[StateChangeEvent], Any], ...] = ()
        self._slow = self.config.slow_call_duration
        self._n_success = self._n_failure = self._n_ignored = self._n_rejected = 0
        self._n_slow_success = self._n_slow_failure = 0
        self._n_fallback_success = self._n_fallback_failure = 0
        self._histogram: DurationHistogram | None = None
        self._stack: contextvars.ContextVar[tuple[Permit, ...]] | None = None
        self._shared: SharedStateSync | None = None
        if _observers.observers:
            _observers.notify("breaker_created", self)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state. An open breaker whose timeout has elapsed still
        reads ``open`` until the next call moves it to ``half_open``."""
        return self._state

    @property
    def is_closed(self) -> bool:
        return self._state is _CLOSED

    @property
    def is_open(self) -> bool:
        """True when open or forced open: calls are being rejected."""
        return self._state is _OPEN or self._state is _FORCED_OPEN

    @property
    def is_half_open(self) -> bool:
        return self._state is _HALF_OPEN

    def force_open(self) -> None:
        """Reject every call until ``reset()``; a recorded transition."""
        self._manual(_FORCED_OPEN, Reason.FORCE_OPEN)

    def disable(self) -> None:
        """Admit every call and record nothing until ``reset()``; a recorded transition."""
        self._manual(_DISABLED, Reason.DISABLE)

    def reset(self) -> None:
        """Close the breaker and forget its window and backoff; a recorded transition."""
        self._manual(_CLOSED, Reason.RESET)

    def _manual(self, state: CircuitState, reason: Reason) -> None:
        with self._lock:
            event = self._transition(state, reason, self._clock())
        self._emit(event)

    def add_listener(self, listener: Callable[[StateChangeEvent], Any]) -> Callable[[StateChangeEvent], Any]:
        """Call ``listener(event)`` after every transition; returns it (usable as a decorator).

        A listener runs outside the breaker's lock, in the thread that caused
        the transition. One that raises is logged and never breaks a call.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)
        return listener

    def remove_listener(self, listener: Callable[[StateChangeEvent], Any]) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item != listener)

    def snapshot(self) -> BreakerSnapshot:
        """Return state, window rates, counters and time in state, read under the lock."""
        with self._lock:
            now = self._clock()
            window = self._window
            total = failures = slow = 0
            if window is not None and self._state is _CLOSED:
                window.expire(now)
                total, failures, slow = window.total, window.failures, window.slow
            time_in_state = {state: (self._state_time[index] if self._state_time else 0.0)
                             for state, index in _STATE_INDEX.items()}
            time_in_state[self._state] += max(0.0, now - self._since)
            retry_after = max(0.0, self._open_until - now) if self._state is _OPEN else None
            return BreakerSnapshot(
                name=self.name,
                state=self._state,
                failure_rate=failures / total if total else 0.0,
                slow_call_rate=slow / total if total else 0.0,
                buffered_calls=total,
                consecutive_failures=self._consecutive_failures,
                half_open_calls=self._probes if self._state is _HALF_OPEN else 0,
                retry_after=retry_after,
                time_in_state=time_in_state,
                calls={"success": self._n_success, "failure": self._n_failure,
                       "ignored": self._n_ignored, "rejected": self._n_rejected},
                slow_calls={"success": self._n_slow_success, "failure": self._n_slow_failure},
                fallbacks={"success": self._n_fallback_success, "failure": self._n_fallback_failure},
                durations=self._histogram.data() if self._histogram is not None else {},
            )

    # -- calling through the breaker -----------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` if the breaker admits it.

        Returns:
            What ``fn`` returned.

        Raises:
            CircuitOpenError: when the call is rejected; ``fn`` is not called.
            Exception: whatever ``fn`` raised, unchanged.
        """
        epoch = self._epoch
        if self._state is not _CLOSED:
            epoch = self._admit()
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(epoch, start, clock(), exc)
            raise
        self._record_result(epoch, start, clock(), result)
        return result

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` if the breaker admits it.

        With ``call_timeout`` set, a call running longer is cancelled and
        raises ``TimeoutError``, counted as a failure.

        Raises:
            CircuitOpenError: when the call is rejected; ``fn`` is not called.
            Exception: whatever ``fn`` raised, unchanged.
        """
        epoch = self._epoch
        if self._state is not _CLOSED:
            epoch = self._admit()
        clock = self._clock
        timeout = self.config.call_timeout
        start = clock()
        try:
            if timeout is None:
                result = await fn(*args, **kwargs)
            else:
                result = await asyncio.wait_for(fn(*args, **kwargs), timeout)
        except BaseException as exc:
            end = clock()
            if timeout is not None and isinstance(exc, asyncio.TimeoutError) and end - start >= timeout:
                self._record_failure(epoch, start, end)
            else:
                self._record_exception(epoch, start, end, exc)
            raise
        self._record_result(epoch, start, clock(), result)
        return result

    def call_with_fallback(
        self, fn: Callable[..., T], fallback: Callable[[BaseException], T], /, *args: Any, **kwargs: Any
    ) -> T:
        """Like ``call``, but a rejection or a failure returns ``fallback(exc)`` instead.

        Ignored exceptions (see ``ignore_exceptions`` and ``is_failure``)
        propagate: they say the request was wrong, not the dependency.
        """
        try:
            permit = self.acquire()
        except CircuitOpenError as exc:
            return self._serve_fallback(fallback, exc)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if permit.record_exception(exc) == "failure":
                return self._serve_fallback(fallback, exc)
            raise
        permit.record_result(result)
        return result

    async def call_with_fallback_async(
        self, fn: Callable[..., Awaitable[T]], fallback: Callable[[BaseException], T | Awaitable[T]],
        /, *args: Any, **kwargs: Any,
    ) -> T:
        """Async ``call_with_fallback``; ``fallback`` may be a plain or an async function."""
        try:
            return await self.call_async(fn, *args, **kwargs)
        except CircuitOpenError as exc:
            error: BaseException = exc
        except Exception as exc:
            if self.classify(exc) != "failure" and not self._timed_out(exc):
                raise
            error = exc
        try:
            value = fallback(error)
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            self._count_fallback(False)
            raise
        self._count_fallback(True)
        return value

    def _timed_out(self, exc: BaseException) -> bool:
        return self.config.call_timeout is not None and isinstance(exc, asyncio.TimeoutError)

    def _serve_fallback(self, fallback: Callable[[BaseException], T], error: BaseException) -> T:
        try:
            value = fallback(error)
        except BaseException:
            self._count_fallback(False)
            raise
        self._count_fallback(True)
        return value

    def _count_fallback(self, succeeded: bool) -> None:
        """Count one fallback served (or failed); integrations call this too."""
        with self._lock:
            if succeeded:
                self._n_fallback_success += 1
            else:
                self._n_fallback_failure += 1
        if _observers.observers:
            _observers.notify("fallback_served", self, succeeded)

    @overload
    def __call__(self, fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]: ...
    @overload
    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]: ...

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a function, coroutine function, or (async) generator function."""
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                return self.protect_stream(fn(*args, **kwargs))
            return stream_wrapper
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def sync_stream_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return _ProtectedIterator(self, fn(*args, **kwargs))
            return sync_stream_wrapper
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(fn, *args, **kwargs)
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)
        return wrapper

    def protect_stream(self, stream: AsyncIterable[T]) -> AsyncIterator[T]:
        """Protect an async stream as one call.

        The stream is admitted when its first item is requested (a rejection
        raises ``CircuitOpenError`` there); it records a failure if it raises
        before finishing, a success when it finishes, and no verdict when the
        consumer stops early (``aclose()``, ``break``, cancellation, garbage
        collection). A half-open probe's permit is always handed back.
        """
        return _ProtectedAsyncIterator(self, stream)

    def __enter__(self) -> CircuitBreaker:
        self._push(self.acquire())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        permit = self._pop()
        if exc is None:
            permit.record_success()
        else:
            permit.record_exception(exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def _push(self, permit: Permit) -> None:
        # Permits of nested or concurrent `with` blocks live in a context
        # variable, so threads and asyncio tasks never see each other's.
        if self._stack is None:
            with self._lock:
                if self._stack is None:
                    self._stack = contextvars.ContextVar(f"otel_cb.{self.name}.permits", default=())
        self._stack.set((*self._stack.get(), permit))

    def _pop(self) -> Permit:
        assert self._stack is not None
        stack = self._stack.get()
        self._stack.set(stack[:-1])
        return stack[-1]

    # -- permits: the primitive every integration builds on ------------------

    def acquire(self) -> Permit:
        """Ask for admission of one call and return its ``Permit``.

        Report the call's outcome through the permit exactly once; an
        unreported permit (``release()``, or dropped) is no verdict.

        Raises:
            CircuitOpenError: when the call is rejected.
        """
        epoch = self._epoch
        if self._state is not _CLOSED:
            epoch = self._admit()
        return Permit(self, epoch, self._clock())

    def classify(self, exc: BaseException) -> Verdict:
        """How this breaker judges an exception: ``failure``, ``ignored`` or ``none``.

        ``none`` (no verdict) is for what is not an ``Exception`` at all:
        cancellation, ``GeneratorExit``, ``KeyboardInterrupt``, ``SystemExit``.
        """
        if not isinstance(exc, Exception):
            return "none"
        config = self.config
        if config.ignore_exceptions and isinstance(exc, config.ignore_exceptions):
            return "ignored"
        if config.is_failure is not None:
            return "failure" if config.is_failure(exc) else "ignored"
        return "failure" if isinstance(exc, config.record_exceptions) else "ignored"

    # -- the state machine ----------------------------------------------------

    def _admit(self) -> int:
        """Admission when not closed: lazy open -> half-open, probe slots, rejection."""
        event = None
        rejection = None
        with self._lock:
            state = self._state
            if state is _CLOSED:
                return self._epoch
            if state is _DISABLED:
                return _DISABLED_EPOCH
            now = self._clock()
            if state is _OPEN and now >= self._open_until:
                event = self._transition(_HALF_OPEN, Reason.OPEN_TIMEOUT_ELAPSED, now)
                state = _HALF_OPEN
            if state is _HALF_OPEN:
                if self._probes < self.config.half_open_max_calls and (
                    self._shared is None or self._shared.acquire_probe()
                ):
                    self._probes += 1
                    epoch = self._epoch
                else:
                    rejection = CircuitOpenError(self.name, state, 0.0)
            elif state is _OPEN:
                rejection = CircuitOpenError(self.name, state, self._open_until - now)
            else:
                rejection = CircuitOpenError(self.name, state, None)
            if rejection is not None:
                self._n_rejected += 1
        if event is not None:
            self._emit(event)
        if rejection is not None:
            if _observers.observers:
                _observers.notify("call_rejected", self, rejection)
            raise rejection
        return epoch

    def _record_result(self, epoch: int, start: float, end: float, result: object) -> None:
        predicate = self.config.is_failure_result
        if predicate is not None and predicate(result):
            self._record_failure(epoch, start, end)
        else:
            self._record_success(epoch, start, end)

    def _record_exception(self, epoch: int, start: float, end: float, exc: BaseException) -> Verdict:
        verdict = self.classify(exc)
        if verdict == "failure":
            self._record_failure(epoch, start, end)
        elif verdict == "ignored":
            self._record_ignored(epoch, start, end)
        else:
            self._release(epoch)
        return verdict

    def _record_success(self, epoch: int, start: float, end: float) -> None:
        if epoch == _DISABLED_EPOCH:
            return
        duration = end - start
        slow = self._slow is not None and duration >= self._slow
        event = None
        with self._lock:
            self._n_success += 1
            if slow:
                self._n_slow_success += 1
            if self._histogram is not None:
                self._histogram.record(0, duration)
            if epoch != self._epoch:
                return
            if self._state is _CLOSED:
                self._consecutive_failures = 0
                window = self._window or self._new_window()
                window.record(end, False, slow)
                if slow and window.total >= self.config.minimum_calls and \
                        window.slow / window.total >= self.config.slow_call_rate_threshold:
                    event = self._open(Reason.SLOW_CALL_RATE, end)
            elif self._state is _HALF_OPEN:
                self._end_probe()
                if slow:
                    event = self._open(Reason.PROBE_FAILURE, end)
                else:
                    self._consecutive_successes += 1
                    if self._consecutive_successes >= self.config.success_threshold:
                        event = self._transition(_CLOSED, Reason.PROBE_SUCCESS, end)
        if self._shared is not None and event is None:
            self._shared.on_outcome(False, slow)
        if event is not None:
            self._emit(event)

    def _record_failure(self, epoch: int, start: float, end: float, retry_after: float | None = None) -> None:
        if epoch == _DISABLED_EPOCH:
            return
        duration = end - start
        slow = self._slow is not None and duration >= self._slow
        event = None
        with self._lock:
            self._n_failure += 1
            if slow:
                self._n_slow_failure += 1
            if self._histogram is not None:
                self._histogram.record(1, duration)
            if epoch != self._epoch:
                return
            config = self.config
            if self._state is _CLOSED:
                self._consecutive_failures += 1
                window = self._window or self._new_window()
                window.record(end, True, slow)
                reason = None
                if config.failure_threshold is not None and self._consecutive_failures >= config.failure_threshold:
                    reason = Reason.CONSECUTIVE_FAILURES
                elif window.total >= config.minimum_calls:
                    if config.failure_rate_threshold is not None and \
                            window.failures / window.total >= config.failure_rate_threshold:
                        reason = Reason.FAILURE_RATE
                    elif slow and window.slow / window.total >= config.slow_call_rate_threshold:
                        reason = Reason.SLOW_CALL_RATE
                if reason is not None:
                    event = self._open(reason, end, retry_after)
            elif self._state is _HALF_OPEN:
                self._end_probe()
                event = self._open(Reason.PROBE_FAILURE, end, retry_after)
        if self._shared is not None and event is None:
            self._shared.on_outcome(True, slow)
        if event is not None:
            self._emit(event)

    def _record_ignored(self, epoch: int, start: float, end: float) -> None:
        if epoch == _DISABLED_EPOCH:
            return
        with self._lock:
            self._n_ignored += 1
            if self._histogram is not None:
                self._histogram.record(2, end - start)
            if epoch == self._epoch and self._state is _HALF_OPEN:
                self._end_probe()

    def _release(self, epoch: int) -> None:
        with self._lock:
            if epoch == self._epoch and self._state is _HALF_OPEN:
                self._end_probe()

    def _end_probe(self) -> None:
        self._probes -= 1
        if self._shared is not None:
            self._shared.release_probe()

    def _new_window(self) -> Window:
        config = self.config
        window: Window
        if config.window_type == "count":
            window = CountWindow(int(config.window_size))
        else:
            window = TimeWindow(config.window_size)
        self._window = window
        return window

    def _open(self, reason: Reason, now: float, retry_after: float | None = None) -> StateChangeEvent:
        """Open (or reopen) with backoff, jitter and a server's Retry-After hint. Lock held."""
        config = self.config
        if self._state is _HALF_OPEN:
            self._reopenings += 1
        else:
            self._reopenings = 0
        timeout = min(config.open_timeout * config.backoff_multiplier ** self._reopenings, config.max_open_timeout)
        if retry_after is not None and retry_after > timeout:
            timeout = min(retry_after, config.max_open_timeout)
        if config.jitter:
            timeout += random.random() * config.jitter * timeout
        self._open_until = now + timeout
        self._open_timeout = timeout
        return self._transition(_OPEN, reason, now, timeout)

    def _transition(self, state: CircuitState, reason: Reason, now: float,
                    open_timeout: float | None = None) -> StateChangeEvent:
        """Enter ``state``; the lock is held. Returns the event to emit after releasing it."""
        previous = self._state
        if self._state_time is None:
            self._state_time = [0.0] * len(_STATE_INDEX)
        self._state_time[_STATE_INDEX[previous]] += max(0.0, now - self._since)
        self._since = now
        self._state = state
        self._epoch += 1
        self._probes = 0
        self._consecutive_successes = 0
        if state is _CLOSED:
            self._consecutive_failures = 0
            self._reopenings = 0
            if self._window is not None:
                self._window.reset()
        return StateChangeEvent(self.name, previous, state, reason, now, open_timeout)

    def _emit(self, event: StateChangeEvent) -> None:
        for listener in self._listeners:
            _observers.call_safely(listener, f"listener of circuit breaker {self.name!r}", event)
        if self._shared is not None and event.reason is not Reason.SHARED_STATE:
            _observers.call_safely(self._shared.on_transition, "shared state", event)
        if _observers.observers:
            _observers.notify("state_changed", self, event)

    def _apply_shared_state(self, state: CircuitState, open_remaining: float | None = None) -> None:
        """Enter a state the fleet decided on (from ``otel_cb.shared``); a recorded transition."""
        with self._lock:
            if state is self._state:
                return
            now = self._clock()
            if state is _OPEN:
                remaining = open_remaining if open_remaining is not None else self.config.open_timeout
                self._open_until = now + remaining
                self._open_timeout = remaining
                event = self._transition(_OPEN, Reason.SHARED_STATE, now, remaining)
            else:
                event = self._transition(state, Reason.SHARED_STATE, now)
        self._emit(event)

    def _enable_histogram(self) -> None:
        """Start keeping call durations per outcome (telemetry turns this on)."""
        with self._lock:
            if self._histogram is None:
                self._histogram = DurationHistogram()


class Permit:
    """Admission of one call, and the way to report its outcome.

    Obtained from ``CircuitBreaker.acquire()``. The first report counts; later
    ones are ignored, so a ``finally: permit.release()`` is always safe.
    """

    __slots__ = ("breaker", "_epoch", "_start", "_done")

    def __init__(self, breaker: CircuitBreaker, epoch: int, start: float) -> None:
        self.breaker = breaker
        self._epoch = epoch
        self._start = start
        self._done = False

    @property
    def done(self) -> bool:
        """True once an outcome (or a release) has been reported."""
        return self._done

    def _claim(self) -> bool:
        if self._done:
            return False
        self._done = True
        return True

    def record_success(self) -> None:
        """The call succeeded."""
        if self._claim():
            self.breaker._record_success(self._epoch, self._start, self.breaker._clock())

    def record_failure(self, *, retry_after: float | None = None) -> None:
        """The call failed. ``retry_after``: the server's hint, in seconds, which
        lengthens the open timeout if this failure opens the breaker."""
        if self._claim():
            self.breaker._record_failure(self._epoch, self._start, self.breaker._clock(), retry_after)

    def record_ignored(self) -> None:
        """The call ended in a way that says nothing about the dependency."""
        if self._claim():
            self.breaker._record_ignored(self._epoch, self._start, self.breaker._clock())

    def record_exception(self, exc: BaseException) -> Verdict:
        """Classify ``exc`` with the breaker's rules and record it; returns the verdict."""
        if not self._claim():
            return "none"
        return self.breaker._record_exception(self._epoch, self._start, self.breaker._clock(), exc)

    def record_result(self, result: object) -> None:
        """Record a returned value, applying ``is_failure_result``."""
        if self._claim():
            self.breaker._record_result(self._epoch, self._start, self.breaker._clock(), result)

    def release(self) -> None:
        """No verdict: hand a half-open probe slot back without judging the call."""
        if self._claim():
            self.breaker._release(self._epoch)

    def __del__(self) -> None:
        # A permit dropped without a report must not keep a probe slot forever.
        if not self._done:
            try:
                self.release()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


class _StreamGuard(Generic[T]):
    """What a protected stream, sync or async, does around each item."""

    __slots__ = ("_breaker", "_permit")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit: Permit | None = None

    def before_item(self) -> None:
        if self._permit is None:
            self._permit = self._breaker.acquire()

    def after_error(self, exc: BaseException) -> None:
        if self._permit is not None:
            if isinstance(exc, (StopIteration, StopAsyncIteration)):
                self._permit.record_success()
            else:
                self._permit.record_exception(exc)

    def closed(self) -> None:
        if self._permit is not None:
            self._permit.release()


class _ProtectedAsyncIterator(AsyncIterator[T]):
    __slots__ = ("_guard", "_source", "_iterator")

    def __init__(self, breaker: CircuitBreaker, source: AsyncIterable[T]) -> None:
        self._guard: _StreamGuard[T] = _StreamGuard(breaker)
        self._source = source
        self._iterator: AsyncIterator[T] | None = None

    async def __anext__(self) -> T:
        self._guard.before_item()
        try:
            if self._iterator is None:
                self._iterator = self._source.__aiter__()
            return await self._iterator.__anext__()
        except BaseException as exc:
            self._guard.after_error(exc)
            raise

    async def aclose(self) -> None:
        """Stop early: no verdict, and close the source if it can be closed."""
        self._guard.closed()
        close = getattr(self._iterator or self._source, "aclose", None)
        if close is not None:
            await close()

    def __del__(self) -> None:
        self._guard.closed()


class _ProtectedIterator(Iterator[T]):
    __slots__ = ("_guard", "_source", "_iterator")

    def __init__(self, breaker: CircuitBreaker, source: Iterable[T]) -> None:
        self._guard: _StreamGuard[T] = _StreamGuard(breaker)
        self._source = source
        self._iterator: Iterator[T] | None = None

    def __next__(self) -> T:
        self._guard.before_item()
        try:
            if self._iterator is None:
                self._iterator = iter(self._source)
            return next(self._iterator)
        except BaseException as exc:
            self._guard.after_error(exc)
            raise

    def close(self) -> None:
        """Stop early: no verdict, and close the source if it can be closed."""
        self._guard.closed()
        close = getattr(self._iterator or self._source, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self._guard.closed()
