"""The calling styles of a breaker, all over one admission mechanism.

``call``, ``call_async``, ``@breaker`` (functions, coroutine functions,
generators, async generators), ``with breaker:`` / ``async with``,
``protect_stream``, ``call_with_fallback(_async)`` and ``acquire()`` (permits)
all admit through the current stay's ``admit`` (``_states``) and report to the
stay the call was admitted in. What differs between them is only the shell:
await or not, a permit object or not, a fallback or not.

The guards are the whole call path of ``@breaker`` (``_guard``,
``_guard_async``) and of ``call``/``call_async`` (``_call_guard``,
``_call_guard_async``: the same with the function as first argument): a
decorator builds its guard once, so a decorated call is one frame over ``fn``,
with what never changes after construction (the clock, the config) captured
instead of looked up per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload

from . import _observers
from ._errors import CircuitOpenError
from ._permit import Permit
from ._state import CircuitState, FallbackOutcome

if TYPE_CHECKING:
    import threading

    from ._breaker import CircuitBreaker
    from ._config import CircuitBreakerConfig
    from ._states import State
    from ._stats import CallCounters

__all__ = ["CallingStyles", "FirstCall"]

T = TypeVar("T")
_CLOSED = CircuitState.CLOSED


class _Caller(Protocol):
    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


class _AsyncCaller(Protocol):
    def __call__(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]: ...


_CALL_DOC = """Call ``fn(*args, **kwargs)`` if the breaker admits it: ``breaker.call(fn, *args, **kwargs)``.

Returns:
    What ``fn`` returned.

Raises:
    CircuitOpenError: when the call is rejected; ``fn`` is not called.
    Exception: whatever ``fn`` raised, unchanged.
"""

_CALL_ASYNC_DOC = """Await ``fn(*args, **kwargs)`` if the breaker admits it: ``await breaker.call_async(fn)``.

With ``call_timeout`` set, a call running longer is cancelled and raises
``TimeoutError`` (``asyncio.TimeoutError`` before Python 3.11), counted as a
failure whatever the exception rules say.

Raises:
    CircuitOpenError: when the call is rejected; ``fn`` is not called.
    Exception: whatever ``fn`` raised, unchanged.
"""


class FirstCall:
    """A breaker's ``call`` or ``call_async`` until the first call builds the real guard.

    Holds its breaker as a bound method holds its object: ``call =
    CircuitBreaker(...).call`` keeps the breaker alive (the cycle this makes
    is freed by the cycle collector, as the built guards' is).
    """

    __slots__ = ("_breaker", "_index")

    def __init__(self, breaker: CallingStyles, index: int) -> None:
        self._breaker = breaker
        self._index = index

    def __call__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._breaker._make_callers()[self._index](fn, *args, **kwargs)

    @classmethod
    def install(cls, breaker: CallingStyles) -> None:
        """Give ``breaker`` stand-ins for both guards."""
        breaker.call, breaker.call_async = cls(breaker, 0), cls(breaker, 1)  # type: ignore[method-assign]


class CallingStyles:
    """The calling styles, mixed into ``CircuitBreaker`` (which holds the state they use)."""

    if TYPE_CHECKING:  # held by CircuitBreaker
        __slots__ = ()
        name: str
        _config: CircuitBreakerConfig
        _clock: Callable[[], float]
        _lock: threading.Lock
        _current: State
        _failed_result: Callable[[Any], bool] | None
        _counters: CallCounters
        _stack: contextvars.ContextVar[tuple[Permit, ...]] | None

        def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
            """See ``_CALL_DOC``."""
            ...

        def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                       **kwargs: Any) -> Coroutine[Any, Any, T]:
            """See ``_CALL_ASYNC_DOC``."""
            ...
    else:
        # ``breaker.call`` *is* its guard, held in a slot: reading a slot is
        # the cheapest attribute read there is (a property, even over
        # ``attrgetter``, costs a descriptor call per call), so calling through
        # it costs no Python frame but the guard's own (and ``call_async``
        # returns the guard's coroutine: one per call, not two).
        __slots__ = {"call": _CALL_DOC, "call_async": _CALL_ASYNC_DOC}

    def _make_callers(self) -> tuple[_Caller, _AsyncCaller]:
        # Made on first use: an idle breaker does not pay for them. (They refer
        # back to the breaker, so a breaker that made them is freed by the
        # cycle collector rather than by reference counting.)
        callers = cast(_Caller, self._call_guard()), cast(_AsyncCaller, self._call_guard_async())
        self.call, self.call_async = callers  # type: ignore[method-assign]
        return callers

    # The guards. ``fn(*args)`` when there are no keyword arguments (the usual
    # case): ``fn(*args, **kwargs)`` copies the dict first. The call guards
    # repeat the decorator guards with the function as first argument, rather
    # than guarding ``operator.call``: one C call and one tuple fewer per call.

    def _guard(self, fn: Callable[..., T]) -> Callable[..., T]:
        breaker = cast("CircuitBreaker", self)
        clock = self._clock

        def guarded(*args: Any, **kwargs: Any) -> T:
            stay = breaker._current
            if stay.kind is not _CLOSED:
                stay = stay.admit(breaker)  # raises CircuitOpenError on a rejection
            start = clock()
            try:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                stay.on_exception(breaker, start, clock(), exc)
                raise
            stay.on_success(breaker, start, clock(), result)
            return result
        return guarded

    def _call_guard(self) -> Callable[..., Any]:
        breaker = cast("CircuitBreaker", self)
        clock = self._clock

        def call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
            stay = breaker._current
            if stay.kind is not _CLOSED:
                stay = stay.admit(breaker)  # raises CircuitOpenError on a rejection
            start = clock()
            try:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                stay.on_exception(breaker, start, clock(), exc)
                raise
            stay.on_success(breaker, start, clock(), result)
            return result
        return call

    def _guard_async(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        breaker = cast("CircuitBreaker", self)
        clock = self._clock
        timeout = self._config.call_timeout

        async def guarded(*args: Any, **kwargs: Any) -> T:
            stay = breaker._current
            if stay.kind is not _CLOSED:
                stay = stay.admit(breaker)  # raises CircuitOpenError on a rejection
            start = clock()
            try:
                if timeout is None:
                    result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                else:
                    result = await asyncio.wait_for(fn(*args, **kwargs), timeout)
            except BaseException as exc:
                stay.on_exception(breaker, start, clock(), exc)
                raise
            stay.on_success(breaker, start, clock(), result)
            return result
        return guarded

    def _call_guard_async(self) -> Callable[..., Awaitable[Any]]:
        breaker = cast("CircuitBreaker", self)
        clock = self._clock
        timeout = self._config.call_timeout

        async def call_async(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
            stay = breaker._current
            if stay.kind is not _CLOSED:
                stay = stay.admit(breaker)  # raises CircuitOpenError on a rejection
            start = clock()
            try:
                if timeout is None:
                    result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                else:
                    result = await asyncio.wait_for(fn(*args, **kwargs), timeout)
            except BaseException as exc:
                stay.on_exception(breaker, start, clock(), exc)
                raise
            stay.on_success(breaker, start, clock(), result)
            return result
        return call_async

    # -- permits: the primitive every integration builds on ------------------

    def acquire(self) -> Permit:
        """Ask for admission of one call and return its ``Permit``.

        Report the call's outcome through the permit exactly once; an
        unreported permit (``release()``, or dropped) is no verdict.

        Raises:
            CircuitOpenError: when the call is rejected.
        """
        stay = self._current
        if stay.kind is not _CLOSED:
            stay = stay.admit(self)  # type: ignore[arg-type]  # raises CircuitOpenError on a rejection
        return stay.permit_type(self, stay, self._clock())  # type: ignore[arg-type]

    # -- fallbacks -------------------------------------------------------------

    def call_with_fallback(
        self, fn: Callable[..., T], fallback: Callable[[BaseException], T], /,
        *args: Any, **kwargs: Any,
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
        with self._lock:
            self._counters.count_fallback(outcome)
        if _observers.observers:
            _observers.notify("fallback_served", self, outcome)

    # -- decorators and streams ------------------------------------------------

    @overload
    def __call__(self, fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]: ...
    @overload
    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]: ...

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a function, coroutine function, or (async) generator function."""
        breaker = cast("CircuitBreaker", self)
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            def stream_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                return _ProtectedAsyncIterator(breaker, fn(*args, **kwargs))
            return stream_wrapper
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def sync_stream_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return _ProtectedIterator(breaker, fn(*args, **kwargs))
            return sync_stream_wrapper
        if inspect.iscoroutinefunction(fn):
            return functools.wraps(fn)(breaker._guard_async(fn))
        return functools.wraps(fn)(breaker._guard(fn))

    def protect_stream(self, stream: AsyncIterable[T]) -> AsyncIterator[T]:
        """Protect an async stream as one call.

        The stream is admitted when its first item is requested (a rejection
        raises ``CircuitOpenError`` there); it records a failure if it raises
        before finishing, a success when it finishes, and no verdict when the
        consumer stops early (``aclose()``, ``break``, cancellation, garbage
        collection). A half-open probe's permit is always handed back.
        """
        return _ProtectedAsyncIterator(cast("CircuitBreaker", self), stream)

    # -- context managers -------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        permit = self.acquire()
        # Permits of nested or concurrent `with` blocks live in a context
        # variable, so threads and asyncio tasks never see each other's.
        stack = self._stack
        if stack is None:
            with self._lock:
                if self._stack is None:
                    self._stack = contextvars.ContextVar(  # type: ignore[misc]
                        f"otel_cb.{self.name}.permits", default=())
                stack = self._stack
        stack.set((*stack.get(), permit))
        return self  # type: ignore[return-value]  # always a CircuitBreaker

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
