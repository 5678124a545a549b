"""The names otel-cb's telemetry is known by: instrumentation scope, span attributes, events, the collection hook.

They are a contract (the README lists them with the Prometheus names the
exporter derives from them), shared by ``_core``, which puts them on spans,
log records and the hook gauge, and ``_metrics``, which puts them on metric
points; this module holds only the names, so both import it and neither the
other. Metric names and units stay with ``_metrics``, which alone makes metrics.
"""

from __future__ import annotations

__all__ = [
    "ATTR_NAME", "ATTR_OUTCOME", "ATTR_PREVIOUS_STATE", "ATTR_REASON", "ATTR_RETRY_AFTER", "ATTR_STATE",
    "COLLECTION_HOOK", "FALLBACK_EVENT", "REJECTED_EVENT", "SCOPE", "STATE_CHANGE_EVENT",
]

SCOPE = "otel_cb"
"""The instrumentation scope (tracer, logger and meter name) of everything otel-cb reports."""

ATTR_NAME = "circuit_breaker.name"
ATTR_STATE = "circuit_breaker.state"
ATTR_PREVIOUS_STATE = "circuit_breaker.previous_state"
ATTR_OUTCOME = "circuit_breaker.outcome"
ATTR_REASON = "circuit_breaker.reason"
ATTR_RETRY_AFTER = "circuit_breaker.retry_after"

STATE_CHANGE_EVENT = "circuit_breaker.state_change"
REJECTED_EVENT = "circuit_breaker.rejected"
FALLBACK_EVENT = "circuit_breaker.fallback"

COLLECTION_HOOK = "otel_cb.collection"
"""The observable gauge whose callback tells otel-cb a reader collects; its point never leaves the process."""
