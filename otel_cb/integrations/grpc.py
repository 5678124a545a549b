"""Circuit breakers for gRPC clients: every call kind, ``grpc`` and ``grpc.aio``.

Usage
-----

Under ``otel-cb-instrument`` every channel made by ``grpc.insecure_channel``,
``grpc.secure_channel``, ``grpc.aio.insecure_channel`` and
``grpc.aio.secure_channel`` is protected, with nothing to change in the code.
The patches take effect for sync stubs and aio channels made after
``instrument()`` (``otel-cb-instrument`` patches before the application
imports grpc, so that is all of them). By hand, add an interceptor to a
channel::

    import grpc
    from otel_cb import CircuitBreaker, CircuitBreakerConfig
    from otel_cb.integrations.grpc import CircuitBreakerInterceptor, aio_interceptors

    shield = CircuitBreaker("shield", CircuitBreakerConfig.preset("llm_service"))
    channel = grpc.intercept_channel(grpc.insecure_channel("shield:50051"),
                                     CircuitBreakerInterceptor(shield))
    aio_channel = grpc.aio.insecure_channel("edge:50051", interceptors=aio_interceptors(shield))

``grpc.aio`` files each interceptor object under one call kind, so
``aio_interceptors()`` returns four, one per kind (each an
:class:`AioCircuitBreakerInterceptor`); list them after OpenTelemetry's
interceptors if you list those by hand.

Without a ``breaker``, an interceptor asks otel-cb's router (``match:`` rules
and ``otel_cb_select_breaker`` plugins, then one automatic breaker per channel
target) which breaker protects each call; pass ``target=`` (the channel's
target) so routing by target and automatic breakers work, or ``selector=`` (a
function of :class:`otel_cb.plugin.Call` returning a breaker or None) to
route yourself. A call no breaker protects goes through untouched.

What counts
-----------

- A call is admitted when it starts; a stream (any call kind with a streaming
  response or request) is one call, judged when it ends.
- Status ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``,
  ``INTERNAL``, ``UNKNOWN`` or ``DATA_LOSS`` is a failure, also when it comes
  mid-stream. ``OK`` and every other status (``INVALID_ARGUMENT``,
  ``NOT_FOUND``, ``PERMISSION_DENIED``...) is a success: the server answered.
- ``CANCELLED`` (the caller cancelled, or dropped a stream before its end)
  is no verdict; a half-open probe's slot is always handed back.
- A failure's ``grpc-retry-pushback-ms`` trailer (the server's retry hint)
  lengthens the open timeout if the failure opens the breaker.
- An ``otel_cb_classify`` plugin decides first; it gets the call, the finished
  RPC (a ``grpc.Call``: ``code()``, ``details()``...) as ``result``, and the
  ``grpc.RpcError`` as ``exception`` (None for ``OK``).
- ``.future()``, ``with_call()``, iterators and the ``read()``/``write()``
  style of ``grpc.aio`` all work as without the breaker.

Open circuit
------------

A rejected call is not started. The caller gets a ``grpc.RpcError`` with code
``UNAVAILABLE`` and details naming the breaker, which is also an
``otel_cb.CircuitOpenError`` (``.name``, ``.state``, ``.retry_after``):
:class:`GrpcCircuitOpenError` for ``grpc``, :class:`AioGrpcCircuitOpenError`
(an ``AioRpcError``) for ``grpc.aio``. So both ``except grpc.RpcError`` and
``except CircuitOpenError`` catch it.

Fallbacks
---------

An ``otel_cb_fallback`` plugin can answer a call instead of the error. It
gets the call and the error (the open-circuit error for a rejected call,
else the ``grpc.RpcError``) and returns a response message, or, for a call
with a streaming response, an iterable of messages; the caller then sees a
call that ended with ``OK`` and that value. A rejected call of any kind can
be served; a failed one when it has failed by the time the interceptor
returns: blocking sync unary-response calls and ``with_call()``, and aio
unary-unary calls. Served fallbacks are counted in the breaker's
``snapshot().fallbacks``.

Configuration
-------------

Per breaker, in the config file::

    circuit_breakers:
      shield:
        preset: llm_service
        match: {grpc: ["llm.shield.v1.ShieldService"]}
        failure_codes: [UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL]   # replaces the default set

``match: {grpc: [...]}`` entries name a full service (``llm.shield.v1.ShieldService``),
a method (``/llm.shield.v1.ShieldService/AnalyzeSecurityEvent``) or a channel
target (``shield:50051``); calls no rule matches get one automatic breaker
per channel target, named ``grpc://<target>``. ``failure_codes`` is a list of ``grpc.StatusCode``
names. Hand-wired interceptors take ``failure_codes=`` too.

With OpenTelemetry
------------------

OpenTelemetry's grpc instrumentation stays the outer interceptor in either
order of instrumentation, so its client span covers the breaker: the span
carries ``circuit_breaker.name`` and ``circuit_breaker.state``, and
rejections, transitions and fallbacks become its events. (A ``grpc.aio``
call with a streaming request or response is judged when it ends, after
OpenTelemetry has ended its span, so a transition it causes is recorded on a
span of its own.) Calls to OpenTelemetry's own
collector services (``opentelemetry.proto.*``) are never auto-protected, so
exporting telemetry about breakers does not go through them.

Uninstrument
------------

``uninstrument()`` removes the patches (four ``grpc._channel.Channel``
methods and ``grpc.aio._channel.Channel.__init__``), and calls through
channels made before go unprotected too (the router answers None). The
patches sit below ``grpc.insecure_channel`` and friends, which OpenTelemetry
wraps (sync) or replaces (aio), so neither side's instrument or uninstrument
can drop the other's layer, in any order.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from grpc import (
    StreamStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    UnaryUnaryClientInterceptor,
)

from .._breaker import CircuitBreaker, Permit
from .._errors import CircuitOpenError
from .._plugins import _log_once
from .._state import CircuitState
from ..plugin import Call, Patch, breaker_settings, classify, fallback, hookimpl, select_breaker

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "AioCircuitBreakerInterceptor",
    "AioGrpcCircuitOpenError",
    "CircuitBreakerInterceptor",
    "GrpcCircuitOpenError",
    "aio_interceptors",
    "clean_target",
    "otel_cb_patches",
    "parse_failure_codes",
    "validate_settings",
]

logger = logging.getLogger("otel_cb")

DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
})
"""Status codes that count as failures unless a breaker's ``failure_codes`` says otherwise."""

_CODES_BY_NAME = {code.name: code for code in grpc.StatusCode}
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
Selector = Callable[[Call], "CircuitBreaker | None"]
# Set while an interceptor of ours runs a call, so an automatic interceptor
# below a hand-wired one does not judge the same call twice.
_guarded: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_cb.grpc.guarded", default=False)
_UNPROTECTED_PREFIX = "opentelemetry.proto."


# -- settings -------------------------------------------------------------------


def parse_failure_codes(where: str, value: object) -> frozenset[grpc.StatusCode]:
    """Parse a ``failure_codes`` value: a list of ``grpc.StatusCode`` names (or codes).

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    allowed = f"a list of gRPC status code names ({', '.join(sorted(_CODES_BY_NAME))})"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{where}: {value!r} is not allowed; use {allowed}")
    codes: set[grpc.StatusCode] = set()
    for item in value:
        if isinstance(item, grpc.StatusCode):
            codes.add(item)
        elif isinstance(item, str) and item.strip().upper() in _CODES_BY_NAME:
            codes.add(_CODES_BY_NAME[item.strip().upper()])
        else:
            raise ValueError(f"{where}: {item!r} is not allowed; use {allowed}")
    return frozenset(codes)


def validate_settings(name: str, section: Mapping[str, Any]) -> None:
    """Check the gRPC keys (``failure_codes``) of breaker ``name``'s config section.

    The config loader calls this; other keys are left alone.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    if section.get("failure_codes") is not None:
        parse_failure_codes(f"circuit_breakers.{name}.failure_codes", section["failure_codes"])


# Parsed failure_codes per breaker name, valid while breaker_settings returns the same section.
_codes_memo: dict[str, tuple[Mapping[str, Any], frozenset[grpc.StatusCode]]] = {}


def _configured_codes(name: str) -> frozenset[grpc.StatusCode]:
    section = breaker_settings(name)
    memo = _codes_memo.get(name)
    if memo is not None and memo[0] is section:
        return memo[1]
    codes = DEFAULT_FAILURE_CODES
    if section.get("failure_codes") is not None:
        try:
            codes = parse_failure_codes(f"circuit_breakers.{name}.failure_codes", section["failure_codes"])
        except ValueError as exc:
            # The loader validates first; if a bad value still gets here, the call must not pay for it.
            _log_once(("grpc.failure_codes", name[:50]), "otel-cb: %s; using the default failure codes", exc)
    if len(_codes_memo) > 10_000:
        _codes_memo.clear()
    _codes_memo[name] = (section, codes)
    return codes


# -- the open-circuit errors ----------------------------------------------------


def _open_details(error: CircuitOpenError) -> str:
    return str(error)


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
        return _open_details(self)

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
        self._details = _open_details(self)

    @classmethod
    def from_rejection(cls, error: CircuitOpenError) -> AioGrpcCircuitOpenError:
        return cls(error.name, error.state, error.retry_after)

    def __reduce__(self) -> tuple[type[AioGrpcCircuitOpenError], tuple[str, CircuitState, float | None]]:
        return CircuitOpenError.__reduce__(self)  # type: ignore[return-value]


# -- the logic both shells share ------------------------------------------------


def _service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


def clean_target(target: str | bytes) -> str:
    """A channel target as breakers and routing see it: no scheme, credentials, path or query.

    ``dns:///shield:50051`` and ``shield:50051`` are both ``shield:50051``;
    ``unix:`` targets are kept whole (the socket path is the destination).
    """
    text = target.decode("utf-8", "replace") if isinstance(target, bytes) else str(target)
    if text.startswith(("unix:", "unix-abstract:")):
        return text
    if "://" in text:
        text = text.split("://", 1)[1]
        authority, slash, rest = text.partition("/")
        text = rest if slash and rest else authority  # dns://resolver/host:port names host:port
    elif text.startswith(("dns:", "ipv4:", "ipv6:")):
        text = text.split(":", 1)[1]
    text = text.rpartition("@")[2]
    for separator in ("/", "?", "#"):
        text = text.split(separator, 1)[0]
    return text


class _Guard:
    """Routing, admission and judging of one channel's calls, for both shells."""

    __slots__ = ("_breaker", "_selector", "_target", "_failure_codes", "_auto")

    def __init__(self, breaker: CircuitBreaker | None, selector: Selector | None, target: str | bytes,
                 failure_codes: Iterable[grpc.StatusCode | str] | None, auto: bool) -> None:
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ValueError(f"breaker: {breaker!r} is not allowed; use a CircuitBreaker or None")
        if breaker is not None and selector is not None:
            raise ValueError("selector: give a breaker or a selector, not both")
        if selector is not None and not callable(selector):
            raise ValueError(f"selector: {selector!r} is not allowed; use a function of Call returning a breaker")
        self._breaker = breaker
        self._selector: Selector = selector if selector is not None else select_breaker
        self._target = clean_target(target)
        self._failure_codes = None if failure_codes is None else parse_failure_codes("failure_codes", failure_codes)
        self._auto = auto

    def route(self, method: str | bytes, request: object) -> tuple[CircuitBreaker, Call] | None:
        """The breaker and the call description, or None when nothing protects the call."""
        if self._auto and _guarded.get():
            return None
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        service = _service_of(method)
        if self._auto and service.startswith(_UNPROTECTED_PREFIX):
            return None
        call = Call(kind="grpc", target=self._target, method=method, service=service, request=request)
        breaker = self._breaker
        if breaker is None:
            try:
                breaker = self._selector(call)
            except Exception as exc:
                _log_once(("grpc", "selector"), "otel-cb: the gRPC breaker selector raised %r; call not protected",
                          exc)
                return None
            if breaker is None:
                return None
        return breaker, call

    @staticmethod
    def acquire(breaker: CircuitBreaker) -> Permit:
        """Admit one call and name the breaker on the current span.

        Raises:
            CircuitOpenError: the breaker rejected the call.
        """
        permit = breaker.acquire()
        _annotate(breaker)
        return permit

    @staticmethod
    def fallback(call: Call, breaker: CircuitBreaker, error: BaseException) -> object | None:
        """What an ``otel_cb_fallback`` hook serves instead of ``error``, counted on the breaker; or None."""
        value = fallback(call, error)
        if value is not None:
            breaker.count_fallback("success")
        return value

    def judge(self, permit: Permit, call: Call, rpc: object, code: grpc.StatusCode | None,
              error: BaseException | None, trailing_metadata: Any = None) -> str:
        """Report one finished call: ``code`` of the RPC, or ``error`` raised without a status.

        A failure carries the server's ``grpc-retry-pushback-ms`` hint, if any,
        as ``retry_after`` (it can lengthen the open timeout).

        Returns:
            The verdict: ``success``, ``failure``, ``ignore`` or ``none``.
        """
        exception = error if error is not None else (rpc if code is not _OK else None)
        verdict = classify(call, rpc, exception if isinstance(exception, BaseException) else None)
        if verdict is None:
            if code is None:
                if error is not None:
                    judged = permit.record_exception(error)
                    return judged or "none"
                permit.release()
                return "none"
            if code is _CANCELLED:
                permit.release()
                return "none"
            if code is _OK:
                verdict = "success"
            else:
                codes = self._failure_codes
                if codes is None:
                    codes = _configured_codes(permit.breaker.name)
                verdict = "failure" if code in codes else "success"
        if verdict == "failure":
            permit.record_failure(retry_after=_pushback(trailing_metadata))
        elif verdict == "success":
            permit.record_success()
        else:
            permit.record_ignored()
        return verdict


def _no_annotation(breaker: CircuitBreaker) -> None:
    return None


_annotate_current_span: Callable[[CircuitBreaker], None] | None = None


def _annotate(breaker: CircuitBreaker) -> None:
    """Name the breaker and its state on the current (client) span, if telemetry is there."""
    global _annotate_current_span
    if _annotate_current_span is None:
        try:
            from ..telemetry import annotate_current_span
        except Exception:  # the telemetry module or OpenTelemetry is unavailable
            _annotate_current_span = _no_annotation
        else:
            _annotate_current_span = annotate_current_span
    try:
        _annotate_current_span(breaker)
    except Exception:
        logger.debug("otel-cb: annotating the gRPC client span failed", exc_info=True)


# -- grpc (sync) ------------------------------------------------------------------


def _sync_done(guard: _Guard, permit: Permit, call: Call, outcome: Any) -> str:
    """Judge a finished sync call (a ``grpc.Call`` / ``grpc.Future``); returns the verdict."""
    try:
        if outcome.cancelled():
            permit.release()
            return "none"
        error = outcome.exception()
        if error is None:  # ended with OK (asking code() would take the call's lock again)
            return guard.judge(permit, call, outcome, _OK, None)
        if not isinstance(error, grpc.RpcError):
            return guard.judge(permit, call, outcome, None, error)  # raised in the client, not a status
        code = outcome.code()
        return guard.judge(permit, call, outcome, code, None, outcome.trailing_metadata() if code is not _OK else None)
    except Exception as exc:
        _log_once(("grpc", "judge"), "otel-cb: judging a gRPC call failed (%r); no verdict recorded", exc)
        permit.release()
        return "none"


def _judge_when_done(guard: _Guard, permit: Permit, call: Call, outcome: Any) -> str | None:
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


class CircuitBreakerInterceptor(UnaryUnaryClientInterceptor, UnaryStreamClientInterceptor,  # type: ignore[misc]
                                StreamUnaryClientInterceptor, StreamStreamClientInterceptor):  # type: ignore[misc]
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
        self._guard = _Guard(breaker, selector, target, failure_codes, auto=False)

    def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any,
                   streaming_request: bool, streaming: bool) -> Any:
        guard = self._guard
        routed = guard.route(details.method, None if streaming_request else request)
        if routed is None:
            return continuation(details, request)
        breaker, call = routed
        try:
            permit = guard.acquire(breaker)
        except CircuitOpenError as exc:
            rejection = GrpcCircuitOpenError.from_rejection(exc)
            served = _served(guard.fallback(call, breaker, rejection), streaming)
            return rejection if served is None else served
        token = _guarded.set(True)
        try:
            outcome = continuation(details, request)
        except BaseException as exc:
            guard.judge(permit, call, None, None, exc)
            raise
        finally:
            _guarded.reset(token)
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


def _served(value: object | None, streaming: bool) -> _ServedOutcome | None:
    """A finished, successful sync call answering with a fallback ``value``; None without one."""
    if value is None:
        return None
    if streaming:
        try:
            value = list(value)  # type: ignore[call-overload]
        except TypeError:
            _log_once(("grpc", "fallback"), "otel-cb: a fallback for a gRPC response stream must be an iterable of "
                      "messages, not %s; not served", type(value).__name__)
            return None
    return _ServedOutcome(value)


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


# -- grpc.aio ---------------------------------------------------------------------


def _aio_done(guard: _Guard, permit: Permit, call: Call, rpc: Any) -> None:
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
        trailing_metadata = _result_now(rpc.trailing_metadata()) if code is not _OK else None
        guard.judge(permit, call, rpc, code, None, trailing_metadata)
    except Exception as exc:
        _log_once(("grpc", "judge"), "otel-cb: judging a gRPC call failed (%r); no verdict recorded", exc)
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


_PUSHBACK = "grpc-retry-pushback-ms"


def _pushback(metadata: Any) -> float | None:
    """Seconds from a ``grpc-retry-pushback-ms`` trailer; None when absent or negative (no retry)."""
    try:
        for key, value in metadata or ():
            if key == _PUSHBACK:
                milliseconds = int(value)
                return milliseconds / 1000.0 if milliseconds >= 0 else None
    except (TypeError, ValueError):
        pass
    return None


async def _judge_later(guard: _Guard, permit: Permit, call: Call, rpc: Any) -> None:
    try:
        code = await rpc.code()
        trailing_metadata = await rpc.trailing_metadata() if code is not _OK else None
    except asyncio.CancelledError:
        permit.release()
        raise
    except Exception as exc:
        _log_once(("grpc", "judge"), "otel-cb: reading a gRPC status failed (%r); no verdict recorded", exc)
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

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard

    async def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any,
                         streaming_request: bool, streaming: bool) -> Any:
        guard = self._guard
        routed = guard.route(details.method, None if streaming_request else request)
        if routed is None:
            return await continuation(details, request)
        breaker, call = routed
        try:
            permit = guard.acquire(breaker)
        except CircuitOpenError as exc:
            # A finished call rather than a raise: OpenTelemetry's aio
            # interceptor ends its span only through a call's done callback.
            rejection = AioGrpcCircuitOpenError.from_rejection(exc)
            served = _aio_served(guard.fallback(call, breaker, rejection), streaming)
            return _RejectedAioCall(rejection) if served is None else served
        token = _guarded.set(True)
        try:
            rpc = await continuation(details, request)
        except BaseException as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                guard.judge(permit, call, exc, exc.code(), None, exc.trailing_metadata())
            else:
                guard.judge(permit, call, None, None, exc)
            raise
        finally:
            _guarded.reset(token)
        if not streaming_request and not streaming:
            return await _unary_unary_outcome(guard, permit, call, breaker, rpc)
        # Returned as it is (not wrapped), so read()/write() and the call's own
        # methods keep working; its end is judged by a done callback.
        rpc.add_done_callback(functools.partial(_aio_done, guard, permit, call))
        return rpc


async def _unary_unary_outcome(guard: _Guard, permit: Permit, call: Call, breaker: CircuitBreaker, rpc: Any) -> Any:
    """Wait for an aio unary-unary call inside the interceptor: judged (and, on failure, maybe served) at once.

    Only for unary-unary: a streaming-request call must be returned before
    it ends, or the caller could never write to it.
    """
    try:
        code = await rpc.code()
        trailing_metadata = await rpc.trailing_metadata() if code is not _OK else None
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


def _aio_served(value: object | None, streaming: bool) -> _ServedAioCall | None:
    """A finished, successful aio call answering with a fallback ``value``; None without one."""
    outcome = _served(value, streaming)
    return None if outcome is None else _ServedAioCall(outcome.result())


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
    guard = _Guard(breaker, selector, target, failure_codes, auto=False)
    return [kind(guard) for kind in _AIO_KINDS]


# -- auto-patching ------------------------------------------------------------------


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


def _protect_multicallable(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
    """Wrapper of ``grpc._channel.Channel.<kind>``: the multi-callable, behind our interceptor."""
    multicallable = wrapped(*args, **kwargs)
    try:
        method = args[0] if args else kwargs["method"]
        interceptor = CircuitBreakerInterceptor.__new__(CircuitBreakerInterceptor)
        interceptor._guard = _Guard(None, None, getattr(instance, "_target", ""), None, auto=True)
        protected = grpc.intercept_channel(_OneCallable(multicallable), interceptor)
        return getattr(protected, wrapped.__name__)(method)
    except Exception as exc:
        _log_once(("grpc", "patch"), "otel-cb: cannot protect a gRPC channel (%r); its calls go unprotected", exc)
        return multicallable


def _protect_aio_channel(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    """Wrapper of ``grpc.aio._channel.Channel.__init__``: our interceptor is added last (innermost)."""
    try:
        target = args[0] if args else kwargs.get("target", "")
        guard = _Guard(None, None, target, None, auto=True)
        ours = [kind(guard) for kind in _AIO_KINDS]
        if len(args) >= 5:
            args = (*args[:4], [*(args[4] or ()), *ours], *args[5:])
        else:
            kwargs = {**kwargs, "interceptors": [*(kwargs.get("interceptors") or ()), *ours]}
    except Exception as exc:
        _log_once(("grpc", "patch"), "otel-cb: cannot protect a gRPC channel (%r); its calls go unprotected", exc)
    return wrapped(*args, **kwargs)


_SYNC_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


@hookimpl
def otel_cb_patches() -> list[Patch]:
    """Protect every sync and aio channel.

    Patched below ``grpc.insecure_channel`` and friends, which OpenTelemetry
    wraps (sync) or replaces (aio): the multi-callables of the sync channel
    class, and the aio channel's constructor (which appends our interceptor,
    so OpenTelemetry's, listed first, stays outside).
    """
    return [
        *(Patch("grpc._channel", f"Channel.{kind}", _protect_multicallable, "grpc") for kind in _SYNC_KINDS),
        Patch("grpc.aio._channel", "Channel.__init__", _protect_aio_channel, "grpc"),
    ]
