"""The ``sentinel`` plugin: Sentinel, the anomaly-detection REST service, behind ``sentinel_client``.

Routing: every HTTP call to Sentinel's base URL (``scheme://host:port`` of
``SENTINEL_URL``, read when a destination is first seen; or the
``match: {http: [...]}`` rules of the ``sentinel_client`` config section).

Settings (the origin's Sentinel override of the default preset): 3
consecutive failures, failure rate 0.3 over at least 5 calls in a 30 s
window, 10 s open. While open, ``GET /api/v1/alerts`` is served the last good
alert list from the stale cache (marked by the ``X-Otel-CB-Fallback:
stale-cache`` header, which ``SentinelClient`` turns into ``AlertList.stale``);
``POST /api/v1/analyze`` is never replayed and fails fast. Its health check
is ``GET /healthz`` expecting a 2xx (the HTTP integrations' ``health_check``
key): while open, the breaker waits for it instead of sending user requests.

Every key can be overridden in the ``sentinel_client`` config section;
``--disable sentinel`` turns the plugin off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_cb.plugin import Call, hookimpl

from ._routing import env_http_origin

__all__ = ["BREAKER", "DEFAULTS", "otel_cb_breaker_defaults", "otel_cb_select_breaker"]

BREAKER = "sentinel_client"
DEFAULTS: Mapping[str, Any] = {
    "preset": "default",
    "failure_threshold": 3,
    "failure_rate_threshold": 0.3,
    "minimum_calls": 5,
    "window_size": "30s",
    "open_timeout": "10s",
    "fallback": {"type": "stale_cache", "ttl": "5m", "max_entries": 100},
    "health_check": {"path": "/healthz", "expect": "2xx"},
}


@hookimpl
def otel_cb_breaker_defaults() -> Mapping[str, Mapping[str, Any]]:
    return {BREAKER: DEFAULTS}


@hookimpl
def otel_cb_select_breaker(call: Call) -> str | None:
    if call.kind == "http" and call.target == env_http_origin("SENTINEL_URL"):
        return BREAKER
    return None
