"""``configure()``: SDK providers and exporters from the standard ``OTEL_*`` variables.

This module owns the SDK side for applications that have none: a tracer
provider with a bounded batch span processor, a meter provider with one
reader (OTLP push, or a Prometheus pull endpoint), both from the variables
OpenTelemetry's own tooling reads. It never replaces a provider the
application installed, and keeps a collector outage from spamming the logs:
the exporters' retry lines are muted and otel-cb says once that export fails,
and once that it works again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from ._core import enable
from ._durations import add_duration_histogram

__all__ = ["TelemetrySetup", "configure"]

logger = logging.getLogger("otel_cb")

_PROTOCOLS = ("grpc", "http/protobuf")
_TRACES_EXPORTERS = ("otlp", "console", "none")
_METRICS_EXPORTERS = ("otlp", "prometheus", "console", "none")
# The OTLP exporters log every retry and every failed batch; while a collector
# is down that is a line per batch, forever. otel-cb's own notice replaces them.
_NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
)
_NOISY_PREFIXES = ("Transient error", "Failed to export", "Shutdown in progress", "Exporter already shutdown")
# How long the exit may wait for an export in progress before dropping it.
_EXIT_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class TelemetrySetup:
    """What ``configure()`` installed; None where the application already had a provider.

    Attributes:
        tracer_provider: The SDK tracer provider installed as the global one.
        meter_provider: The SDK meter provider installed as the global one.
        metric_reader: Its reader (exports ``circuit_breaker.call.duration`` too).
    """

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    metric_reader: MetricReader | None

    def shutdown(self) -> None:
        """Flush and stop what was installed (the SDK also does this at exit).

        Waits at most a short grace for a collector that does not answer,
        then drops what it could not send.
        """
        _give_up_failing_exports()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def configure(environ: Mapping[str, str] | None = None) -> TelemetrySetup:
    """Install SDK providers and exporters from ``OTEL_*`` variables, then ``enable()``.

    Reads ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_EXPORTER`` (``otlp`` default, ``console``, ``none``),
    ``OTEL_METRICS_EXPORTER`` (``otlp`` default, ``prometheus``, ``console``,
    ``none``), ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL`` (``grpc``
    default, as ``opentelemetry-instrument``; or ``http/protobuf``),
    ``OTEL_EXPORTER_PROMETHEUS_HOST``/``_PORT`` (``localhost:9464``), and
    through the SDK itself the endpoint, headers, timeout, ``OTEL_BSP_*`` queue
    limits and ``OTEL_METRIC_EXPORT_INTERVAL``.

    A provider the application already installed is left alone (add
    ``add_duration_histogram(reader)`` to your own metric reader then).
    Exports run in the SDK's background threads, so a collector that is down
    or slow costs the application nothing but dropped telemetry; the span
    queue is bounded (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048 by default).

    Args:
        environ: Variables to read instead of ``os.environ`` (tests).

    Returns:
        What was installed.

    Raises:
        ValueError: a variable holds a value otel-cb does not support; the
            message names the variable, the value and what is allowed.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TelemetrySetup(None, None, None)
    traces = _choices(env, "OTEL_TRACES_EXPORTER", _TRACES_EXPORTERS)
    metrics_exporters = _choices(env, "OTEL_METRICS_EXPORTER", _METRICS_EXPORTERS)
    _protocol(env, "TRACES")
    _protocol(env, "METRICS")
    resource = Resource.create()
    tracer_provider = None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        tracer_provider = TracerProvider(resource=resource)
        for name in traces:
            tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name, env)))
        trace.set_tracer_provider(tracer_provider)
    meter_provider = reader = None
    if _no_meter_provider():
        readers = [add_duration_histogram(_metric_reader(name, env)) for name in metrics_exporters]
        reader = readers[0] if readers else None
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)
    if tracer_provider is not None or meter_provider is not None:
        _mute_exporter_retries()
        # atexit runs handlers last-registered first: this one runs before the
        # providers' own shutdown, registered when they were made.
        atexit.register(_give_up_failing_exports)
    enable()
    return TelemetrySetup(tracer_provider, meter_provider, reader)


def _choices(env: Mapping[str, str], variable: str, allowed: Sequence[str]) -> list[str]:
    names = [name.strip().lower() for name in env.get(variable, "otlp").split(",") if name.strip()]
    for name in names:
        if name not in allowed:
            raise ValueError(f"{variable}: {name!r} is not supported; use one or more of {', '.join(allowed)}")
    return [name for name in names if name != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if variable not in env:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = env.get(variable, "grpc").strip().lower()
    if protocol not in _PROTOCOLS:
        raise ValueError(f"{variable}: {protocol!r} is not supported; use one of {', '.join(_PROTOCOLS)}")
    return protocol


def _no_meter_provider() -> bool:
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    return isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    exporter: SpanExporter
    if _protocol(env, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        exporter = GrpcSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

        exporter = HttpSpanExporter()
    return _NoticingSpanExporter(exporter)


def _metric_reader(name: str, env: Mapping[str, str]) -> MetricReader:
    if name == "prometheus":
        return _prometheus_reader(env)
    exporter: MetricExporter
    if name == "console":
        exporter = ConsoleMetricExporter()
    elif _protocol(env, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        exporter = _NoticingMetricExporter(GrpcMetricExporter())
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

        exporter = _NoticingMetricExporter(HttpMetricExporter())
    return PeriodicExportingMetricReader(exporter)


def _prometheus_reader(env: Mapping[str, str]) -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise ValueError(
            "OTEL_METRICS_EXPORTER: 'prometheus' needs opentelemetry-exporter-prometheus; "
            "install otel-cb[prometheus]"
        ) from exc
    raw_port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
    try:
        port = int(raw_port)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"OTEL_EXPORTER_PROMETHEUS_PORT: {raw_port!r} is not allowed; use a port number 0..65535")
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
    reader = PrometheusMetricReader()
    try:
        start_http_server(port=port, addr=host)
    except OSError as exc:
        # A taken port must not stop the application; metrics are lost, said once.
        logger.error("otel-cb could not serve Prometheus metrics on %s:%s (%s); no pull endpoint", host, port, exc)
    return reader


class _Notice:
    """Says once that export fails, and once that it works again."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.failing = False
        self._lock = threading.Lock()

    def result(self, ok: bool) -> None:
        with self._lock:
            if ok == (not self.failing):
                return
            self.failing = not ok
        if ok:
            logger.info("otel-cb telemetry: %s export works again", self._what)
        else:
            logger.warning(
                "otel-cb telemetry: %s export failed (collector down or unreachable?); "
                "data is dropped until it comes back, and this is said once", self._what,
            )


class _Noticing:
    """What both exporter wrappers share: the notice, and giving up at exit.

    At exit the SDK flushes, and an OTLP exporter retries a dead collector for
    up to its timeout (10 s by default) per signal: a process would hang for
    tens of seconds before it ends. So when export is failing as the process
    exits, the wrapper shuts the exporter down at once (which also breaks off
    a retry in progress) and drops what is left.
    """

    def __init__(self, exporter: Any, what: str) -> None:
        self._exporter = exporter
        self._notice = _Notice(what)
        self._given_up = False
        self._shut = False
        self._in_flight = 0
        _wrappers.add(self)

    def _export(self, export: Callable[[], Any], success: Any) -> bool:
        self._in_flight += 1
        try:
            result = export()
        finally:
            self._in_flight -= 1
        self._notice.result(result is success)
        return result is success

    def _give_up_if_stuck(self, deadline: float) -> None:
        # A healthy export ends in milliseconds; one still running at the
        # deadline is retrying a collector that does not answer.
        while self._in_flight and not self._notice.failing and time.monotonic() < deadline:
            time.sleep(0.02)
        if (self._notice.failing or self._in_flight) and not self._given_up:
            self._given_up = True
            self._shutdown_inner()

    def _shutdown_inner(self, **kwargs: Any) -> None:
        if not self._shut:
            self._shut = True
            self._exporter.shutdown(**kwargs)


_wrappers: weakref.WeakSet[_Noticing] = weakref.WeakSet()


def _give_up_failing_exports() -> None:
    deadline = time.monotonic() + _EXIT_GRACE
    for wrapper in list(_wrappers):
        wrapper._give_up_if_stuck(deadline)


class _NoticingSpanExporter(_Noticing, SpanExporter):
    def __init__(self, exporter: SpanExporter) -> None:
        super().__init__(exporter, "span")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._given_up:
            return SpanExportResult.FAILURE
        ok = self._export(lambda: self._exporter.export(spans), SpanExportResult.SUCCESS)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown_inner()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._exporter.force_flush(timeout_millis))


class _NoticingMetricExporter(_Noticing, MetricExporter):
    def __init__(self, exporter: MetricExporter) -> None:
        _Noticing.__init__(self, exporter, "metric")
        MetricExporter.__init__(self, exporter._preferred_temporality, exporter._preferred_aggregation)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._given_up:
            return MetricExportResult.FAILURE
        ok = self._export(lambda: self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
                          MetricExportResult.SUCCESS)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self._exporter.force_flush(timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._shutdown_inner(**kwargs)


class _RetryFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_NOISY_PREFIXES))


_retry_filter = _RetryFilter()


def _mute_exporter_retries() -> None:
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if _retry_filter not in noisy.filters:
            noisy.addFilter(_retry_filter)
