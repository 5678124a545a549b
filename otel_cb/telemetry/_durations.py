"""Export of the breakers' call-duration histograms at collection time.

Recording an SDK ``Histogram`` on every call costs several microseconds, more
than the breaker itself; each breaker therefore buckets its own durations
(``otel_cb._stats.DurationHistogram``) and this module hands those buckets to
a metric reader whenever it collects, as the cumulative histogram
``circuit_breaker.call.duration``. The SDK has no public hook for
pre-aggregated data, so ``add_duration_histogram`` extends one reader's
``_receive_metrics``, the step every reader (periodic exporter, Prometheus,
in-memory) goes through after a collection.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .._breaker import CircuitBreaker
from .._version import __version__
from ._core import ATTR_NAME, ATTR_OUTCOME, SCOPE, live_breakers, telemetry

__all__ = ["DURATION_METRIC", "add_duration_histogram", "duration_metric"]

DURATION_METRIC = "circuit_breaker.call.duration"
logger = logging.getLogger("otel_cb")
_MARK = "_otel_cb_durations"
# When each breaker's histogram began, for the points' start time.
_started: weakref.WeakKeyDictionary[CircuitBreaker, int] = weakref.WeakKeyDictionary()


def add_duration_histogram(reader: MetricReader) -> MetricReader:
    """Make ``reader`` export ``circuit_breaker.call.duration`` with every collection.

    Turns on duration buckets in every breaker (now and later): about a tenth
    of a microsecond per call, the only per-call cost of telemetry. Idempotent.
    Nothing is exported while telemetry is disabled (``enable()``).

    Args:
        reader: Any SDK metric reader (``PeriodicExportingMetricReader``,
            ``PrometheusMetricReader``, ``InMemoryMetricReader``), before or
            after it is given to a ``MeterProvider``.

    Returns:
        The same reader, so it can wrap the reader's construction in one line.
    """
    receive = reader._receive_metrics
    if getattr(receive, _MARK, False):
        return reader
    now = time.time_ns()
    for breaker in live_breakers():
        _started.setdefault(breaker, now)
    telemetry.enable_histograms()
    failed = False

    def receive_with_durations(metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        nonlocal failed
        try:
            metrics_data = _extend(metrics_data)
        except Exception:
            # A bug here must cost the histogram, never the other metrics.
            if not failed:
                failed = True
                logger.error("otel-cb could not export %s; other metrics go on", DURATION_METRIC, exc_info=True)
        receive(metrics_data, timeout_millis=timeout_millis, **kwargs)

    setattr(receive_with_durations, _MARK, True)
    # An instance attribute shadows the class's method for this reader only.
    reader._receive_metrics = receive_with_durations  # type: ignore[method-assign]
    return reader


def duration_metric() -> Metric | None:
    """The cumulative ``circuit_breaker.call.duration`` of every breaker now, or None if empty."""
    if not telemetry.enabled:
        return None
    now = time.time_ns()
    # (name, outcome) -> (start, bucket counts, sum, boundaries); breakers that
    # share a name (made outside the registry) add up, as in the other instruments.
    merged: dict[tuple[str, str], tuple[int, list[int], float, tuple[float, ...]]] = {}
    for breaker in live_breakers():
        durations = breaker.snapshot().durations
        if not durations:
            continue
        start = _started.setdefault(breaker, now)
        for outcome, data in durations.items():
            key = (breaker.name, outcome)
            seen = merged.get(key)
            if seen is None or seen[3] != data.boundaries:
                merged[key] = (start, list(data.bucket_counts), data.sum, data.boundaries)
            else:
                counts = [a + b for a, b in zip(seen[1], data.bucket_counts, strict=True)]
                merged[key] = (min(seen[0], start), counts, seen[2] + data.sum, seen[3])
    if not merged:
        return None
    points = [
        HistogramDataPoint(
            attributes={ATTR_NAME: name, ATTR_OUTCOME: outcome},
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=sum(counts),
            sum=total,
            bucket_counts=counts,
            explicit_bounds=list(boundaries),
            # Not kept, to keep the call path cheap; optional in OTLP, and
            # the OTLP encoder leaves a None unset.
            min=None,  # type: ignore[arg-type]
            max=None,  # type: ignore[arg-type]
        )
        for (name, outcome), (start, counts, total, boundaries) in merged.items()
    ]
    return Metric(
        name=DURATION_METRIC,
        description="Duration of calls through the breaker, by outcome (success, failure, ignored)",
        unit="s",
        data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
    )


def _extend(metrics_data: MetricsData) -> MetricsData:
    metric = duration_metric()
    if metric is None or not metrics_data.resource_metrics:
        return metrics_data
    first, *rest = metrics_data.resource_metrics
    scopes = list(first.scope_metrics)
    for index, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == SCOPE:
            scopes[index] = ScopeMetrics(scope_metrics.scope, [*scope_metrics.metrics, metric],
                                         scope_metrics.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(SCOPE, __version__), [metric], ""))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])
