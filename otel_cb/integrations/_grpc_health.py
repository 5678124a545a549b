"""The grpc integration's default health check: ``grpc.health.v1.Health/Check`` for the routed service.

When the grpc integration first routes a call to a breaker without a health
check, it asks the channel's target, on a fresh plaintext channel of its own
and within the breaker's ``health_check_timeout``, for the health of the
call's service (``Check(service=...)``, from ``grpcio-health-checking``). The
check is attached when that first answer comes back (``SERVING`` or not):
then it is known to reach the server's Health service. It is not attached,
and the breaker keeps timed probing, said once per breaker, when:

- the server has no Health service (``UNIMPLEMENTED``) or does not know the
  service (``NOT_FOUND``);
- the first check does not reach the server (it is down, or serves TLS,
  which a check without the channel's credentials cannot speak).

An attached check passes on ``SERVING`` only; if the server later answers
``UNIMPLEMENTED`` or ``NOT_FOUND`` the check detaches itself (said once).
Its RPCs are marked as ours (``guarded``), so the automatic interceptor
neither counts them nor refuses them while the breaker is open.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import weakref
from typing import TYPE_CHECKING, Any, Literal

import grpc  # type: ignore[import-untyped]

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


def offer_health_check(breaker: CircuitBreaker, call: Call, mark: Mark) -> None:
    """Find out once, off the caller's thread, whether ``call``'s server has a Health service; attach the check.

    ``mark`` is the exchange's flag that an RPC is ours (passed in: the
    exchange imports this module). A hand-wired interceptor without
    ``target=`` gives no target to check: no default check.
    """
    if not call.target:
        return

    def make() -> None:
        check = GrpcHealthCheck(breaker, call.target, call.service or "", breaker.config.health_check_timeout, mark)
        threading.Thread(target=_attach_if_answered, args=(breaker, check), daemon=True,
                         name=f"otel-cb grpc health {breaker.name[:40]}").start()

    attach_default_health_check(breaker, make)


def _attach_if_answered(breaker: CircuitBreaker, check: GrpcHealthCheck) -> None:
    try:
        answer = ask_health(check.target, check.service, check.timeout, check.mark)
    except Exception as exc:  # grpcio-health-checking missing, or a broken grpc: no default check
        answer = "unreachable"
        reason: Any = exc
    else:
        reason = None
    if answer in ("serving", "not_serving"):
        if breaker.health_check is None:
            breaker.attach_health_check(check)
        return
    why = {"no_service": "does not answer grpc.health.v1.Health/Check for its service",
           "unreachable": "was not reachable for grpc.health.v1.Health/Check on a plaintext channel"}[answer]
    log_once(("grpc", "no-health", breaker.name), "otel-cb: circuit breaker %r: %s %s%s; no default health "
             "check, it probes with user calls", breaker.name, check.target, why,
             f" ({type(reason).__name__})" if reason is not None else "")
