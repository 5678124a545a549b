"""Circuit breakers for httpx: every ``Client`` and ``AsyncClient``, patched or wired by hand.

Usage
-----
Under ``otel-cb-instrument`` (or after ``otel_cb.instrument()``) every request
of every ``httpx.Client`` and ``httpx.AsyncClient`` is protected, including
clients built before instrumentation and custom ``mounts``: the integration
patches ``httpx.HTTPTransport.handle_request`` and
``httpx.AsyncHTTPTransport.handle_async_request``. Each request goes to the
breaker that ``otel_cb_select_breaker`` picks: the config's ``match: {http:
[...]}`` rules, else one automatic breaker per ``scheme://host:port``.

By hand, wrap a transport::

    import httpx
    from otel_cb import CircuitBreaker, CircuitBreakerConfig
    from otel_cb.integrations.httpx import CircuitBreakerTransport

    cb = CircuitBreaker("sentinel_client", CircuitBreakerConfig.preset("http_api"))
    client = httpx.Client(transport=CircuitBreakerTransport(httpx.HTTPTransport(), breaker=cb))

``AsyncCircuitBreakerTransport(httpx.AsyncHTTPTransport(), breaker=cb)`` is the
async twin. ``selector=`` instead of ``breaker=`` picks a breaker per request.
A hand-wired transport around a patched ``HTTPTransport`` guards each request
once, not twice.

What counts as a failure
------------------------
- Connection errors, timeouts, remote protocol errors (and proxy errors),
  HTTP 5xx and 429 are failures.
- Other 4xx are successes: the server is healthy, the request was not.
  ``httpx.UnsupportedProtocol`` and ``httpx.LocalProtocolError`` (a bad
  request), ``httpx.PoolTimeout`` (the client's own connection pool is
  exhausted) and a rejection by another breaker count as neither. Other exceptions follow the breaker's own
  ``record_exceptions`` / ``ignore_exceptions`` rules; cancellation is no verdict.
- ``failure_statuses: [429, "5xx", "520-530"]`` in a breaker's config section
  (or ``failure_statuses=`` on a transport) replaces the status rule, and an
  ``otel_cb_classify`` hook overrides everything for the calls it answers.
- A response whose head is healthy is judged when its body ends: a read
  error while the body streams (``client.stream(...)``) is a failure; a body
  read to its end, or closed early, is a success. Its duration (for the slow
  call rule) runs to that moment.
- ``Retry-After`` on a failing 429 or 503 (delta-seconds or an HTTP-date)
  lengthens the open timeout when it is longer than the configured one,
  capped by ``max_open_timeout``.

Open circuit and fallbacks
--------------------------
While the breaker is open the request is not sent: ``HTTPCircuitOpenError``
is raised, which is both an ``otel_cb.CircuitOpenError`` (``.name``,
``.state``, ``.retry_after``) and an ``httpx.TransportError`` (so ``except
httpx.HTTPError`` still catches it). Unless a fallback serves the call:

- an ``otel_cb_fallback`` hook returning an ``httpx.Response`` wins;
- else a breaker's config ``fallback:`` (or ``fallback=`` on a transport)::

      circuit_breakers:
        catalog: {preset: http_api, match: {http: ["http://catalog:8080"]},
                  fallback: {type: stale_cache, ttl: 5m, max_entries: 1000}}
        payments: {match: {http: ["https://pay:443"]},
                   fallback: {type: static, status: 503, json: {error: "payments unavailable"}}}

  ``stale_cache`` serves the last successful (2xx) response to the same GET
  (method, URL and credentials) no older than ``ttl``, with the headers
  ``X-Otel-CB-Fallback: stale-cache`` and ``Age``. Only GET is ever cached or
  replayed; memory is bounded by ``max_entries`` responses of at most
  ``max_entry_bytes`` (1 MiB) each. ``static`` serves a fixed response (any
  method) with ``X-Otel-CB-Fallback: static``.

Fallbacks serve rejected requests and requests that failed with an
exception; a 5xx response is returned to the application as the server sent
it. Each fallback is counted (``circuit_breaker.fallbacks``, outcome
``success``, or ``failure`` when the cache had no fresh entry) and marked on
the span (``circuit_breaker.fallback`` event).

OpenTelemetry
-------------
With ``opentelemetry-instrumentation-httpx`` active, the breaker runs inside
its client span: the span carries ``circuit_breaker.name`` and
``circuit_breaker.state``, and the ``circuit_breaker.rejected`` /
``circuit_breaker.state_change`` events; a rejected request still has its
client span, with status ERROR. ``otel-cb-instrument`` orders the patches so.
Breaker names, attributes and logs never hold a URL's path, query or
credentials.

Uninstrument
------------
``otel_cb.uninstrument()`` removes exactly these patches. Hand-wired
transports are plain objects and stay as they are.

API
---
- ``CircuitBreakerTransport`` / ``AsyncCircuitBreakerTransport``: the hand-wired transports.
- ``HTTPCircuitOpenError``: what a refused request raises.
- ``Selector``: the type of ``selector=``, ``(otel_cb.plugin.Call) -> CircuitBreaker | None``.
- ``validate_settings(name, section)``: checks ``failure_statuses``, ``fallback`` and
  ``health_check`` of a config section, without importing httpx.
- ``otel_cb_config_keys()``, ``otel_cb_patches()``: this plugin's hooks (its three
  config keys; the two transport patches).

A breaker section's ``health_check: {path: /healthz, expect: 2xx}`` gives the
breaker a health check (``GET path`` on the origin, below the patch; see
``otel_cb.integrations._http_health``); there is no default path.

Importing this module does not import httpx; the names above load it on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..plugin import Patch, SectionValidator, hookimpl
from ._http_policy import Machinery, validate_settings

if TYPE_CHECKING:
    from ._http_transport import (
        AsyncCircuitBreakerTransport,
        CircuitBreakerTransport,
        HTTPCircuitOpenError,
        Selector,
    )

__all__ = [
    "AsyncCircuitBreakerTransport",
    "CircuitBreakerTransport",
    "HTTPCircuitOpenError",
    "Selector",
    "otel_cb_config_keys",
    "otel_cb_patches",
    "validate_settings",
]

# Importing httpx costs about 90 ms: the transports load it when first used.
# Named relatively, so a renamed copy of the package (the benchmarks' baseline) loads its own half.
_MODULE = f"{__package__}._http_transport"
_MACHINERY = Machinery(_MODULE)
_LAZY = frozenset({"AsyncCircuitBreakerTransport", "CircuitBreakerTransport", "HTTPCircuitOpenError", "Selector"})


def __getattr__(name: str) -> Any:
    return _MACHINERY.attribute(__name__, _LAZY, name)


@hookimpl
def otel_cb_config_keys() -> Mapping[str, SectionValidator]:
    """The breaker-section keys of the httpx integration, checked without importing httpx."""
    return {"failure_statuses": validate_settings, "fallback": validate_settings, "health_check": validate_settings}


@hookimpl
def otel_cb_patches() -> list[Patch]:
    """Patch httpx's sync and async transports (applied when httpx is imported)."""
    return [
        Patch("httpx", "HTTPTransport.handle_request", f"{_MODULE}:patched_handle_request", "httpx"),
        # A plain function: an unprotected call gets httpx's own coroutine, untouched.
        Patch("httpx", "AsyncHTTPTransport.handle_async_request", f"{_MODULE}:patched_handle_async_request",
              "httpx"),
    ]
