"""Circuit breakers for requests: every ``requests.Session``, and so ``requests.get`` and friends.

Usage
-----
Under ``otel-cb-instrument`` (or after ``otel_cb.instrument()``) every request
of every ``requests.Session`` is protected, including sessions built before
instrumentation, the module-level ``requests.get(...)``, ``requests.post(...)``
and any adapter that subclasses ``requests.adapters.HTTPAdapter`` without
replacing ``send``. Nothing to change in the application::

    pip install 'otel-cb[requests]'
    otel-cb-instrument python app.py

Each request goes to the breaker that ``otel_cb_select_breaker`` picks: the
config's ``match: {http: [...]}`` rules, else one automatic breaker per
``scheme://host:port``, named exactly as the httpx integration names it, so
an application calling one origin with both clients has one breaker for it.
Each hop of a redirect is judged by its own origin's breaker. A request that
requests itself rejects before any I/O (``MissingSchema``, ``InvalidSchema``,
``InvalidURL``) never creates or touches a breaker.

What counts as a failure
------------------------
The same rules as httpx, from the same code:

- Connection errors (``requests.exceptions.ConnectionError``, ``SSLError``,
  ``ProxyError``), timeouts (``ConnectTimeout``, ``ReadTimeout``), urllib3
  retries exhausted on statuses (``RetryError``), HTTP 5xx and 429 are
  failures.
- Other 4xx are successes: the server is healthy, the request was not.
  ``InvalidURL``, ``InvalidHeader`` and a rejection by another breaker
  count as neither. Other exceptions follow the
  breaker's ``record_exceptions`` / ``ignore_exceptions``; interrupts are no
  verdict.
- ``failure_statuses: [429, "5xx", "520-530"]`` in a breaker's config section
  replaces the status rule, and an ``otel_cb_classify`` hook (it sees the
  ``requests.Response``, or the exception) overrides everything.
- A response whose head is healthy is judged when its body has been read:
  at once for ordinary requests (requests reads the body before returning),
  when ``iter_content`` / ``iter_lines`` / ``.content`` reach the end for
  ``stream=True``. A read error while the body streams
  (``ChunkedEncodingError``, a read timeout) is a failure; a body the
  application closes before its end, or reads through ``response.raw``
  itself, is no verdict. Its duration (for the slow call rule) runs to that
  moment.
- ``Retry-After`` on a failing 429 or 503 (delta-seconds or an HTTP-date)
  lengthens the open timeout when it is longer than the configured one,
  capped by ``max_open_timeout``.

Open circuit and fallbacks
--------------------------
While the breaker is open the request is not sent: ``RequestsCircuitOpenError``
is raised, which is both an ``otel_cb.CircuitOpenError`` (``.name``,
``.state``, ``.retry_after``) and a ``requests.exceptions.ConnectionError``
(so ``except requests.RequestException`` still catches it), at the moment a
refused connection would have been. Unless a fallback serves the call:

- an ``otel_cb_fallback`` hook returning a ``requests.Response`` wins;
- else the breaker's config ``fallback:``, the same keys as httpx::

      circuit_breakers:
        catalog: {match: {http: ["http://catalog:8080"]},
                  fallback: {type: stale_cache, ttl: 5m, max_entries: 1000}}

  ``stale_cache`` serves the last successful (2xx) GET to the same URL with
  the same credentials, no older than ``ttl`` (headers ``X-Otel-CB-Fallback:
  stale-cache`` and ``Age``); a breaker that httpx and requests share has one
  cache. ``static`` serves a fixed response (``X-Otel-CB-Fallback: static``).
  Served responses are built by the adapter as any response is, so hooks,
  ``.json()``, ``.text`` and ``stream=True`` work on them as usual.

Fallbacks serve rejected requests and requests that failed with an
exception; a 5xx response is returned as the server sent it. Each fallback
is counted (``circuit_breaker.fallbacks``) and marked on the span.

OpenTelemetry
-------------
OpenTelemetry's requests instrumentation wraps ``Session.send``; the breaker
sits in ``HTTPAdapter.send``, inside it, whichever was instrumented first:
the client span carries ``circuit_breaker.name`` and ``circuit_breaker.state``
and the ``circuit_breaker.rejected`` / ``circuit_breaker.state_change``
events; a rejected request still has its client span, with status ERROR.
Breaker names, attributes and logs never hold a URL's path, query or
credentials.

Uninstrument
------------
``otel_cb.uninstrument()`` removes exactly the three patches:
``HTTPAdapter.send``, ``Response.iter_content`` and ``Response.close``.

API
---
- ``RequestsCircuitOpenError``: what a refused request raises.
- ``validate_settings(name, section)``: checks ``failure_statuses``,
  ``fallback`` and ``health_check`` (httpx's keys) of a config section,
  without importing requests.
- ``otel_cb_config_keys()``, ``otel_cb_patches()``: this plugin's hooks.

Importing this module does not import requests; ``RequestsCircuitOpenError``
loads it on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..plugin import Patch, SectionValidator, hookimpl
from ._http_policy import Machinery, validate_settings

if TYPE_CHECKING:
    from ._requests_exchange import RequestsCircuitOpenError

__all__ = ["RequestsCircuitOpenError", "otel_cb_config_keys", "otel_cb_patches", "validate_settings"]

# The plugin is loaded at every start-up whether or not the application uses requests.
# Named relatively, so a renamed copy of the package (the benchmarks' baseline) loads its own half.
_MODULE = f"{__package__}._requests_exchange"
_MACHINERY = Machinery(_MODULE)


def __getattr__(name: str) -> Any:
    return _MACHINERY.attribute(__name__, frozenset({"RequestsCircuitOpenError"}), name)


# Built once: a patch is the same patch at every instrument(), so it is applied once.
_PATCHES = [
    Patch("requests.adapters", "HTTPAdapter.send", f"{_MODULE}:patched_send", "requests"),
    Patch("requests.models", "Response.iter_content", f"{_MODULE}:patched_iter_content", "requests"),
    Patch("requests.models", "Response.close", f"{_MODULE}:patched_close", "requests"),
]


@hookimpl
def otel_cb_config_keys() -> Mapping[str, SectionValidator]:
    """The breaker-section keys of the requests integration (httpx's), checked without importing requests."""
    return {"failure_statuses": validate_settings, "fallback": validate_settings, "health_check": validate_settings}


@hookimpl
def otel_cb_patches() -> list[Patch]:
    """Patch the adapter's send and the response body's end (applied when requests is imported)."""
    return list(_PATCHES)
