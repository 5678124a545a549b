"""OpenTelemetry for otel-cb: span events, span attributes and metrics of every breaker.

Usage::

    import otel_cb.telemetry

    otel_cb.telemetry.configure()   # SDK providers + exporters from OTEL_* variables (if none
                                    # are installed), then enable()

    # or, with SDK providers of your own:
    otel_cb.telemetry.enable()
    reader = otel_cb.telemetry.add_duration_histogram(PeriodicExportingMetricReader(exporter))

``enable()`` registers the observer that adds span events and logs
transitions, and the observable instruments (scope ``otel_cb``). With no SDK
installed, everything is a no-op. ``disable()`` stops all of it.

Names of spans, events, attributes and instruments are a contract; the README
lists them with the Prometheus names the exporter derives from them.

Cost: the call path records no OpenTelemetry instrument. Every breaker keeps
plain counters, which the observable instruments read when a metric reader
collects; the call-duration histogram is bucketed in the breaker and handed
to the readers that ``add_duration_histogram()`` extended (``configure()``
does it for its own reader).

Integrations call ``annotate_current_span(breaker)`` after admission so the
client span carries ``circuit_breaker.name`` and ``circuit_breaker.state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import (
    ATTR_NAME,
    ATTR_OUTCOME,
    ATTR_PREVIOUS_STATE,
    ATTR_REASON,
    ATTR_RETRY_AFTER,
    ATTR_STATE,
    annotate_current_span,
    disable,
    enable,
    is_enabled,
)

if TYPE_CHECKING:
    from ._configure import TelemetrySetup, configure
    from ._durations import add_duration_histogram

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
# import this package without loading it.
_LAZY = {"configure": "_configure", "TelemetrySetup": "_configure", "add_duration_histogram": "_durations"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
