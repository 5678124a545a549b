"""The ``grpc.aio`` shell of the grpc integration: its interceptors, call objects and patch.

Adapts :class:`~otel_cb.integrations._grpc_exchange.Guard` to ``grpc.aio``'s
four interceptor kinds and call objects: a rejected or served call is handed
back as a finished call, a streaming call is judged by its done callback.
The patch appends our interceptors to every ``grpc.aio`` channel.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

from .. import CircuitBreaker, CircuitOpenError, CircuitState, Permit
from ..plugin import Call, log_once
from ._grpc_exchange import OK, Admission, Guard, Selector, guarded, served_value

__all__ = ["AioCircuitBreakerInterceptor", "AioGrpcCircuitOpenError", "aio_interceptors", "protect_aio_channel"]


class AioGrpcCircuitOpenError(CircuitOpenError, grpc.aio.AioRpcError):  # type: ignore[misc]
    """A call rejected by an open breaker, as a ``grpc.aio`` client sees it.

    An ``AioRpcError`` with code ``UNAVAILABLE`` and details naming the
    breaker, and an ``otel_cb.CircuitOpenError``.
    """

    def __init__(self, name: str, state: CircuitState, retry_after: float | None) -> None:
        # AioRpcError's __init__ would pass no arguments up the MRO into
        # CircuitOpenError's, so each base is initialised on its own.
        grpc.aio.AioRpcError.__init__(
            self, grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), None, None,
        )
        self.name = name
        self.state = state
        self.retry_after = retry_after
        self.args = (name, state, retry_after)
        self._details = str(self)

    @classmethod
    def from_rejection(cls, error: CircuitOpenError) -> AioGrpcCircuitOpenError:
        return cls(error.name, error.state, error.retry_after)

    def __reduce__(self) -> tuple[type[AioGrpcCircuitOpenError], tuple[str, CircuitState, float | None]]:
        return CircuitOpenError.__reduce__(self)  # type: ignore[return-value]


def _aio_done(guard: Guard, permit: Permit, call: Call, rpc: Any) -> None:
    """Done callback of an aio call; the status is read without waiting (the call is over)."""
    try:
        if rpc.cancelled():
            permit.release()
            return
        code = _result_now(rpc.code())
        if code is None:
            # Not readable synchronously: read it on the loop, keeping the task alive until it ends.
            task = asyncio.get_running_loop().create_task(_judge_later(guard, permit, call, rpc))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            return
        trailing_metadata = _result_now(rpc.trailing_metadata()) if code is not OK else None
        guard.judge(permit, call, rpc, code, None, trailing_metadata)
    except Exception as exc:
        log_once(("grpc", "judge"), "otel-cb: judging a gRPC call failed (%r); no verdict recorded", exc)
        permit.release()


_pending: set[asyncio.Task[None]] = set()


def _result_now(coroutine: Any) -> Any:
    """``await coroutine`` for a finished aio call's ``code()`` or metadata; None if it would wait.

    On a finished call these return without suspending; stepping the coroutine
    once lets the verdict land before the caller's ``await`` returns.
    """
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    return None


async def _judge_later(guard: Guard, permit: Permit, call: Call, rpc: Any) -> None:
    try:
        code = await rpc.code()
        trailing_metadata = await rpc.trailing_metadata() if code is not OK else None
    except asyncio.CancelledError:
        permit.release()
        raise
    except Exception as exc:
        log_once(("grpc", "judge"), "otel-cb: reading a gRPC status failed (%r); no verdict recorded", exc)
        permit.release()
        return
    guard.judge(permit, call, rpc, code, None, trailing_metadata)


class _RejectedAioCall(grpc.aio.UnaryUnaryCall, grpc.aio.UnaryStreamCall,  # type: ignore[misc]
                       grpc.aio.StreamUnaryCall, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    """A call of any kind that the breaker did not start: finished, with the open-circuit error.

    Awaiting it, reading or iterating it, or writing to it raises the error;
    ``code()`` and ``details()`` describe it, as for a call the server failed.
    """

    def __init__(self, error: AioGrpcCircuitOpenError) -> None:
        self._error = error

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_done_callback(self, callback: Callable[[Any], Any]) -> None:
        callback(self)

    async def initial_metadata(self) -> Any:
        return self._error.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return self._error.code()

    async def details(self) -> str:
        return self._error.details()  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        raise self._error

    def __await__(self) -> Any:
        raise self._error
        yield  # a generator, as __await__ must be

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        raise self._error

    async def read(self) -> Any:
        raise self._error

    async def write(self, request: Any) -> None:
        raise self._error

    async def done_writing(self) -> None:
        raise self._error


class _ServedAioCall(_RejectedAioCall):
    """A call of any kind answered by a fallback: finished with ``OK``.

    Awaiting it returns the value; reading or iterating it yields the
    value's messages; writes are accepted and dropped.
    """

    def __init__(self, value: Any) -> None:
        self._value = value
        self._messages: Any = None

    async def initial_metadata(self) -> Any:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> Any:
        return grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None

    def __await__(self) -> Any:
        return self._value
        yield  # a generator, as __await__ must be

    async def __anext__(self) -> Any:
        if self._messages is None:
            self._messages = iter(self._value)
        try:
            return next(self._messages)
        except StopIteration:
            raise StopAsyncIteration from None

    async def read(self) -> Any:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def write(self, request: Any) -> None:
        return None

    async def done_writing(self) -> None:
        return None


class AioCircuitBreakerInterceptor:
    """What the four ``grpc.aio`` interceptors of :func:`aio_interceptors` share.

    ``grpc.aio`` files each interceptor object under exactly one call kind,
    so one object cannot guard them all: build the set with
    :func:`aio_interceptors` (this class is public for ``isinstance``).
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any,
                         streaming_request: bool, streaming: bool) -> Any:
        guard = self._guard
        admission = guard.admit(details.method, None if streaming_request else request)
        if admission is None:
            return await continuation(details, request)
        breaker, call, permit = admission.breaker, admission.call, admission.permit
        if permit is None:
            return _refused(guard, admission, streaming)
        token = guarded.set(True)
        try:
            rpc = await continuation(details, request)
        except BaseException as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                guard.judge(permit, call, exc, exc.code(), None, exc.trailing_metadata())
            else:
                guard.judge(permit, call, None, None, exc)
            raise
        finally:
            guarded.reset(token)
        if not streaming_request and not streaming:
            return await _unary_unary_outcome(guard, permit, call, breaker, rpc)
        # Returned as it is (not wrapped), so read()/write() and the call's own
        # methods keep working; its end is judged by a done callback.
        rpc.add_done_callback(functools.partial(_aio_done, guard, permit, call))
        return rpc


async def _unary_unary_outcome(guard: Guard, permit: Permit, call: Call, breaker: CircuitBreaker, rpc: Any) -> Any:
    """Wait for an aio unary-unary call inside the interceptor: judged (and, on failure, maybe served) at once.

    Only for unary-unary: a streaming-request call must be returned before
    it ends, or the caller could never write to it.
    """
    try:
        code = await rpc.code()
        trailing_metadata = await rpc.trailing_metadata() if code is not OK else None
    except BaseException:
        rpc.cancel()
        permit.release()
        raise
    verdict = guard.judge(permit, call, rpc, code, None, trailing_metadata)
    if verdict == "failure":
        error = grpc.aio.AioRpcError(code, await rpc.initial_metadata(), trailing_metadata, await rpc.details())
        served = _aio_served(guard.fallback(call, breaker, error), streaming=False)
        if served is not None:
            return served
    return rpc


def _refused(guard: Guard, admission: Admission, streaming: bool) -> _RejectedAioCall:
    """What a rejected call hands back: a finished call, failed with the open-circuit error or served.

    A finished call rather than a raise: OpenTelemetry's aio interceptor ends
    its span only through a call's done callback.
    """
    assert admission.rejection is not None
    rejection = AioGrpcCircuitOpenError.from_rejection(admission.rejection)
    served = _aio_served(guard.fallback(admission.call, admission.breaker, rejection), streaming)
    return _RejectedAioCall(rejection) if served is None else served


def _aio_served(value: object | None, streaming: bool) -> _ServedAioCall | None:
    """A finished, successful aio call answering with a fallback ``value``; None without one."""
    value = served_value(value, streaming)
    return None if value is None else _ServedAioCall(value)


class _AioUnaryUnary(AioCircuitBreakerInterceptor, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                                    request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request, False, streaming=False)


class _AioUnaryStream(AioCircuitBreakerInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                                     request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request, False, streaming=True)


class _AioStreamUnary(AioCircuitBreakerInterceptor, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator, True, streaming=False)


class _AioStreamStream(AioCircuitBreakerInterceptor, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Callable[[Any, Any], Any], client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator, True, streaming=True)


_AIO_KINDS = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)


def aio_interceptors(breaker: CircuitBreaker | None = None, *, selector: Selector | None = None,
                     target: str = "", failure_codes: Iterable[grpc.StatusCode | str] | None = None,
                     ) -> list[AioCircuitBreakerInterceptor]:
    """The ``grpc.aio`` interceptors that guard every call kind of a channel, one per kind.

    Use as ``grpc.aio.insecure_channel(target, interceptors=aio_interceptors(breaker))``,
    after OpenTelemetry's interceptors if you list those by hand (the first
    listed is the outermost). Arguments as for :class:`CircuitBreakerInterceptor`.

    Raises:
        ValueError: for a bad argument, naming it.
    """
    guard = Guard(breaker, selector, target, failure_codes, auto=False)
    return [kind(guard) for kind in _AIO_KINDS]


def protect_aio_channel(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    """Wrapper of ``grpc.aio._channel.Channel.__init__``: our interceptor is added last (innermost)."""
    try:
        target = args[0] if args else kwargs.get("target", "")
        guard = Guard(None, None, target, None, auto=True)
        ours = [kind(guard) for kind in _AIO_KINDS]
        if len(args) >= 5:
            args = (*args[:4], [*(args[4] or ()), *ours], *args[5:])
        else:
            kwargs = {**kwargs, "interceptors": [*(kwargs.get("interceptors") or ()), *ours]}
    except Exception as exc:
        log_once(("grpc", "patch"), "otel-cb: cannot protect a gRPC channel (%r); its calls go unprotected", exc)
    return wrapped(*args, **kwargs)


# Public under their documented home, as tracebacks and reprs show them.
for _public in (AioCircuitBreakerInterceptor, AioGrpcCircuitOpenError):
    _public.__module__ = "otel_cb.integrations.grpc"
del _public
