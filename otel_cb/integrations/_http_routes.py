"""Where an HTTP request goes, for every HTTP client: its breaker, its settings, worked out once per destination.

A protected request needs its breaker (``select_breaker``), the breaker's
HTTP settings and, the first time, the offer of its health check. All three
depend on the destination and the method only, so httpx keeps them in a
``RouteMemo`` keyed by what it reads off its own request (scheme, host,
port, method) and builds the ``Call`` for routing only on a miss: a hit
costs the key and one dict lookup, and the ``Call`` a hook or a fallback
needs is built later, by the exchange, only when one reads it. requests
does the same with the prepared URL's ``scheme://netloc`` text and the
method, routing a miss (and every URL with userinfo) through ``route_http``.

Imports no client library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..plugin import Call, listening, select_breaker
from ._http_health import Client, offer_health_check
from ._http_policy import HTTPSettings, StaleCache, StaticResponse, settings_of

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


def route_to(breaker: CircuitBreaker, call: Call, client: Client, failure_statuses: frozenset[int] | None = None,
             fallback: StaleCache | StaticResponse | None = None) -> HTTPRoute:
    """The route of ``call`` to ``breaker``, with the breaker's own settings unless a hand-wired
    transport gave ``failure_statuses`` or ``fallback``."""
    settings = settings_of(breaker)
    offer_health_check(breaker, call, client, settings.health_check)
    if failure_statuses is not None or fallback is not None:
        settings = HTTPSettings(settings.failure_statuses if failure_statuses is None else failure_statuses,
                                settings.fallback if fallback is None else fallback)
    return HTTPRoute(breaker, settings, call.target, listening("otel_cb_classify"))
