"""Where an HTTP request goes, for every HTTP client: its breaker, its settings, worked out once per destination.

A protected request needs its breaker (``select_breaker``), the breaker's
HTTP settings and, the first time, the offer of its health check. All three
depend on the destination and the method only, so each client keeps them in
a ``RouteMemo`` keyed by what it reads off its own request (httpx: scheme,
host, port, method) and builds the ``Call`` for routing only on a miss. A
hit costs the key and one dict lookup. The ``Call`` a hook or a fallback
needs is built later, by the exchange, only when one reads it.

Imports no client library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..plugin import Call, listening, select_breaker
from ._http_health import Client, offer_health_check
from ._http_policy import HTTPSettings, settings_of

if TYPE_CHECKING:
    from .. import CircuitBreaker

__all__ = ["HTTPRoute", "route_http", "route_to"]


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """Everything a protected request to one destination shares.

    Attributes:
        breaker: The breaker protecting it.
        settings: That breaker's HTTP settings (statuses, fallback, health check).
        target: ``scheme://host:port``, for the ``Call`` built when something reads it.
        classified: Whether an ``otel_cb_classify`` hook listens: if not, a
            response is judged by its status without building a ``Call``.
    """

    breaker: CircuitBreaker
    settings: HTTPSettings
    target: str
    classified: bool


def route_http(call: Call | None, client: Client) -> HTTPRoute | None:
    """The route of ``call`` (``client``'s description of a request), or None: it goes out unprotected.

    None for a request that names no destination (``call`` is None) and for
    one no breaker protects. Offers the breaker its configured health check.
    """
    if call is None:
        return None
    breaker = select_breaker(call)
    if breaker is None:
        return None
    return route_to(breaker, call, client)


def route_to(breaker: CircuitBreaker, call: Call, client: Client, settings: HTTPSettings | None = None) -> HTTPRoute:
    """The route of ``call`` to ``breaker``: with ``settings`` (a hand-wired transport's), else the breaker's own."""
    own = settings_of(breaker)
    offer_health_check(breaker, call, client, own.health_check)
    return HTTPRoute(breaker, own if settings is None else settings, call.target, listening("otel_cb_classify"))
