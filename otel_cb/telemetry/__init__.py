"""OpenTelemetry for otel-cb: span events, log events, span attributes and metrics of every breaker.

Telemetry is on by default, as OpenTelemetry asks of a library: otel-cb
reports through the API's global providers, a no-op until the application
installs an SDK (before or after the breakers are made), and then goes to
that SDK with no further call. Usage::

    import otel_cb.telemetry

    otel_cb.telemetry.configure()   # SDK providers + exporters from OTEL_* variables
                                    # (where none are installed yet)

    otel_cb.telemetry.disable()     # opt out (or otel_cb in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)
    otel_cb.telemetry.enable(events="log")   # back on; events as log records only

Events (``circuit_breaker.state_change``, ``circuit_breaker.rejected``,
``circuit_breaker.fallback``) go on the current span as span events, and the
first two also as log records through the Logs API (``event.name``,
correlated with the current span); ``OTEL_CB_EVENTS`` or ``enable(events=)``
chooses ``span``, ``log`` or ``span,log`` (the default).

Names of spans, events, attributes and instruments are a contract; the README
lists them with the Prometheus names the exporter derives from them.

Cost: the call path records no OpenTelemetry instrument. Every breaker keeps
plain counters (and, once an SDK meter provider exists, duration buckets),
which ``_metrics`` turns into finished metric data when a reader collects.

Integrations call ``annotate_current_span(breaker)`` after admission so the
client span carries ``circuit_breaker.name`` and ``circuit_breaker.state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import add_duration_histogram, annotate_current_span, disable, enable, enable_by_default, is_enabled
from ._names import ATTR_NAME, ATTR_OUTCOME, ATTR_PREVIOUS_STATE, ATTR_REASON, ATTR_RETRY_AFTER, ATTR_STATE

if TYPE_CHECKING:
    from ._configure import TelemetrySetup, configure

__all__ = [
    "ATTR_NAME",
    "ATTR_OUTCOME",
    "ATTR_PREVIOUS_STATE",
    "ATTR_REASON",
    "ATTR_RETRY_AFTER",
    "ATTR_STATE",
    "TelemetrySetup",
    "add_duration_histogram",
    "annotate_current_span",
    "configure",
    "disable",
    "enable",
    "is_enabled",
]

# These need the OpenTelemetry SDK; integrations that only annotate spans
# import this package without loading it (add_duration_histogram loads it when called).
_LAZY = {"configure": "_configure", "TelemetrySetup": "_configure"}

# Importing the package means telemetry is wanted: on now, not at the first breaker.
enable_by_default()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
