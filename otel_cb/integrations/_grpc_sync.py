"""The ``grpc`` (sync) shell of the grpc integration: its interceptor, call objects and patch.

Adapts :class:`~otel_cb.integrations._grpc_exchange.Guard` to ``grpc``'s
client interceptors and ``grpc.Call`` / ``grpc.Future`` objects: a rejected
or served call is handed back as a finished call. The patch protects every
multi-callable of ``grpc._channel.Channel``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc import (
    StreamStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    UnaryUnaryClientInterceptor,
)

from .. import CircuitBreaker, CircuitOpenError, Permit
from ..plugin import Call, Verdict, log_once
from ._grpc_exchange import OK, Admission, Guard, Selector, guarded, served_value

__all__ = ["CircuitBreakerInterceptor", "GrpcCircuitOpenError", "protect_multicallable"]


class _FinishedCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A sync call that is over before it is returned: what a rejection or a fallback hands back.

    Subclasses say how it ended: ``code()``, ``details()``, ``result()``,
    ``exception()`` and iteration.
    """

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        return False  # over already: nothing will be called later

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        fn(self)


class GrpcCircuitOpenError(CircuitOpenError, grpc.RpcError, _FinishedCall):  # type: ignore[misc]
    """A call rejected by an open breaker, as a ``grpc`` client sees it.

    Both an ``otel_cb.CircuitOpenError`` and a finished, failed ``grpc.Call`` /
    ``grpc.Future``: ``code()`` is ``UNAVAILABLE``, ``details()`` names the
    breaker, ``result()`` and iteration raise it. It is what a rejected call
    returns from ``.future()`` or a streaming call, and what a blocking call raises.
    """

    @classmethod
    def from_rejection(cls, error: CircuitOpenError) -> GrpcCircuitOpenError:
        return cls(error.name, error.state, error.retry_after)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> GrpcCircuitOpenError:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def __iter__(self) -> GrpcCircuitOpenError:
        return self

    def __next__(self) -> Any:
        raise self


def _sync_done(guard: Guard, permit: Permit, call: Call, outcome: Any) -> Verdict | None:
    """Judge a finished sync call (a ``grpc.Call`` / ``grpc.Future``); returns the verdict."""
    try:
        if outcome.cancelled():
            permit.release()
            return None
        error = outcome.exception()
        if error is None:  # ended with OK (asking code() would take the call's lock again)
            return guard.judge(permit, call, outcome, OK, None)
        if not isinstance(error, grpc.RpcError):
            return guard.judge(permit, call, outcome, None, error)  # raised in the client, not a status
        code = outcome.code()
        return guard.judge(permit, call, outcome, code, None, outcome.trailing_metadata() if code is not OK else None)
    except Exception as exc:
        log_once(("grpc", "judge"), "otel-cb: judging a gRPC call failed (%r); no verdict recorded", exc)
        permit.release()
        return None


def _judge_when_done(guard: Guard, permit: Permit, call: Call, outcome: Any) -> Verdict | None:
    """Judge a sync call when it ends: now if it has (returns the verdict), else from grpc's thread (None)."""
    if outcome.done():  # a blocking call, or an error: most calls
        return _sync_done(guard, permit, call, outcome)
    # add_callback rather than add_done_callback: the latter keeps the call
    # object alive until the RPC ends, so an abandoned stream would never be
    # collected, hence never cancelled. A weak reference lets it go.
    try:
        reference = weakref.ref(outcome)
    except TypeError:
        reference = None
    if reference is not None:
        def on_end() -> None:
            ended = reference()
            if ended is None:
                permit.release()  # dropped before its end: grpc cancelled it on collection
            else:
                _sync_done(guard, permit, call, ended)
        try:
            if outcome.add_callback(on_end):
                return None
        except NotImplementedError:  # an inactive call (an error already raised) takes no callbacks
            pass
    return _sync_done(guard, permit, call, outcome)


class _Interceptor(UnaryUnaryClientInterceptor, UnaryStreamClientInterceptor,  # type: ignore[misc]
                   StreamUnaryClientInterceptor, StreamStreamClientInterceptor):  # type: ignore[misc]
    """A ``grpc`` client interceptor of every call kind, around one ``Guard`` (hand-wired or automatic)."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any,
                   streaming_request: bool, streaming: bool) -> Any:
        guard = self._guard
        admission = guard.admit(details.method, None if streaming_request else request)
        if admission is None:
            return continuation(details, request)
        breaker, call, permit = admission.breaker, admission.call, admission.permit
        if permit is None:
            return _refused(guard, admission, streaming)
        token = guarded.set(True)
        try:
            outcome = continuation(details, request)
        except BaseException as exc:
            guard.judge(permit, call, None, None, exc)
            raise
        finally:
            guarded.reset(token)
        verdict = _judge_when_done(guard, permit, call, outcome)
        if verdict == "failure" and not streaming:  # a blocking call or with_call: it has failed already
            served = _served(guard.fallback(call, breaker, outcome.exception() or outcome), streaming)
            if served is not None:
                return served
        return outcome

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                              request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request, False, streaming=False)

    def intercept_unary_stream(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                               request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request, False, streaming=True)

    def intercept_stream_unary(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                               request_iterator: Any) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator, True, streaming=False)

    def intercept_stream_stream(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                                request_iterator: Any) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator, True, streaming=True)


class CircuitBreakerInterceptor(_Interceptor):
    """A ``grpc`` client interceptor that guards every call kind with a circuit breaker.

    Use it with ``grpc.intercept_channel(channel, CircuitBreakerInterceptor(...))``.

    Args:
        breaker: The breaker protecting every call of the channel; None to
            route each call (``selector``, else otel-cb's router).
        selector: ``selector(call) -> CircuitBreaker | None`` for each call
            (an :class:`otel_cb.plugin.Call` of kind ``"grpc"``); None for
            otel-cb's router, which protects nothing while not instrumented.
        target: The channel's target, for routing and automatic breakers.
        failure_codes: Status codes (or their names) that are failures; None
            for the breaker's ``failure_codes`` setting, else
            ``DEFAULT_FAILURE_CODES``.

    Raises:
        ValueError: for a bad argument, naming it.
    """

    def __init__(self, breaker: CircuitBreaker | None = None, *, selector: Selector | None = None,
                 target: str = "", failure_codes: Iterable[grpc.StatusCode | str] | None = None) -> None:
        super().__init__(Guard(breaker, selector, target, failure_codes, auto=False))


def _refused(guard: Guard, admission: Admission, streaming: bool) -> Any:
    """What a rejected call hands back: the open-circuit error as a finished call, or a fallback."""
    assert admission.rejection is not None
    rejection = GrpcCircuitOpenError.from_rejection(admission.rejection)
    served = _served(guard.fallback(admission.call, admission.breaker, rejection), streaming)
    return rejection if served is None else served


def _served(value: object | None, streaming: bool) -> _ServedOutcome | None:
    """A finished, successful sync call answering with a fallback ``value``; None without one."""
    value = served_value(value, streaming)
    return None if value is None else _ServedOutcome(value)


class _ServedOutcome(_FinishedCall):
    """A sync call answered by a fallback: finished with ``OK``; its result (or its messages) is the value."""

    def __init__(self, value: Any) -> None:
        self._value = value
        self._messages: Any = None

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    def exception(self, timeout: float | None = None) -> None:
        return None

    def __iter__(self) -> _ServedOutcome:
        return self

    def __next__(self) -> Any:
        if self._messages is None:
            self._messages = iter(self._value)
        return next(self._messages)


class _OneCallable(grpc.Channel):  # type: ignore[misc]
    """A channel that hands out one ready multi-callable, so ``grpc.intercept_channel`` can wrap it."""

    def __init__(self, multicallable: Any) -> None:
        self._multicallable = multicallable

    def _same(self, *args: Any, **kwargs: Any) -> Any:
        return self._multicallable

    unary_unary = unary_stream = stream_unary = stream_stream = _same

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _OneCallable:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def protect_multicallable(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
    """Wrapper of ``grpc._channel.Channel.<kind>``: the multi-callable, behind our interceptor."""
    multicallable = wrapped(*args, **kwargs)
    try:
        method = args[0] if args else kwargs["method"]
        interceptor = _Interceptor(Guard(None, None, getattr(instance, "_target", ""), None, auto=True))
        protected = grpc.intercept_channel(_OneCallable(multicallable), interceptor)
        return getattr(protected, wrapped.__name__)(method)
    except Exception as exc:
        log_once(("grpc", "patch"), "otel-cb: cannot protect a gRPC channel (%r); its calls go unprotected", exc)
        return multicallable


# Public under their documented home, as tracebacks and reprs show them.
for _public in (CircuitBreakerInterceptor, GrpcCircuitOpenError):
    _public.__module__ = "otel_cb.integrations.grpc"
del _public
