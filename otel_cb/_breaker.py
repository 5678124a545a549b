"""`CircuitBreaker`: the state machine, its call paths and its permits.

The breaker is I/O-free: all time comes from the injected clock, and every
call out to code it does not own (listeners, observers, predicates, shared
state) goes through ``_observers.call_safely``. One non-reentrant lock guards
the state; it is never held while the protected call runs, and never while
listeners run.

Each transition bumps an epoch. A call carries the epoch it was admitted in,
and its outcome moves the state machine only if the epoch is still current:
a slow call admitted while closed cannot, say, close a breaker that has since
opened and gone half-open. Such a stale outcome still counts in the
statistics (``snapshot().calls``).

The closed-state success is the hot path: one lock round trip, no allocation,
and the rate rules re-checked only when the window just reached
``minimum_calls`` or aged (the only ways a success can raise a rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import math
import operator
import random
import threading
import time
from bisect import bisect_left as _bisect_left
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast, overload

from . import _observers
from ._config import CircuitBreakerConfig
from ._errors import CircuitOpenError
from ._state import CircuitState, FallbackOutcome, Reason, StateChangeEvent, Verdict
from ._stats import DurationHistogram, HistogramData
from ._window import CountWindow, TimeWindow, Window

__all__ = ["BreakerSnapshot", "CircuitBreaker", "Permit", "SharedStateSync"]

T = TypeVar("T")
Clock = Callable[[], float]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_STATE_INDEX = {state: index for index, state in enumerate(CircuitState)}
_DEFAULT_CONFIG = CircuitBreakerConfig()
_DISABLED_EPOCH = -1  # calls admitted while disabled record nothing
_UNDECIDED = object()  # a predicate that raised: fall back to the rule it replaces
_ELSEWHERE = object()  # not the hot path's case: the full rules decide


def _call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


# Calls its first argument with the rest; in C from Python 3.11.
_invoke: Callable[..., Any] = getattr(operator, "call", _call)


class _Caller(Protocol):
    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


class _AsyncCaller(Protocol):
    def __call__(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> Awaitable[T]: ...


class SharedStateSync(Protocol):
    """What a shared-state backend (``otel_cb.shared``) plugs into a breaker.

    The breaker calls these; none may block for long. ``acquire_probe`` and
    ``release_probe`` are called with the breaker's lock held. A method that
    raises anyway is logged once and the breaker goes on with local state.
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
        buffered_calls: Calls the window holds now (closed state; 0 otherwise).
        consecutive_failures: Failures since the last success (closed state).
        half_open_calls: Probes in flight (half-open state).
        retry_after: Seconds until a probe is admitted while open, else None.
        time_in_state: Seconds spent in each state since the breaker was made,
            the current stay included.
        calls: Calls since the breaker was made, by outcome
            (``success``, ``failure``, ``ignored``, ``rejected``).
        slow_calls: Slow calls by outcome (``success``, ``failure``).
        fallbacks: Fallbacks served, by outcome (``success``, ``failure``,
            ``refused``: a fail-closed answer, served but not a substitute).
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
        "name", "_config", "_clock", "_lock", "_state", "_epoch", "_window",
        "_consecutive_failures", "_consecutive_successes", "_probes", "_open_until",
        "_open_timeout", "_reopenings", "_since", "_state_time", "_listeners",
        "_slow_at", "_min_calls", "_failure_rate_at", "_slow_rate_at", "_failed_result",
        "_n_success", "_n_failure", "_n_ignored", "_rejections",
        "_n_slow_success", "_n_slow_failure", "_fallbacks",
        "_histogram", "_stack", "_shared", "_orphans", "_caller", "_caller_async", "__weakref__",
    )

    def __init__(self, name: str, config: CircuitBreakerConfig | None = None, *, clock: Clock | None = None) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"name: {name!r} is not allowed; use a non-empty string of at most 200 characters")
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise ValueError(f"config: {config!r} is not allowed; use a CircuitBreakerConfig or None")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock: {clock!r} is not allowed; use a zero-argument callable returning seconds")
        config = config if config is not None else _DEFAULT_CONFIG
        self.name = name
        self._config = config
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
        # The rules, flattened once so the call path reads one attribute each;
        # a rule that is off gets a bound no value reaches.
        self._slow_at = config.slow_call_duration if config.slow_call_duration is not None else math.inf
        minimum = config.minimum_calls
        if config.window_type == "count":
            # A count window never holds more than window_size calls (as in resilience4j).
            minimum = min(minimum, int(config.window_size))
        self._min_calls = minimum
        self._failure_rate_at = config.failure_rate_threshold if config.failure_rate_threshold is not None else math.inf
        self._slow_rate_at = config.slow_call_rate_threshold if config.slow_call_duration is not None else math.inf
        self._failed_result = config.is_failure_result
        self._n_success = self._n_failure = self._n_ignored = 0
        # Rejections are counted without the lock: next() on a count is one
        # atomic step for the interpreter.
        self._rejections = itertools.count()
        self._n_slow_success = self._n_slow_failure = 0
        self._fallbacks = {"success": 0, "failure": 0, "refused": 0}
        self._histogram: DurationHistogram | None = None
        self._stack: contextvars.ContextVar[tuple[Permit, ...]] | None = None
        self._shared: SharedStateSync | None = None
        # Epochs of probe permits dropped unreported, handed back at the next
        # admission: a finaliser may run while this thread holds the lock.
        self._orphans: list[int] = []
        self._caller: _Caller | None = None
        self._caller_async: _AsyncCaller | None = None
        _observers.live_breakers.add(self)
        if _observers.observers:
            _observers.notify("breaker_created", self)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's settings (read-only: the call path caches them)."""
        return self._config

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
            if self._orphans:
                self._adopt_orphans()
            now = self._clock()
            state = self._state
            total = failures = slow = 0
            if self._window is not None and state is _CLOSED:
                # Read without aging the window: aging is the record path's
                # job, which re-checks the rate rules when it happens.
                total, failures, slow = self._window.counts(now)
            time_in_state = {s: (self._state_time[index] if self._state_time else 0.0)
                             for s, index in _STATE_INDEX.items()}
            time_in_state[state] += max(0.0, now - self._since)
            return BreakerSnapshot(
                name=self.name,
                state=state,
                failure_rate=failures / total if total else 0.0,
                slow_call_rate=slow / total if total else 0.0,
                buffered_calls=total,
                consecutive_failures=self._consecutive_failures if state is _CLOSED else 0,
                half_open_calls=self._probes if state is _HALF_OPEN else 0,
                retry_after=max(0.0, self._open_until - now) if state is _OPEN else None,
                time_in_state=time_in_state,
                calls={"success": self._n_success, "failure": self._n_failure,
                       "ignored": self._n_ignored, "rejected": _count_of(self._rejections)},
                slow_calls={"success": self._n_slow_success, "failure": self._n_slow_failure},
                fallbacks=dict(self._fallbacks),
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
        caller = self._caller or self._make_callers()[0]
        return caller(fn, *args, **kwargs)

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` if the breaker admits it.

        With ``call_timeout`` set, a call running longer is cancelled and
        raises ``TimeoutError`` (``asyncio.TimeoutError`` before Python 3.11),
        counted as a failure whatever the exception rules say.

        Raises:
            CircuitOpenError: when the call is rejected; ``fn`` is not called.
            Exception: whatever ``fn`` raised, unchanged.
        """
        caller = self._caller_async or self._make_callers()[1]
        return await caller(fn, *args, **kwargs)

    # The two guards are the whole call path of ``call``/``call_async`` and of
    # ``@breaker``. A decorator builds its guard once, so a decorated call is one
    # frame over ``fn``; what never changes after construction (the clock, the
    # config) is captured instead of looked up on every call, and the methods
    # they need are reached as module-level functions.

    def _make_callers(self) -> tuple[_Caller, _AsyncCaller]:
        # Guards of ``_invoke`` take the function as first argument. Made on
        # first use: an idle breaker does not pay for them. (They refer back to
        # the breaker, so a breaker that made them is freed by the cycle
        # collector rather than by reference counting.)
        callers = cast(_Caller, self._guard(_invoke)), cast(_AsyncCaller, self._guard_async(_invoke))
        self._caller, self._caller_async = callers
        return callers

    def _guard(self, fn: Callable[..., T]) -> Callable[..., T]:
        breaker = self
        clock = self._clock
        record = _record_success if self._failed_result is None else _record_result

        def guarded(*args: Any, **kwargs: Any) -> T:
            epoch = breaker._epoch
            if breaker._state is not _CLOSED:
                admitted = _try_admit(breaker)
                if isinstance(admitted, CircuitOpenError):
                    raise admitted
                epoch = admitted
            start = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                _record_exception(breaker, epoch, start, clock(), exc)
                raise
            record(breaker, epoch, start, clock(), result)
            return result
        return guarded

    def _guard_async(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        breaker = self
        clock = self._clock
        record = _record_success if self._failed_result is None else _record_result
        timeout = self._config.call_timeout

        async def guarded(*args: Any, **kwargs: Any) -> T:
            epoch = breaker._epoch
            if breaker._state is not _CLOSED:
                admitted = _try_admit(breaker)
                if isinstance(admitted, CircuitOpenError):
                    raise admitted
                epoch = admitted
            start = clock()
            try:
                if timeout is None:
                    result = await fn(*args, **kwargs)
                else:
                    result = await asyncio.wait_for(fn(*args, **kwargs), timeout)
            except BaseException as exc:
                _record_exception(breaker, epoch, start, clock(), exc)
                raise
            record(breaker, epoch, start, clock(), result)
            return result
        return guarded

    def call_with_fallback(
        self, fn: Callable[..., T], fallback: Callable[[BaseException], T], /, *args: Any, **kwargs: Any
    ) -> T:
        """Like ``call``, but a rejection or a failure returns ``fallback(exc)`` instead.

        Ignored exceptions (see ``ignore_exceptions`` and ``is_failure``)
        propagate: they say the request was wrong, not the dependency. A
        returned value is returned even when ``is_failure_result`` counts it
        as a failure.
        """
        try:
            permit = self.acquire()
        except CircuitOpenError as exc:
            with self._counting_fallback():
                return fallback(exc)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if permit.record_exception(exc) == "failure":
                with self._counting_fallback():
                    return fallback(exc)
            raise
        permit.record_result(result)
        return result

    async def call_with_fallback_async(
        self, fn: Callable[..., Awaitable[T]], fallback: Callable[[BaseException], T | Awaitable[T]],
        /, *args: Any, **kwargs: Any,
    ) -> T:
        """Async ``call_with_fallback``; ``fallback`` may be a plain or an async function."""
        error: BaseException
        try:
            permit = self.acquire()
        except CircuitOpenError as exc:
            error = exc
        else:
            try:
                result = await self._with_timeout(fn(*args, **kwargs))
            except BaseException as exc:
                if permit.record_exception(exc) != "failure":
                    raise
                error = exc
            else:
                permit.record_result(result)
                return result
        with self._counting_fallback():
            value = fallback(error)
            if inspect.isawaitable(value):
                value = await value
            return value

    def _with_timeout(self, awaitable: Awaitable[T]) -> Awaitable[T]:
        timeout = self._config.call_timeout
        return awaitable if timeout is None else asyncio.wait_for(awaitable, timeout)

    @contextlib.contextmanager
    def _counting_fallback(self) -> Iterator[None]:
        try:
            yield
        except Exception:
            self.count_fallback("failure")
            raise
        self.count_fallback("success")

    def count_fallback(self, outcome: FallbackOutcome) -> None:
        """Count one fallback served: ``success``, ``failure`` (the fallback raised)
        or ``refused`` (a fail-closed answer). Integrations that serve their own
        fallbacks call this; ``call_with_fallback`` does it itself."""
        if outcome not in self._fallbacks:
            raise ValueError(f"outcome: {outcome!r} is not allowed; use 'success', 'failure' or 'refused'")
        with self._lock:
            self._fallbacks[outcome] += 1
        if _observers.observers:
            _observers.notify("fallback_served", self, outcome)

    @overload
    def __call__(self, fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]: ...
    @overload
    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]: ...

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a function, coroutine function, or (async) generator function."""
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                return _ProtectedAsyncIterator(self, fn(*args, **kwargs))
            return stream_wrapper
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def sync_stream_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return _ProtectedIterator(self, fn(*args, **kwargs))
            return sync_stream_wrapper
        if inspect.iscoroutinefunction(fn):
            return functools.wraps(fn)(self._guard_async(fn))
        return functools.wraps(fn)(self._guard(fn))

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
        permit = self.acquire()
        # Permits of nested or concurrent `with` blocks live in a context
        # variable, so threads and asyncio tasks never see each other's.
        stack = self._stack
        if stack is None:
            with self._lock:
                if self._stack is None:
                    self._stack = contextvars.ContextVar(f"otel_cb.{self.name}.permits", default=())
                stack = self._stack
        stack.set((*stack.get(), permit))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._stack is not None, "__exit__ without __enter__"
        permits = self._stack.get()
        self._stack.set(permits[:-1])
        if exc is None:
            permits[-1].record_success()
        else:
            permits[-1].record_exception(exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

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

    def classify(self, exc: BaseException) -> Verdict | None:
        """How this breaker judges an exception: ``failure``, ``ignored`` or None.

        None (no verdict) is for what is not an ``Exception`` at all:
        cancellation, ``GeneratorExit``, ``KeyboardInterrupt``, ``SystemExit``.
        An ``is_failure`` predicate that raises is logged once and the
        ``record_exceptions`` rule decides instead.
        """
        if not isinstance(exc, Exception):
            return None
        config = self._config
        if config.ignore_exceptions and isinstance(exc, config.ignore_exceptions):
            return "ignored"
        if config.is_failure is not None:
            decided = _observers.call_safely(
                config.is_failure, f"is_failure of circuit breaker {self.name!r}", exc, default=_UNDECIDED)
            if decided is not _UNDECIDED:
                return "failure" if decided else "ignored"
        return "failure" if isinstance(exc, config.record_exceptions) else "ignored"

    # -- the state machine ----------------------------------------------------

    def _admit(self) -> int:
        """Admit one call when not closed and return its epoch.

        Raises:
            CircuitOpenError: when the call is rejected.
        """
        admitted = self._try_admit()
        if isinstance(admitted, CircuitOpenError):
            raise admitted
        return admitted

    def _try_admit(self) -> int | CircuitOpenError:
        """Admission when not closed: lazy open -> half-open, probe slots, rejection.

        Returns the call's epoch, or the rejection for the caller to raise (one
        frame fewer for the traceback: rejecting is the hot path while open).
        """
        if self._state is _OPEN:
            # Rejecting while open takes no lock: ``_open`` sets the deadline
            # before the state, so a reader that sees OPEN sees its deadline.
            now = self._clock()
            open_until = self._open_until
            if now < open_until:
                refused = CircuitOpenError(self.name, _OPEN, open_until - now)
                next(self._rejections)  # _reject, inlined
                if _observers.observers:
                    _observers.notify("call_rejected", self, refused)
                return refused
        event = None
        rejection: CircuitOpenError | None = None
        lock = self._lock
        lock.acquire()
        try:
            state = self._state
            if state is _OPEN:  # seen past its deadline above, or opened since
                now = self._clock()
                if now < self._open_until:
                    rejection = CircuitOpenError(self.name, state, self._open_until - now)
                else:
                    event = self._transition(_HALF_OPEN, Reason.OPEN_TIMEOUT_ELAPSED, now)
                    state = _HALF_OPEN
            if state is _HALF_OPEN:
                if self._orphans:
                    self._adopt_orphans()
                shared = self._shared
                if self._probes < self._config.half_open_max_calls and (
                    shared is None
                    or _observers.call_safely(shared.acquire_probe, "shared state", default=True)
                ):
                    self._probes += 1
                    epoch = self._epoch
                else:
                    rejection = CircuitOpenError(self.name, state, 0.0)
            elif state is _FORCED_OPEN:
                rejection = CircuitOpenError(self.name, state, None)
            elif state is _CLOSED:
                epoch = self._epoch
            elif state is _DISABLED:
                epoch = _DISABLED_EPOCH
        finally:
            lock.release()
        if event is not None:
            self._emit(event)
        if rejection is not None:
            return self._reject(rejection)
        return epoch

    def _reject(self, rejection: CircuitOpenError) -> CircuitOpenError:
        next(self._rejections)
        if _observers.observers:
            _observers.notify("call_rejected", self, rejection)
        return rejection

    def _record_result(self, epoch: int, start: float, end: float, result: object) -> None:
        """A call returned: a success, unless ``is_failure_result`` says otherwise.
        A raising predicate is logged once and the call counts as a success."""
        if self._failed_result is not None and _observers.call_safely(
            self._failed_result, f"is_failure_result of circuit breaker {self.name!r}", result, default=False
        ):
            self._record(epoch, start, end, True)
        else:
            self._record_success(epoch, start, end)

    def _record_success(self, epoch: int, start: float, end: float, result: object = None) -> None:
        """The hot path: a fast success in the closed state; anything else goes to ``_record``.
        ``result`` is unused: this is ``_record_result`` when there is no ``is_failure_result``."""
        duration = end - start
        lock = self._lock
        lock.acquire()
        try:
            if epoch != self._epoch or self._state is not _CLOSED or duration >= self._slow_at:
                event: StateChangeEvent | object | None = _ELSEWHERE
            else:
                event = None
                self._n_success += 1
                self._consecutive_failures = 0
                histogram = self._histogram
                if histogram is not None:  # DurationHistogram.record, inlined
                    histogram.counts[0][_bisect_left(histogram.boundaries, duration)] += 1
                    histogram.sums[0] += duration
                window = self._window
                if window is not None and end < window.head_end:
                    # Same bucket as the last call: nothing ages, so only
                    # reaching minimum_calls can make a rate rule fire.
                    window.head_calls[window.head_slot] += 1
                    total = window.total = window.total + 1
                    if total == self._min_calls:
                        event = self._check_rates(window, end, None)
                else:
                    window = window or self._new_window()
                    if window.add_success(end) or window.total == self._min_calls:
                        event = self._check_rates(window, end, None)
        finally:
            lock.release()
        if event is None:
            if self._shared is not None:
                _observers.call_safely(self._shared.on_outcome, "shared state", False, False)
        elif event is _ELSEWHERE:
            self._record(epoch, start, end, False)
        else:
            self._emit(event)  # type: ignore[arg-type]

    def _record_exception(self, epoch: int, start: float, end: float, exc: BaseException) -> Verdict | None:
        if self._config.call_timeout is not None and _is_call_timeout(exc):
            verdict: Verdict | None = "failure"  # ours: a failure whatever the exception rules say
        else:
            verdict = self.classify(exc)
        if verdict == "failure":
            self._record(epoch, start, end, True)
        elif verdict == "ignored":
            self._record_ignored(epoch, start, end)
        else:
            self._release(epoch)
        return verdict

    def _record(self, epoch: int, start: float, end: float, failed: bool, retry_after: float | None = None) -> None:
        """Record a success or a failure in any state: the full rules."""
        if epoch == _DISABLED_EPOCH:
            return
        duration = end - start
        slow = duration >= self._slow_at
        event = None
        closed = False
        with self._lock:
            if failed:
                self._n_failure += 1
                self._n_slow_failure += slow
            else:
                self._n_success += 1
                self._n_slow_success += slow
            if self._histogram is not None:
                self._histogram.record(1 if failed else 0, duration)
            if epoch == self._epoch:
                if self._state is _CLOSED:
                    closed = True
                    window = self._window or self._new_window()
                    window.record(end, failed, slow)
                    if failed:
                        self._consecutive_failures += 1
                        threshold = self._config.failure_threshold
                        if threshold is not None and self._consecutive_failures >= threshold:
                            event = self._open(Reason.CONSECUTIVE_FAILURES, end, retry_after)
                    else:
                        self._consecutive_failures = 0
                    if event is None:
                        event = self._check_rates(window, end, retry_after)
                elif self._state is _HALF_OPEN:
                    self._end_probe()
                    if failed or slow:
                        # A slow probe says the dependency is not back yet.
                        event = self._open(Reason.PROBE_FAILURE, end, retry_after)
                    else:
                        self._consecutive_successes += 1
                        if self._consecutive_successes >= self._config.success_threshold:
                            event = self._transition(_CLOSED, Reason.PROBE_SUCCESS, end)
        if event is not None:
            self._emit(event)
        elif closed and self._shared is not None:
            _observers.call_safely(self._shared.on_outcome, "shared state", failed, slow)

    def _check_rates(self, window: Window, now: float, retry_after: float | None) -> StateChangeEvent | None:
        """Open if a rate rule fires on the window as it stands. Lock held."""
        total = window.total
        if total < self._min_calls:
            return None
        if window.failures / total >= self._failure_rate_at:
            return self._open(Reason.FAILURE_RATE, now, retry_after)
        if window.slow / total >= self._slow_rate_at:
            return self._open(Reason.SLOW_CALL_RATE, now, retry_after)
        return None

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

    def _adopt_orphans(self) -> None:
        """Hand back the probe slots of permits dropped unreported. Lock held."""
        orphans = self._orphans
        while orphans:
            if orphans.pop() == self._epoch and self._state is _HALF_OPEN:
                self._end_probe()

    def _end_probe(self) -> None:
        self._probes -= 1
        if self._shared is not None:
            _observers.call_safely(self._shared.release_probe, "shared state")

    def _new_window(self) -> Window:
        config = self._config
        window: Window
        if config.window_type == "count":
            window = CountWindow(int(config.window_size))
        else:
            window = TimeWindow(config.window_size)
        self._window = window
        return window

    def _open(self, reason: Reason, now: float, retry_after: float | None = None) -> StateChangeEvent:
        """Open (or reopen) with backoff, jitter and a server's Retry-After hint. Lock held."""
        config = self._config
        if self._state is _HALF_OPEN:
            self._reopenings += 1
        else:
            self._reopenings = 0
        try:
            timeout = config.open_timeout * config.backoff_multiplier ** self._reopenings
        except OverflowError:  # a dependency down for a thousand reopenings
            timeout = config.max_open_timeout
        timeout = min(timeout, config.max_open_timeout)
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
        self._orphans.clear()  # every orphan belongs to an earlier epoch now
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

    # -- seams for shared state and telemetry ----------------------------------

    @property
    def shared_state(self) -> SharedStateSync | None:
        """The shared-state backend link attached to this breaker, if any."""
        return self._shared

    def attach_shared_state(self, sync: SharedStateSync | None) -> None:
        """Attach a shared-state link (``otel_cb.shared`` does); None detaches."""
        with self._lock:
            self._shared = sync

    def apply_shared_state(self, state: CircuitState, open_remaining: float | None = None) -> None:
        """Enter a state the fleet decided on (from a shared-state backend); a recorded transition."""
        with self._lock:
            if state is self._state:
                return
            now = self._clock()
            if state is _OPEN:
                remaining = open_remaining if open_remaining is not None else self._config.open_timeout
                self._open_until = now + remaining
                self._open_timeout = remaining
                event = self._transition(_OPEN, Reason.SHARED_STATE, now, remaining)
            else:
                event = self._transition(state, Reason.SHARED_STATE, now)
        self._emit(event)

    def enable_duration_histogram(self) -> None:
        """Start keeping call durations per outcome (telemetry turns this on)."""
        with self._lock:
            if self._histogram is None:
                self._histogram = DurationHistogram()


# The guards call these as plain functions: cheaper to reach than bound methods.
_try_admit = CircuitBreaker._try_admit
_record_success = CircuitBreaker._record_success
_record_result = CircuitBreaker._record_result
_record_exception = CircuitBreaker._record_exception


def _count_of(counter: itertools.count[int]) -> int:
    """The next value of ``counter``, without taking it (its repr is ``count(N)``)."""
    return int(repr(counter)[6:-1])


def _is_call_timeout(exc: BaseException) -> bool:
    """True for the TimeoutError that ``asyncio.wait_for`` raises when our ``call_timeout`` expires."""
    return isinstance(exc, asyncio.TimeoutError) and isinstance(exc.__cause__, asyncio.CancelledError)


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
            self.breaker._record(self._epoch, self._start, self.breaker._clock(), True, retry_after)

    def record_ignored(self) -> None:
        """The call ended in a way that says nothing about the dependency."""
        if self._claim():
            self.breaker._record_ignored(self._epoch, self._start, self.breaker._clock())

    def record_exception(self, exc: BaseException) -> Verdict | None:
        """Classify ``exc`` with the breaker's rules and record it; returns the verdict
        (None: no verdict, or the permit was already reported)."""
        if not self._claim():
            return None
        return self.breaker._record_exception(self._epoch, self._start, self.breaker._clock(), exc)

    def record_result(self, result: object) -> None:
        """Record a returned value, applying ``is_failure_result``."""
        if self._claim():
            self.breaker._record_result(self._epoch, self._start, self.breaker._clock(), result)

    def record(self, verdict: Verdict | None, *, retry_after: float | None = None) -> None:
        """Record a verdict reached elsewhere (a classifier, a hook); None releases.

        ``retry_after`` applies to a failure, as in ``record_failure``.
        """
        if verdict == "failure":
            self.record_failure(retry_after=retry_after)
        elif verdict == "success":
            self.record_success()
        elif verdict == "ignored":
            self.record_ignored()
        elif verdict is None:
            self.release()
        else:
            self.release()
            raise ValueError(f"verdict: {verdict!r} is not allowed; use 'success', 'failure', 'ignored' or None")

    def release(self) -> None:
        """No verdict: hand a half-open probe slot back without judging the call."""
        if self._claim():
            self.breaker._release(self._epoch)

    def __del__(self) -> None:
        # A permit dropped without a report must not keep a probe slot forever.
        # A finaliser can run inside any allocation, even one made while this
        # thread holds the breaker's lock, so it only leaves a note (an atomic
        # append) that the next admission acts on.
        if not self._done:
            self._done = True
            breaker = self.breaker
            if self._epoch == breaker._epoch and breaker._state is _HALF_OPEN:
                breaker._orphans.append(self._epoch)


class _StreamGuard:
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
    # No __del__: a consumer that drops the stream drops the permit, whose
    # own finaliser hands a probe slot back.
    __slots__ = ("_guard", "_source", "_iterator")

    def __init__(self, breaker: CircuitBreaker, source: AsyncIterable[T]) -> None:
        self._guard = _StreamGuard(breaker)
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


class _ProtectedIterator(Iterator[T]):
    __slots__ = ("_guard", "_source", "_iterator")

    def __init__(self, breaker: CircuitBreaker, source: Iterable[T]) -> None:
        self._guard = _StreamGuard(breaker)
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
