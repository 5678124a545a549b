"""The judging core of the grpc integration, written once for the sync and the aio shells.

``Guard`` routes a call to its breaker, admits it, serves fallbacks and
judges how it ended (status code, the classify hooks, the breaker's
``failure_codes``); ``_grpc_sync`` and ``_grpc_aio`` only adapt it to
``grpc``'s and ``grpc.aio``'s interceptor and call objects.

Imports grpc: :mod:`otel_cb.integrations.grpc` imports this module only when
grpc is in use.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]

from .. import CircuitBreaker, CircuitOpenError, Permit
from ..plugin import (
    Call,
    Verdict,
    annotate_span,
    classify,
    classify_exception,
    log_once,
    section_settings,
    select_breaker,
    serve_fallback,
)
from ._grpc_health import offer_health_check
from ._grpc_policy import DEFAULT_FAILURE_CODE_NAMES, clean_target, parse_code_names, pushback

__all__ = [
    "CANCELLED",
    "Admission",
    "DEFAULT_FAILURE_CODES",
    "OK",
    "Guard",
    "Selector",
    "guarded",
    "parse_failure_codes",
    "served_value",
]

DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(grpc.StatusCode[name]
                                                               for name in DEFAULT_FAILURE_CODE_NAMES)
"""Status codes that count as failures unless a breaker's ``failure_codes`` says otherwise."""

OK = grpc.StatusCode.OK
CANCELLED = grpc.StatusCode.CANCELLED
Selector = Callable[[Call], "CircuitBreaker | None"]
# Set while an interceptor of ours runs a call, so an automatic interceptor
# below a hand-wired one does not judge the same call twice.
guarded: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_cb.grpc.guarded", default=False)
UNPROTECTED_PREFIX = "opentelemetry.proto."


def parse_failure_codes(where: str, value: object) -> frozenset[grpc.StatusCode]:
    """Parse a ``failure_codes`` value: a list of ``grpc.StatusCode`` names (or codes).

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    return frozenset(grpc.StatusCode[name] for name in parse_code_names(where, value))


def _parse_codes(breaker: CircuitBreaker, section: Mapping[str, Any]) -> frozenset[grpc.StatusCode]:
    if section.get("failure_codes") is None:
        return DEFAULT_FAILURE_CODES
    return parse_failure_codes(f"circuit_breakers.{breaker.name}.failure_codes", section["failure_codes"])


def service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


@dataclass(frozen=True, slots=True)
class Admission:
    """A routed call: admitted (``permit``), or rejected by its open breaker (``rejection``)."""

    breaker: CircuitBreaker
    call: Call
    permit: Permit | None
    rejection: CircuitOpenError | None


class Guard:
    """Routing, admission and judging of one channel's calls, for both shells."""

    __slots__ = ("_breaker", "_selector", "_target", "_failure_codes", "_auto", "_offered")

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
        # The breaker last offered the default health check: a channel's calls mostly go to one
        # breaker, and an identity test is cheaper on every call than offer_health_check's weak set.
        self._offered: CircuitBreaker | None = None

    def route(self, method: str | bytes, request: object) -> tuple[CircuitBreaker, Call] | None:
        """The breaker and the call description, or None when nothing protects the call."""
        if self._auto and guarded.get():
            return None
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        service = service_of(method)
        if self._auto and service.startswith(UNPROTECTED_PREFIX):
            return None
        call = Call(kind="grpc", target=self._target, method=method, service=service, request=request)
        breaker = self._breaker
        if breaker is None:
            try:
                breaker = self._selector(call)
            except Exception as exc:
                log_once(("grpc", "selector"), "otel-cb: the gRPC breaker selector raised %r; call not protected",
                          exc)
                return None
            if breaker is None:
                return None
        if breaker is not self._offered:
            offer_health_check(breaker, call, guarded)
            self._offered = breaker
        return breaker, call

    def admit(self, method: str | bytes, request: object) -> Admission | None:
        """Route and admit one call, naming the breaker on the current span; None when nothing protects it."""
        routed = self.route(method, request)
        if routed is None:
            return None
        breaker, call = routed
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            return Admission(breaker, call, None, exc)
        annotate_span(breaker, permit.state)
        return Admission(breaker, call, permit, None)

    @staticmethod
    def fallback(call: Call, breaker: CircuitBreaker, error: BaseException) -> object | None:
        """What an ``otel_cb_fallback`` hook serves instead of ``error``, counted on the breaker; or None."""
        return serve_fallback(call, breaker, error)

    def judge(self, permit: Permit, call: Call, rpc: object, code: grpc.StatusCode | None,
              error: BaseException | None, trailing_metadata: Any = None) -> Verdict | None:
        """Report one finished call: ``code`` of the RPC, or ``error`` raised without a status.

        A failure carries the server's ``grpc-retry-pushback-ms`` hint, if any,
        as ``retry_after`` (it can lengthen the open timeout).

        Returns:
            The verdict (None: no verdict).
        """
        verdict: Verdict | None
        if code is None:
            # Raised in the client without a status: the breaker's own exception rules.
            verdict = None if error is None else classify_exception(call, permit.breaker, error)
        else:
            verdict = classify(call, rpc, rpc if code is not OK and isinstance(rpc, BaseException) else None)
            if verdict is None and code is not CANCELLED:
                codes = self._failure_codes
                if codes is None:
                    codes = section_settings(permit.breaker, _parse_codes, DEFAULT_FAILURE_CODES)
                verdict = "failure" if code is not OK and code in codes else "success"
        permit.record(verdict, retry_after=pushback(trailing_metadata) if verdict == "failure" else None)
        return verdict


def served_value(value: object | None, streaming: bool) -> object | None:
    """What a fallback ``value`` answers: itself, or for a response stream its list of messages; None without one."""
    if value is None or not streaming:
        return value
    try:
        messages: list[object] = list(value)  # type: ignore[call-overload]
    except TypeError:
        log_once(("grpc", "fallback"), "otel-cb: a fallback for a gRPC response stream must be an iterable of "
                 "messages, not %s; not served", type(value).__name__)
        return None
    return messages
