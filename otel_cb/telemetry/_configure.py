"""``configure()``: SDK providers and exporters from the standard ``OTEL_*`` variables.

This module owns the SDK side for applications that have none: a tracer
provider with a bounded batch span processor, a meter provider with one
reader (OTLP push, or a Prometheus pull endpoint) and a logger provider for
otel-cb's log events, all from the variables OpenTelemetry's own tooling
reads. It never replaces a provider the application installed, and keeps a
collector outage from hurting the host: the exporters' retry lines are
muted (otel-cb says once that export fails, and once that it works again),
and the shutdown at exit or through ``TelemetrySetup.shutdown()`` is bounded
(``EXIT_BUDGET``): a final flush the collector does not take in time is
dropped with one line, never retried past it.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
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

from ._core import add_duration_histogram, enable_by_default

__all__ = ["EXIT_BUDGET", "TelemetrySetup", "configure", "describe_destinations"]

logger = logging.getLogger("otel_cb")

_PROTOCOLS = ("grpc", "http/protobuf")
# The exporter names each variable allows; the command line imports these.
_TRACES_EXPORTERS = ("otlp", "console", "none")
_METRICS_EXPORTERS = ("otlp", "prometheus", "console", "none")
_LOGS_EXPORTERS = ("otlp", "console", "none")
# The OTLP exporters log every retry and every failed batch; while a collector
# is down that is a line per batch, forever. otel-cb's own notice replaces them.
_NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.common.http",
)
_NOISY_PREFIXES = ("Transient error", "Failed to export", "Shutdown in progress", "Exporter already shutdown",
                   "OTLP client already shutdown")
EXIT_BUDGET = 0.5
"""Seconds the shutdown (at exit, or ``TelemetrySetup.shutdown()``) may wait for
the final flush of every signal together before it drops what is left."""


@dataclass(frozen=True, slots=True)
class TelemetrySetup:
    """What ``configure()`` installed; None where the application already had a provider.

    Attributes:
        tracer_provider: The SDK tracer provider installed as the global one.
        meter_provider: The SDK meter provider installed as the global one.
        metric_reader: Its reader (exports ``circuit_breaker.call.duration`` too).
        logger_provider: The SDK logger provider installed as the global one
            (it carries otel-cb's log events).
    """

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    metric_reader: MetricReader | None
    logger_provider: LoggerProvider | None = None
    _exporters: tuple[_Noticing, ...] = field(default=(), repr=False)
    _shut: list[bool] = field(default_factory=lambda: [False], repr=False, compare=False)

    def shutdown(self) -> None:
        """Flush and stop what was installed (``configure()`` also does this at exit).

        Waits at most ``EXIT_BUDGET`` seconds in all for the final flush; what
        a collector that is down or does not answer has not taken by then is
        dropped, said in one line.
        """
        if self._shut[0]:
            return
        self._shut[0] = True
        atexit.unregister(self.shutdown)
        _bounded_shutdown(self._providers(), self._exporters)

    def _providers(self) -> list[Any]:
        return [p for p in (self.tracer_provider, self.meter_provider, self.logger_provider) if p is not None]


def configure(environ: Mapping[str, str] | None = None) -> TelemetrySetup:
    """Install SDK providers and exporters from ``OTEL_*`` variables, then turn telemetry on.

    Reads ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_EXPORTER`` (``otlp`` default, ``console``, ``none``),
    ``OTEL_METRICS_EXPORTER`` (``otlp`` default, ``prometheus``, ``console``,
    ``none``), ``OTEL_LOGS_EXPORTER`` (``otlp`` default, ``console``, ``none``),
    ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_|LOGS_]PROTOCOL`` (``grpc``
    default, as ``opentelemetry-instrument``; or ``http/protobuf``),
    ``OTEL_EXPORTER_PROMETHEUS_HOST``/``_PORT`` (``localhost:9464``), and
    through the SDK itself the endpoint, headers, timeout, ``OTEL_BSP_*`` and
    ``OTEL_BLRP_*`` queue limits and ``OTEL_METRIC_EXPORT_INTERVAL``.

    A provider the application already installed is left alone. Exports run
    in the SDK's background threads, so a collector that is down or slow
    costs the application nothing but dropped telemetry; the queues are
    bounded (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048 by default). At exit the
    providers installed here are shut down within ``EXIT_BUDGET`` seconds.
    Telemetry is turned on unless ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
    names ``otel_cb`` or ``disable()`` was called.

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
    logs = _choices(env, "OTEL_LOGS_EXPORTER", _LOGS_EXPORTERS)
    for signal in ("TRACES", "METRICS", "LOGS"):
        _protocol(env, signal)
    resource = Resource.create()
    known = set(_wrappers)
    tracer_provider = None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # Our own exit handler shuts it down, within the budget; the SDK's would wait on retries.
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for name in traces:
            tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name, env)))
        trace.set_tracer_provider(tracer_provider)
    meter_provider = reader = None
    if _no_meter_provider():
        readers = [add_duration_histogram(_metric_reader(name, env)) for name in metrics_exporters]
        reader = readers[0] if readers else None
        meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
        metrics.set_meter_provider(meter_provider)
    logger_provider = None
    if isinstance(_logs.get_logger_provider(), _logs._internal.ProxyLoggerProvider):
        logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        for name in logs:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter(name, env)))
        _logs.set_logger_provider(logger_provider)
    made = tuple(wrapper for wrapper in list(_wrappers) if wrapper not in known)
    setup = TelemetrySetup(tracer_provider, meter_provider, reader, logger_provider, made)
    if setup._providers():
        _mute_exporter_retries()
        atexit.register(setup.shutdown)
    enable_by_default()
    return setup


def _choices(env: Mapping[str, str], variable: str, allowed: Sequence[str]) -> list[str]:
    names = [name.strip().lower() for name in env.get(variable, "otlp").split(",") if name.strip()]
    for name in names:
        if name not in allowed:
            raise ValueError(f"{variable}: {name[:40]!r} is not supported; use one or more of {', '.join(allowed)}")
    return [name for name in names if name != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if variable not in env:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = env.get(variable, "grpc").strip().lower()
    if protocol not in _PROTOCOLS:
        raise ValueError(f"{variable}: {protocol[:40]!r} is not supported; use one of {', '.join(_PROTOCOLS)}")
    return protocol


def _no_meter_provider() -> bool:
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    return isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if _protocol(env, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return _NoticingSpanExporter(GrpcSpanExporter)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return _NoticingSpanExporter(HttpSpanExporter)


def _metric_reader(name: str, env: Mapping[str, str]) -> MetricReader:
    if name == "prometheus":
        return _prometheus_reader(env)
    exporter: MetricExporter
    if name == "console":
        exporter = ConsoleMetricExporter()
    elif _protocol(env, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        exporter = _NoticingMetricExporter(GrpcMetricExporter)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

        exporter = _NoticingMetricExporter(HttpMetricExporter)
    return PeriodicExportingMetricReader(exporter)


def _log_exporter(name: str, env: Mapping[str, str]) -> LogRecordExporter:
    if name == "console":
        return ConsoleLogRecordExporter()
    if _protocol(env, "LOGS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter

        return _NoticingLogExporter(GrpcLogExporter)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    return _NoticingLogExporter(HttpLogExporter)


def _prometheus_host_port(env: Mapping[str, str]) -> tuple[str, int]:
    raw_port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
    try:
        port = int(raw_port)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"OTEL_EXPORTER_PROMETHEUS_PORT: {raw_port[:40]!r} is not allowed; "
                         "use a port number 0..65535")
    return env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost"), port


def _prometheus_reader(env: Mapping[str, str]) -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise ValueError(
            "OTEL_METRICS_EXPORTER: 'prometheus' needs opentelemetry-exporter-prometheus; "
            "install otel-cb[prometheus]"
        ) from exc
    host, port = _prometheus_host_port(env)
    reader = PrometheusMetricReader()
    try:
        start_http_server(port=port, addr=host)
    except OSError as exc:
        # A taken port must not stop the application; metrics are lost, said once.
        logger.error("otel-cb could not serve Prometheus metrics on %s:%s (%s); no pull endpoint", host, port, exc)
    return reader


# -- where telemetry goes, said once at start-up ---------------------------------------

_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
_PROTOCOL_NAMES = {"grpc": "gRPC", "http/protobuf": "HTTP"}


def describe_destinations(setup: TelemetrySetup, environ: Mapping[str, str] | None = None) -> str | None:
    """One plain sentence saying where the signals ``setup`` installed go, or None.

    ``otel-cb-instrument`` prints it once at start-up, so a collector that is
    not there is no mystery. Endpoints appear without credentials, path or query.
    """
    env = os.environ if environ is None else environ
    installed = {"traces": setup.tracer_provider, "metrics": setup.meter_provider, "logs": setup.logger_provider}
    # destination -> the signals going there, in a stable order
    targets: dict[tuple[str, ...], list[str]] = {}
    for signal, provider in installed.items():
        if provider is None:
            continue
        for name in _choices(env, f"OTEL_{signal.upper()}_EXPORTER", ("otlp", "prometheus", "console", "none")):
            if name == "otlp":
                protocol = _protocol(env, signal.upper())
                endpoint = (env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
                            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_ENDPOINTS[protocol])
                targets.setdefault(("otlp", protocol, safe_endpoint(endpoint)), []).append(signal)
            elif name == "prometheus":
                host, port = _prometheus_host_port(env)
                host = f"[{host}]" if ":" in host else host
                targets.setdefault(("prometheus", f"http://{host}:{port}/metrics"), []).append(signal)
            else:
                targets.setdefault(("console",), []).append(signal)
    phrases = []
    for target, signals in targets.items():
        what = _and(signals)
        if target[0] == "otlp":
            phrases.append(f"sends {what} over OTLP/{_PROTOCOL_NAMES[target[1]]} to {target[2]}")
        elif target[0] == "prometheus":
            phrases.append(f"serves metrics for Prometheus at {target[1]}")
        else:
            phrases.append(f"prints {what} to standard output")
    return f"otel-cb {_and(phrases)}." if phrases else None


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def safe_endpoint(endpoint: str) -> str:
    """``endpoint`` without credentials, path or query (fit for a log line)."""
    scheme, sep, rest = endpoint.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    hostport = rest.rpartition("@")[2].partition("/")[0].partition("?")[0]
    return f"{scheme}://{hostport}" if scheme else hostport


# -- exporters that say once when they fail, and give up at exit -----------------------


class _Notice:
    """Says once that export fails, and once that it works again."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.failing = False
        self._lock = threading.Lock()

    def _reinit(self) -> None:
        self._lock = threading.Lock()

    def result(self, ok: bool, quiet: bool = False) -> None:
        with self._lock:
            if ok == (not self.failing):
                return
            self.failing = not ok
        if quiet:
            return  # a shutdown in progress says it in its own one line
        if ok:
            logger.info("otel-cb telemetry: %s export works again", self._what)
        else:
            logger.warning(
                "otel-cb telemetry: %s export failed (collector down or unreachable?); "
                "data is dropped until it comes back, and this is said once", self._what,
            )


class _Noticing:
    """What the exporter wrappers share: the notice, giving up at shutdown, a fresh exporter after fork.

    The wrapped OTLP exporter is made by ``factory`` and remade, on first use,
    in a child process after ``fork``: the parent's gRPC channel and HTTP
    connections must not be shared with a child.
    """

    def __init__(self, factory: Callable[[], Any], what: str) -> None:
        self._factory = factory
        self._exporter = factory()
        self._notice = _Notice(what)
        self.what = what
        self._given_up = False
        self._shut = False
        self._forked = False
        self._in_flight = 0
        self._last_active = -_GRPC_SETTLE  # monotonic time an export last started or ended
        self.grpc = type(self._exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
        self.shutting_down = False
        _wrappers.add(self)

    def _inner(self) -> Any:
        if self._forked:
            self._forked = False
            self._exporter = self._factory()
        return self._exporter

    def _export(self, export: Callable[[Any], Any], success: Any) -> bool:
        if self._given_up or (self.shutting_down and self._notice.failing):
            # Known to fail: the final flush of a collector that is down is dropped at once.
            return False
        self._in_flight += 1
        self._last_active = time.monotonic()
        try:
            ok = export(self._inner()) is success
        finally:
            self._in_flight -= 1
            self._last_active = time.monotonic()
        self._notice.result(ok, quiet=self.shutting_down)
        return ok

    def final_attempt_only(self) -> None:
        """Let an export try once more and not retry: what a shutdown needs.

        The OTLP exporters wait between retries on an event their own
        shutdown sets; set now, an attempt that fails ends the export.
        """
        inner = self._exporter
        for event in (getattr(inner, "_shutdown_in_progress", None),
                      getattr(getattr(inner, "_client", None), "_shutdown_event", None)):
            if isinstance(event, threading.Event):
                event.set()

    @property
    def failed(self) -> bool:
        return self._notice.failing or self._given_up

    def give_up(self) -> None:
        """Stop at once: a retry waiting or a request in flight ends, what is left is dropped.

        The exporter's own shutdown runs in a daemon thread, waited for only
        briefly: closing a channel may wait on a lock its stuck export holds.
        """
        self._given_up = True
        closing = threading.Thread(target=self._shutdown_inner, name="otel-cb-exporter-shutdown", daemon=True)
        closing.start()
        closing.join(0.05)

    def _shutdown_inner(self) -> None:
        if self._shut:
            return
        self._shut = True
        if self._forked:
            return  # the parent's exporter: its channel and locks are not this process's to touch
        try:
            self._exporter.shutdown()
        except Exception:
            logger.debug("otel-cb: exporter shutdown raised", exc_info=True)

    def _after_fork(self, grpc_unusable: bool) -> None:
        self._notice._reinit()
        self._in_flight = 0
        self._forked = not self._shut
        if self.grpc and grpc_unusable:
            # gRPC aborts the process if a child uses it after a fork made
            # while a call was in flight: this child drops what it would send.
            self._given_up = self._shut = True


_wrappers: weakref.WeakSet[_Noticing] = weakref.WeakSet()


class _NoticingSpanExporter(_Noticing, SpanExporter):
    def __init__(self, factory: Callable[[], SpanExporter]) -> None:
        super().__init__(factory, "span")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._export(lambda inner: inner.export(spans), SpanExportResult.SUCCESS)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown_inner()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner().force_flush(timeout_millis))


class _NoticingMetricExporter(_Noticing, MetricExporter):
    def __init__(self, factory: Callable[[], MetricExporter]) -> None:
        _Noticing.__init__(self, factory, "metric")
        MetricExporter.__init__(self, self._exporter._preferred_temporality, self._exporter._preferred_aggregation)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        ok = self._export(lambda inner: inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
                          MetricExportResult.SUCCESS)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self._inner().force_flush(timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._shutdown_inner()


class _NoticingLogExporter(_Noticing, LogRecordExporter):
    def __init__(self, factory: Callable[[], LogRecordExporter]) -> None:
        super().__init__(factory, "log")

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        ok = self._export(lambda inner: inner.export(batch), LogRecordExportResult.SUCCESS)
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown_inner()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner().force_flush(timeout_millis))


# -- the bounded shutdown ------------------------------------------------------------------


def _bounded_shutdown(providers: Sequence[Any], exporters: Sequence[_Noticing], budget: float | None = None) -> None:
    """Shut ``providers`` down in parallel, waiting at most ``budget`` seconds in all.

    Each provider flushes in a daemon thread of its own. At the deadline the
    exporters still busy are told to give up (a gRPC call in flight is
    cancelled, a retry's wait ends); a thread still blocked after that (an
    HTTP request to a collector that accepts and never answers) is left to
    die with the process. One line says what was dropped.
    """
    if not providers:
        return
    budget = EXIT_BUDGET if budget is None else budget
    deadline = time.monotonic() + budget
    for exporter in exporters:
        exporter.shutting_down = True
        exporter.final_attempt_only()
    threads = []
    for provider in providers:
        thread = threading.Thread(target=_shutdown_quietly, args=(provider,), name="otel-cb-telemetry-shutdown",
                                  daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = any(thread.is_alive() for thread in threads)
    if late:
        for exporter in exporters:
            exporter.give_up()
        for thread in threads:
            thread.join(0.05)
    dropped = sorted({exporter.what for exporter in exporters if exporter.failed})
    if late or dropped:
        logger.warning("otel-cb telemetry: the last %s could not be delivered at shutdown (collector down, "
                       "or no answer within %.1f s); dropped", _and([f"{what}s" for what in dropped] or ["data"]),
                       budget)


def _shutdown_quietly(provider: Any) -> None:
    try:
        provider.shutdown()
    except Exception:
        logger.debug("otel-cb: telemetry provider shutdown raised", exc_info=True)


class _RetryFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_NOISY_PREFIXES))


_retry_filter = _RetryFilter()


def _mute_exporter_retries() -> None:
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if _retry_filter not in noisy.filters:
            noisy.addFilter(_retry_filter)


_GRPC_SETTLE = 1.0
"""Seconds after an export during which gRPC's own threads may still work on its channel.

gRPC runs its fork handlers only when no thread is inside it; when it skips
them, the child's gRPC state is the parent's mid-operation and the child's
first gRPC call aborts the process (``Check failed`` in the poller). Besides
the export itself, gRPC finishes a call on its own threads (stream cleanup,
transport reads and writes) shortly after the call has returned, where no
Python code can see it: a fork that close to an export is treated as busy.
"""
_grpc_busy_at_fork = False


def _grpc_busy() -> bool:
    """Whether gRPC may be mid-operation in this process: then a child must not use it."""
    ours = [wrapper for wrapper in list(_wrappers) if wrapper.grpc and not wrapper._shut]
    if not ours:
        return False  # nothing of ours would use gRPC in the child
    now = time.monotonic()
    if any(wrapper._in_flight or now - wrapper._last_active < _GRPC_SETTLE for wrapper in ours):
        return True
    # Any other thread inside grpc (the application's own calls, a channel's polling thread).
    me = threading.get_ident()
    for ident, top in sys._current_frames().items():
        frame: FrameType | None = top if ident != me else None
        while frame is not None:
            if str(frame.f_globals.get("__name__", "")).partition(".")[0] == "grpc":
                return True
            frame = frame.f_back
    return False


def _before_fork() -> None:
    global _grpc_busy_at_fork
    _grpc_busy_at_fork = _grpc_busy()


def _after_fork_in_child() -> None:
    wrappers = list(_wrappers)
    for wrapper in wrappers:
        wrapper._after_fork(_grpc_busy_at_fork)
    if _grpc_busy_at_fork:
        logger.warning("otel-cb telemetry: this process was forked while gRPC was busy in its parent (an OTLP/gRPC "
                       "export within the last second, or another thread inside grpc), which gRPC cannot survive; "
                       "it sends no telemetry over gRPC (use http/protobuf for forking servers)")


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
