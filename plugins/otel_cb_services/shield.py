"""The ``shield`` plugin: Shield, the security-analysis gRPC service, behind ``shield_client``.

Routing: every call to ``llm.shield.v1.ShieldService``, and every call to
``SHIELD_TARGET`` (or the ``match:`` rules of the ``shield_client`` section).

Settings: the ``aggressive`` preset (3 consecutive failures, failure rate 0.3
over 5 calls in 30 s, 10 s open doubling up to 120 s, 5 probe successes).
Health check: the grpc integration's default, ``grpc.health.v1.Health/Check``
for ``llm.shield.v1.ShieldService`` on Shield's target (Shield serves it).

Shield fails closed. No fallback may answer for Shield as if it had scanned:
this plugin answers every ``otel_cb_fallback`` for a Shield call first
(``tryfirst``), with ``Refusal(NotScanned(error))``, so no other plugin can slip a
made-up verdict in, and the breaker counts the answer as a ``refused`` fallback,
never as a successful one; ``ShieldClient`` accepts nothing but a ``SecurityVerdict`` for the
event it asked about, and turns everything else (``NotScanned``, an open
breaker, a failed call) into ``ShieldUnavailableError``, whose message says
the event was NOT scanned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_cb.plugin import Call, Refusal, hookimpl

from ._routing import env_target

__all__ = ["BREAKER", "DEFAULTS", "SERVICE", "NotScanned", "otel_cb_breaker_defaults",
           "otel_cb_fallback", "otel_cb_select_breaker"]

BREAKER = "shield_client"
SERVICE = "llm.shield.v1.ShieldService"
DEFAULTS: Mapping[str, Any] = {"preset": "aggressive"}


@hookimpl
def otel_cb_breaker_defaults() -> Mapping[str, Mapping[str, Any]]:
    return {BREAKER: DEFAULTS}


class NotScanned:
    """The only fallback a Shield call ever gets: a refusal that carries why, never a verdict.

    Attributes:
        error: Why Shield did not answer (``CircuitOpenError`` when its breaker is open).
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"NotScanned({type(self.error).__name__})"


@hookimpl(tryfirst=True)
def otel_cb_fallback(call: Call, error: BaseException) -> Refusal[NotScanned] | None:
    if _is_shield(call):
        return Refusal(NotScanned(error))
    return None


def _is_shield(call: Call) -> bool:
    return call.kind == "grpc" and (call.service == SERVICE or call.target == env_target("SHIELD_TARGET"))


@hookimpl
def otel_cb_select_breaker(call: Call) -> str | None:
    return BREAKER if _is_shield(call) else None
