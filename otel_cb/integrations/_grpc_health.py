"""The grpc integration's default health check: ``grpc.health.v1.Health/Check`` for the routed service.

While a breaker the grpc integration routes to is closed, nothing is sent to
its server but the application's own calls. When it opens without a health
check, a thread of ours asks the channel's target, on a fresh plaintext
channel of its own and within the breaker's ``health_check_timeout``, for the
health of the call's service (``Check(service=...)``, from
``grpcio-health-checking``). The check is attached when an answer comes back
(``SERVING`` or not): then it is known to reach the server's Health service,
and from then on it decides when the breaker probes. Until then the breaker
probes with user calls on its timer, and:

- a server without a Health service (``UNIMPLEMENTED``), or one that does not
  know the service (``NOT_FOUND``), gets no check, said once, and is not asked
  again;
- a server the check cannot reach (it is down, or serves TLS, which a check
  without the channel's credentials cannot speak) is asked again every
  ``health_check_interval`` while the breaker stays open, and again at its
  next opening; said once.

An attached check passes on ``SERVING`` only; if the server later answers
``UNIMPLEMENTED`` or ``NOT_FOUND`` the check detaches itself (said once).
Its RPCs are marked as ours (``guarded``), so the automatic interceptor
neither counts them nor refuses them while the breaker is open.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Literal

import grpc  # type: ignore[import-untyped]

from .. import CircuitState, StateChangeEvent
from ..plugin import Call, attach_default_health_check, log_once

if TYPE_CHECKING:
    from .. import CircuitBreaker

__all__ = ["GrpcHealthCheck", "ask_health", "offer_health_check"]

Answer = Literal["serving", "not_serving", "no_service", "unreachable"]
Mark = contextvars.ContextVar[bool]
_NO_SERVICE = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND})


def ask_health(target: str, service: str, timeout: float, mark: Mark) -> Answer:
    """One ``Health/Check(service)`` on a fresh plaintext channel to ``target``, with ``mark`` set
    (the exchange's "ours" flag: the automatic interceptor lets the RPC through unjudged)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    token = mark.set(True)
    # Below any wrapper of insecure_channel (OpenTelemetry's): a check is not the application's RPC,
    # and a span every health_check_interval would only crowd its traces.
    channel = inspect.unwrap(grpc.insecure_channel)(target)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return "no_service" if code in _NO_SERVICE else "unreachable"
    finally:
        mark.reset(token)
        channel.close()
    return "serving" if response.status == health_pb2.HealthCheckResponse.SERVING else "not_serving"


class GrpcHealthCheck:
    """The check of one breaker: ``SERVING`` passes; a vanished Health service detaches it."""

    __slots__ = ("_breaker", "target", "service", "timeout", "mark")

    def __init__(self, breaker: CircuitBreaker, target: str, service: str, timeout: float, mark: Mark) -> None:
        self._breaker = weakref.ref(breaker)
        self.target = target
        self.service = service
        self.timeout = timeout
        self.mark = mark

    def __call__(self) -> bool:
        answer = ask_health(self.target, self.service, self.timeout, self.mark)
        if answer == "no_service":
            target = self.target
            breaker = self._breaker()
            if breaker is not None and breaker.health_check is self:
                breaker.attach_health_check(None)
                log_once(("grpc", "health-gone", breaker.name), "otel-cb: circuit breaker %r: %s no longer answers "
                         "grpc.health.v1.Health/Check for its service; it probes with user calls again",
                         breaker.name, target)
        return answer == "serving"


# Breakers whose openings are watched for a check to look for; those whose server has no Health service.
_watched: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_no_service: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_looking: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_lock = threading.Lock()


def offer_health_check(breaker: CircuitBreaker, call: Call, mark: Mark) -> None:
    """Look for ``call``'s server's Health service when ``breaker`` opens; attach the check if it answers.

    Called for every routed call, so cheap after the first: that one adds a
    listener to the breaker, and the listener starts the search, off the
    caller's thread, at each opening until a check is attached or the server
    says it has no Health service. ``mark`` is the exchange's flag that an
    RPC is ours (passed in: the exchange imports this module). A hand-wired
    interceptor without ``target=`` gives no target to check: no default check.
    """
    if breaker in _watched or not call.target or breaker.health_check is not None:
        return
    try:
        _watched.add(breaker)
    except TypeError:  # a breaker that cannot be weakly referenced gets no default check
        return
    target, service, ref = call.target, call.service or "", weakref.ref(breaker)

    def on_transition(event: StateChangeEvent) -> None:
        watched = ref()
        if event.state is CircuitState.OPEN and watched is not None:
            _start_looking(watched, target, service, mark)

    breaker.add_listener(on_transition)


def _start_looking(breaker: CircuitBreaker, target: str, service: str, mark: Mark) -> None:
    with _lock:
        if breaker.health_check is not None or breaker in _no_service or breaker in _looking:
            return
        _looking.add(breaker)
    threading.Thread(target=_look, args=(weakref.ref(breaker), target, service, mark), daemon=True,
                     name=f"otel-cb grpc health {breaker.name[:40]}").start()


def _look(ref: weakref.ref[CircuitBreaker], target: str, service: str, mark: Mark) -> None:
    """Ask until the server answers, says it has no Health service, or the breaker leaves open."""
    try:
        while (breaker := ref()) is not None and breaker.health_check is None:
            timeout = breaker.config.health_check_timeout
            try:
                answer = ask_health(target, service, timeout, mark)
                reason: Any = None
            except Exception as exc:  # grpcio-health-checking missing, or a broken grpc: no default check
                answer, reason = "no_service", exc
            if answer in ("serving", "not_serving"):
                break
            why = {"no_service": "does not answer grpc.health.v1.Health/Check for its service",
                   "unreachable": "was not reachable for grpc.health.v1.Health/Check on a plaintext channel"}[answer]
            log_once(("grpc", "no-health", breaker.name), "otel-cb: circuit breaker %r: %s %s%s; no default health "
                     "check, it probes with user calls", breaker.name, target, why,
                     f" ({type(reason).__name__})" if reason is not None else "")
            if answer == "no_service":
                _no_service.add(breaker)
                return
            interval = breaker.config.health_check_interval
            if interval is None or breaker.state is not CircuitState.OPEN:
                return  # asked again at the next opening
            del breaker  # not kept alive by the wait
            time.sleep(interval)
        else:
            return
        check = GrpcHealthCheck(breaker, target, service, timeout, mark)
        attach_default_health_check(breaker, lambda: check)
    finally:
        breaker = ref()
        if breaker is not None:
            with _lock:
                _looking.discard(breaker)
