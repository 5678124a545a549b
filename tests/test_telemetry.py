"""Telemetry through in-memory exporters: every instrument, attribute, event and log line.

The global providers can be set once per process, so one module fixture
installs SDK providers (or, if another test module already did, attaches an
in-memory span exporter and metric reader to them). Each test uses breakers
with a unique name and filters what it reads by that name.
"""

from __future__ import annotations

import gc
import itertools
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import otel_cb
import otel_cb.telemetry as telemetry
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState

from .conftest import FakeClock

_names = itertools.count()


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer: trace.Tracer
    logs: InMemoryLogRecordExporter

    def events(self, breaker: str) -> list[ReadableLogRecord]:
        """otel-cb's log events about ``breaker``."""
        return [record for record in self.logs.get_finished_logs()
                if (record.log_record.attributes or {}).get("circuit_breaker.name") == breaker]

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        if data is None:  # nothing observed at all
            return {}
        return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if sm.scope.name == "otel_cb"}

    def points(self, metric: str, breaker: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """Attributes (minus the name) -> value, or the point itself for histograms."""
        found = self.metrics().get(metric)
        if found is None:
            return {}
        result = {}
        for point in found.data.data_points:
            attrs = dict(point.attributes or {})
            if attrs.pop("circuit_breaker.name") != breaker:
                continue
            result[tuple(sorted(attrs.items()))] = getattr(point, "value", point)
        return result

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]


def _install() -> Otel:
    exporter = InMemorySpanExporter()
    tracer_provider = trace.get_tracer_provider()
    if isinstance(tracer_provider, trace.ProxyTracerProvider):
        tracer_provider = TracerProvider()
        trace.set_tracer_provider(tracer_provider)
    if not isinstance(tracer_provider, TracerProvider):
        pytest.skip(f"the global tracer provider is {tracer_provider!r}, not the SDK's")
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = telemetry.add_duration_histogram(InMemoryMetricReader())
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.add_metric_reader(reader)
    else:
        meter_provider = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(meter_provider)
    logs = InMemoryLogRecordExporter()
    logger_provider = _logs.get_logger_provider()
    if not isinstance(logger_provider, LoggerProvider):
        logger_provider = LoggerProvider()
        _logs.set_logger_provider(logger_provider)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    return Otel(exporter, reader, trace.get_tracer("tests"), logs)


_otel: Otel | None = None


@pytest.fixture
def otel() -> Iterator[Otel]:
    global _otel
    if _otel is None:
        _otel = _install()
    telemetry.enable()
    _otel.spans.clear()
    _otel.logs.clear()
    yield _otel
    telemetry.enable(events="span,log")


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


def fail() -> None:
    raise ConnectionError("down")


def key(**attrs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((f"circuit_breaker.{k}", v) for k, v in attrs.items()))


# -- metrics -------------------------------------------------------------------


def test_calls_slow_calls_and_fallbacks_count_by_outcome(otel: Otel, clock: FakeClock) -> None:
    name = unique("counts")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(
        failure_threshold=3, slow_call_duration=1.0, minimum_calls=100, ignore_exceptions=(KeyError,),
    ), clock=clock)

    def slow_success() -> str:
        clock.advance(1.5)
        return "ok"

    def slow_failure() -> None:
        clock.advance(2.0)
        raise ConnectionError("slow and down")

    breaker.call(lambda: "ok")
    breaker.call(slow_success)
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    with pytest.raises(ConnectionError):
        breaker.call(slow_failure)
    assert breaker.call_with_fallback(fail, lambda exc: "cached") == "cached"
    with pytest.raises(ConnectionError):
        breaker.call(fail)  # third consecutive failure: opens
    assert breaker.state is CircuitState.OPEN
    assert breaker.call_with_fallback(lambda: "never", lambda exc: "cached") == "cached"
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")

    def broken_fallback(exc: BaseException) -> str:
        raise RuntimeError("fallback broke")

    with pytest.raises(RuntimeError):
        breaker.call_with_fallback(lambda: "never", broken_fallback)

    assert otel.points("circuit_breaker.calls", name) == {
        key(outcome="success"): 2, key(outcome="failure"): 3, key(outcome="ignored"): 1, key(outcome="rejected"): 3,
    }
    assert otel.points("circuit_breaker.slow_calls", name) == {key(outcome="success"): 1, key(outcome="failure"): 1}
    assert otel.points("circuit_breaker.fallbacks", name) == {key(outcome="success"): 2, key(outcome="failure"): 1,
                                                             key(outcome="refused"): 0}
    metric = otel.metrics()["circuit_breaker.calls"]
    assert metric.data.is_monotonic


def test_state_gauge_has_one_series_per_state_and_follows_transitions(otel: Otel, clock: FakeClock) -> None:
    name = unique("state")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1, open_timeout=10.0), clock=clock)
    assert otel.points("circuit_breaker.state", name) == {
        key(state=s.value): (1 if s is CircuitState.CLOSED else 0) for s in CircuitState
    }
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert otel.points("circuit_breaker.state", name) == {
        key(state=s.value): (1 if s is CircuitState.OPEN else 0) for s in CircuitState
    }


def test_transitions_count_previous_state_state_and_reason(otel: Otel, clock: FakeClock) -> None:
    name = unique("transitions")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1, open_timeout=10.0,
                                                        success_threshold=1), clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        clock.advance(10.0)
        breaker.call(lambda: "probe")
    breaker.force_open()
    breaker.reset()
    assert otel.points("circuit_breaker.transitions", name) == {
        key(previous_state="closed", state="open", reason="consecutive_failures"): 2,
        key(previous_state="open", state="half_open", reason="open_timeout_elapsed"): 2,
        key(previous_state="half_open", state="closed", reason="probe_success"): 2,
        key(previous_state="closed", state="forced_open", reason="force_open"): 1,
        key(previous_state="forced_open", state="closed", reason="reset"): 1,
    }


def test_window_gauges_report_rates_and_buffered_calls(otel: Otel, clock: FakeClock) -> None:
    name = unique("window")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(
        failure_threshold=None, failure_rate_threshold=0.9, slow_call_duration=1.0, slow_call_rate_threshold=0.9,
        minimum_calls=100,
    ), clock=clock)

    def slow() -> None:
        clock.advance(1.0)

    breaker.call(slow)
    breaker.call(lambda: None)
    breaker.call(lambda: None)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert otel.points("circuit_breaker.failure_rate", name) == {(): 0.25}
    assert otel.points("circuit_breaker.slow_call_rate", name) == {(): 0.25}
    assert otel.points("circuit_breaker.buffered_calls", name) == {(): 4}
    assert otel.metrics()["circuit_breaker.failure_rate"].unit == "1"


def test_time_in_state_counts_seconds_per_state(otel: Otel, clock: FakeClock) -> None:
    name = unique("time")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1, open_timeout=30.0), clock=clock)
    clock.advance(12.0)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(5.0)
    points = otel.points("circuit_breaker.time_in_state", name)
    assert points[key(state="closed")] == pytest.approx(12.0)
    assert points[key(state="open")] == pytest.approx(5.0)
    assert points[key(state="half_open")] == 0.0
    metric = otel.metrics()["circuit_breaker.time_in_state"]
    assert metric.unit == "s" and metric.data.is_monotonic


def test_call_duration_histogram_buckets_seconds_by_outcome(otel: Otel, clock: FakeClock) -> None:
    name = unique("durations")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=None, ignore_exceptions=(KeyError,)),
                             clock=clock)

    def takes(seconds: float, exc: type[Exception] | None = None) -> None:
        clock.advance(seconds)
        if exc is not None:
            raise exc("x")

    breaker.call(takes, 0.003)
    breaker.call(takes, 0.2)
    breaker.call(takes, 0.2)
    with pytest.raises(ConnectionError):
        breaker.call(takes, 2.0, ConnectionError)
    with pytest.raises(KeyError):
        breaker.call(takes, 0.25, KeyError)
    points = otel.points("circuit_breaker.call.duration", name)
    assert set(points) == {key(outcome="success"), key(outcome="failure"), key(outcome="ignored")}
    success = points[key(outcome="success")]
    assert success.count == 3
    assert success.sum == pytest.approx(0.403)
    bounds = list(success.explicit_bounds)
    assert bounds[:6] == [0.005, 0.01, 0.025, 0.05, 0.075, 0.1]
    assert success.bucket_counts[0] == 1  # (.., 0.005]
    assert success.bucket_counts[bounds.index(0.25)] == 2  # (0.1, 0.25]
    assert sum(success.bucket_counts) == 3
    failure = points[key(outcome="failure")]
    assert (failure.count, failure.bucket_counts[bounds.index(2.5)]) == (1, 1)
    assert points[key(outcome="ignored")].bucket_counts[bounds.index(0.25)] == 1  # upper bound inclusive
    metric = otel.metrics()["circuit_breaker.call.duration"]
    assert metric.unit == "s"
    assert metric.data.aggregation_temporality.name == "CUMULATIVE"


def test_breakers_sharing_a_name_report_one_series_that_adds_up(otel: Otel, clock: FakeClock) -> None:
    name = unique("twins")
    first, second = CircuitBreaker(name, clock=clock), CircuitBreaker(name, clock=clock)
    first.call(lambda: None)
    second.call(lambda: None)
    second.call(lambda: None)
    assert otel.points("circuit_breaker.calls", name)[key(outcome="success")] == 3
    assert otel.points("circuit_breaker.call.duration", name)[key(outcome="success")].count == 3
    assert sum(otel.points("circuit_breaker.state", name).values()) == 1


def test_breakers_made_before_enable_are_reported(otel: Otel, clock: FakeClock) -> None:
    telemetry.disable()
    name = unique("early")
    breaker = CircuitBreaker(name, clock=clock)
    telemetry.enable()
    breaker.call(lambda: None)
    assert otel.points("circuit_breaker.calls", name)[key(outcome="success")] == 1
    assert otel.points("circuit_breaker.call.duration", name)[key(outcome="success")].count == 1


class _SharedStub:
    """The part of a shared-state backend telemetry reads (``RedisSharedState`` has the same property)."""

    running_locally = False

    def on_outcome(self, failed: bool, slow: bool) -> None: ...
    def on_transition(self, event: object) -> None: ...
    def acquire_probe(self) -> bool:
        return True

    def release_probe(self) -> None: ...


def test_breakers_on_local_state_are_marked(otel: Otel, clock: FakeClock) -> None:
    shared_name, local_name = unique("shared"), unique("local")
    shared = CircuitBreaker(shared_name, clock=clock)
    plain = CircuitBreaker(local_name, clock=clock)
    stub = _SharedStub()
    shared._shared = stub
    assert otel.points("circuit_breaker.shared_state.local", shared_name) == {(): 0}
    stub.running_locally = True  # the store became unreachable
    assert otel.points("circuit_breaker.shared_state.local", shared_name) == {(): 1}
    assert otel.points("circuit_breaker.shared_state.local", local_name) == {}
    del plain


def test_an_idle_breaker_keeps_its_counts_and_its_clock_between_collections(otel: Otel, clock: FakeClock) -> None:
    name = unique("idle")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=2, window_size=60.0), clock=clock)
    breaker.call(lambda: None)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert otel.points("circuit_breaker.calls", name)[key(outcome="failure")] == 1
    assert otel.points("circuit_breaker.buffered_calls", name) == {(): 2}
    clock.advance(100.0)  # nothing happens: the counts stand, the time in state grows, the window ages
    assert otel.points("circuit_breaker.calls", name) == {
        key(outcome="success"): 1, key(outcome="failure"): 1, key(outcome="ignored"): 0, key(outcome="rejected"): 0}
    assert otel.points("circuit_breaker.call.duration", name)[key(outcome="success")].count == 1
    assert otel.points("circuit_breaker.time_in_state", name)[key(state="closed")] == pytest.approx(100.0)
    assert otel.points("circuit_breaker.buffered_calls", name) == {(): 0}
    assert otel.points("circuit_breaker.failure_rate", name) == {(): 0.0}
    breaker.call(lambda: None)  # each kind of change is seen at the next collection
    assert otel.points("circuit_breaker.calls", name)[key(outcome="success")] == 2
    breaker.force_open()
    assert otel.points("circuit_breaker.state", name)[key(state="forced_open")] == 1
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)  # counted without the breaker's lock
    assert otel.points("circuit_breaker.calls", name)[key(outcome="rejected")] == 1
    breaker.count_fallback("refused")
    assert otel.points("circuit_breaker.fallbacks", name)[key(outcome="refused")] == 1
    clock.advance(7.0)
    points = otel.points("circuit_breaker.time_in_state", name)
    assert (points[key(state="closed")], points[key(state="forced_open")]) == (pytest.approx(100.0), pytest.approx(7.0))


def test_a_new_breaker_under_an_old_name_reports_its_own_counts(otel: Otel, clock: FakeClock) -> None:
    name = unique("again")
    first = CircuitBreaker(name, CircuitBreakerConfig(ignore_exceptions=(KeyError,)), clock=clock)
    first.call(lambda: None)
    first.call(lambda: None)
    assert otel.points("circuit_breaker.calls", name)[key(outcome="success")] == 2
    del first
    gc.collect()
    second = CircuitBreaker(name, CircuitBreakerConfig(ignore_exceptions=(KeyError,)), clock=clock)
    second.call(lambda: None)
    with pytest.raises(KeyError):
        second.call(lambda: {}["missing"])  # as much activity as the first one had, other counts
    calls = otel.points("circuit_breaker.calls", name)
    assert (calls[key(outcome="success")], calls[key(outcome="ignored")]) == (1, 1)


def test_health_checks_count_by_outcome_for_breakers_with_a_check(otel: Otel, clock: FakeClock) -> None:
    checked_name, plain_name = unique("checked"), unique("unchecked")
    healthy = [True]
    checked = CircuitBreaker(checked_name, clock=clock, health_check=lambda: healthy[0])
    plain = CircuitBreaker(plain_name, clock=clock)
    assert otel.points("circuit_breaker.health_checks", checked_name) == {
        key(outcome="passed"): 0, key(outcome="failed"): 0}
    assert checked.check_health() is True
    healthy[0] = False
    assert checked.check_health() is False
    assert checked.check_health() is False
    assert otel.points("circuit_breaker.health_checks", checked_name) == {
        key(outcome="passed"): 1, key(outcome="failed"): 2}
    metric = otel.metrics()["circuit_breaker.health_checks"]
    assert metric.unit == "{check}" and metric.data.is_monotonic
    # Without a check the counts are always 0: no series.
    assert otel.points("circuit_breaker.health_checks", plain_name) == {}
    del plain


def test_instruments_use_scope_otel_cb_with_the_package_version(otel: Otel, clock: FakeClock) -> None:
    breaker = CircuitBreaker(unique("scope"), clock=clock)
    breaker.force_open()
    data = otel.reader.get_metrics_data()
    assert data is not None
    scopes = {sm.scope.name: sm.scope.version for rm in data.resource_metrics for sm in rm.scope_metrics}
    assert scopes["otel_cb"] == otel_cb.__version__
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics if sm.scope.name == "otel_cb"
             for m in sm.metrics}
    assert names >= {
        "circuit_breaker.calls", "circuit_breaker.slow_calls", "circuit_breaker.state", "circuit_breaker.transitions",
        "circuit_breaker.failure_rate", "circuit_breaker.slow_call_rate", "circuit_breaker.buffered_calls",
        "circuit_breaker.fallbacks", "circuit_breaker.time_in_state",
    }


def test_disable_stops_observations_and_events(otel: Otel, clock: FakeClock) -> None:
    name = unique("disabled")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1), clock=clock)
    telemetry.disable()
    telemetry.disable()  # idempotent
    assert not telemetry.is_enabled()
    with otel.tracer.start_as_current_span("client"), pytest.raises(ConnectionError):
        breaker.call(fail)
    assert otel.points("circuit_breaker.calls", name) == {}
    assert otel.points("circuit_breaker.call.duration", name) == {}
    assert otel.finished("client")[0].events == ()
    telemetry.enable()
    telemetry.enable()
    assert otel.points("circuit_breaker.calls", name) == {key(outcome=o): n for o, n in
                                                          [("success", 0), ("failure", 1), ("ignored", 0),
                                                           ("rejected", 0)]}


# -- spans ---------------------------------------------------------------------


def test_state_change_event_lands_on_the_current_span(otel: Otel, clock: FakeClock) -> None:
    name = unique("event")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=2), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    with otel.tracer.start_as_current_span("client"), pytest.raises(ConnectionError):
        breaker.call(fail)
    (span,) = otel.finished("client")
    (event,) = span.events
    assert event.name == "circuit_breaker.state_change"
    assert dict(event.attributes or {}) == {
        "circuit_breaker.name": name, "circuit_breaker.previous_state": "closed",
        "circuit_breaker.state": "open", "circuit_breaker.reason": "consecutive_failures",
    }
    assert otel.finished("circuit_breaker.transition") == []


def test_rejected_call_adds_an_event_and_sets_error_status(otel: Otel, clock: FakeClock) -> None:
    name = unique("rejected")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1, open_timeout=30.0), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(10.0)
    with otel.tracer.start_as_current_span("client"), pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")
    (span,) = otel.finished("client")
    (event,) = span.events
    assert event.name == "circuit_breaker.rejected"
    assert dict(event.attributes or {}) == {
        "circuit_breaker.name": name, "circuit_breaker.state": "open", "circuit_breaker.retry_after": 20.0,
    }
    assert span.status.status_code is StatusCode.ERROR
    assert name in (span.status.description or "")
    assert span.attributes is not None and span.attributes["circuit_breaker.name"] == name


def test_rejection_while_forced_open_has_no_retry_after(otel: Otel, clock: FakeClock) -> None:
    name = unique("forced")
    breaker = CircuitBreaker(name, clock=clock)
    breaker.force_open()
    with otel.tracer.start_as_current_span("client"), pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")
    (event,) = otel.finished("client")[0].events
    assert dict(event.attributes or {}) == {"circuit_breaker.name": name, "circuit_breaker.state": "forced_open"}


def test_fallback_event_carries_its_outcome(otel: Otel, clock: FakeClock) -> None:
    name = unique("fallback")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=5), clock=clock)
    with otel.tracer.start_as_current_span("client"):
        assert breaker.call_with_fallback(fail, lambda exc: "cached") == "cached"
    (event,) = otel.finished("client")[0].events
    assert event.name == "circuit_breaker.fallback"
    assert dict(event.attributes or {}) == {"circuit_breaker.name": name, "circuit_breaker.outcome": "success"}


def test_transition_outside_any_span_gets_a_short_span_of_its_own(otel: Otel, clock: FakeClock) -> None:
    name = unique("manual")
    breaker = CircuitBreaker(name, clock=clock)
    breaker.force_open()
    (span,) = otel.finished("circuit_breaker.transition")
    assert span.instrumentation_scope is not None
    assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == ("otel_cb", otel_cb.__version__)
    assert span.parent is None
    (event,) = span.events
    expected = {"circuit_breaker.name": name, "circuit_breaker.previous_state": "closed",
                "circuit_breaker.state": "forced_open", "circuit_breaker.reason": "force_open"}
    assert event.name == "circuit_breaker.state_change"
    assert dict(event.attributes or {}) == expected
    assert dict(span.attributes or {}) == expected


def test_annotate_current_span_puts_name_and_state_on_the_client_span(otel: Otel, clock: FakeClock) -> None:
    name = unique("annotated")
    breaker = CircuitBreaker(name, clock=clock)
    telemetry.annotate_current_span(breaker)  # no span: a no-op, not an error
    with otel.tracer.start_as_current_span("client"):
        telemetry.annotate_current_span(breaker)
    with otel.tracer.start_as_current_span("probe"):
        telemetry.annotate_current_span(breaker, CircuitState.HALF_OPEN)
    assert dict(otel.finished("client")[0].attributes or {}) == {
        "circuit_breaker.name": name, "circuit_breaker.state": "closed"}
    assert dict(otel.finished("probe")[0].attributes or {})["circuit_breaker.state"] == "half_open"


# -- log events (the Logs API) ---------------------------------------------------


def test_state_change_is_also_a_log_event_correlated_with_the_current_span(otel: Otel, clock: FakeClock) -> None:
    name = unique("log_event")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1), clock=clock)
    with otel.tracer.start_as_current_span("client") as span, pytest.raises(ConnectionError):
        breaker.call(fail)
    (record,) = otel.events(name)
    log = record.log_record
    assert log.event_name == "circuit_breaker.state_change"
    assert dict(log.attributes or {}) == {
        "event.name": "circuit_breaker.state_change", "circuit_breaker.name": name,
        "circuit_breaker.previous_state": "closed", "circuit_breaker.state": "open",
        "circuit_breaker.reason": "consecutive_failures"}
    assert (log.trace_id, log.span_id) == (span.get_span_context().trace_id, span.get_span_context().span_id)
    assert (log.severity_text, log.body) == ("WARN", f"circuit breaker {name!r} closed -> open (consecutive_failures)")
    assert record.instrumentation_scope is not None and record.instrumentation_scope.name == "otel_cb"


def test_rejected_log_events_are_rate_limited_per_breaker(
    otel: Otel, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_cb.telemetry import _core

    monkeypatch.setattr(_core.telemetry.rejections, "clock", clock)
    first, second = CircuitBreaker(unique("limited"), clock=clock), CircuitBreaker(unique("limited"), clock=clock)
    first.force_open()
    second.force_open()

    def rejected() -> int:
        return sum(r.log_record.event_name == "circuit_breaker.rejected" for r in otel.events(first.name))

    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            first.call(lambda: None)
    with pytest.raises(CircuitOpenError):
        second.call(lambda: None)
    assert rejected() == 1
    assert [r.log_record.event_name for r in otel.events(second.name)][-1] == "circuit_breaker.rejected"
    clock.advance(_core.REJECTED_EVENT_INTERVAL)
    with pytest.raises(CircuitOpenError):
        first.call(lambda: None)
    assert rejected() == 2
    (record,) = [r for r in otel.events(first.name) if r.log_record.event_name == "circuit_breaker.rejected"][:1]
    assert dict(record.log_record.attributes or {}) == {
        "event.name": "circuit_breaker.rejected", "circuit_breaker.name": first.name,
        "circuit_breaker.state": "forced_open"}


@pytest.mark.parametrize(("events", "span_events", "log_events"), [("span", 1, 0), ("log", 0, 1)])
def test_events_choose_span_events_or_log_events(
    otel: Otel, clock: FakeClock, events: str, span_events: int, log_events: int
) -> None:
    telemetry.enable(events=events)
    name = unique("switch")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1), clock=clock)
    with otel.tracer.start_as_current_span("client"), pytest.raises(ConnectionError):
        breaker.call(fail)
    assert len(otel.finished("client")[0].events) == span_events
    assert len(otel.events(name)) == log_events


def test_enable_rejects_an_unknown_events_value() -> None:
    with pytest.raises(ValueError, match="events: 'spans' is not supported; use span, log or span,log"):
        telemetry.enable(events="spans")


# -- logs ----------------------------------------------------------------------


def test_transitions_are_logged_opening_at_warning_closing_at_info(
    otel: Otel, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("logged")
    breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1, success_threshold=1, open_timeout=1.0),
                             clock=clock)
    with caplog.at_level(logging.INFO, logger="otel_cb"):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        clock.advance(1.0)
        breaker.call(lambda: None)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "otel_cb" and name in r.getMessage()]
    assert lines == [
        (logging.WARNING, f"circuit breaker {name!r} closed -> open (consecutive_failures)"),
        (logging.INFO, f"circuit breaker {name!r} open -> half_open (open_timeout_elapsed)"),
        (logging.INFO, f"circuit breaker {name!r} half_open -> closed (probe_success)"),
    ]


# -- Prometheus names ------------------------------------------------------------


def test_prometheus_exporter_names(otel: Otel, clock: FakeClock) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    reader = telemetry.add_duration_histogram(PrometheusMetricReader(registry=registry))
    provider = metrics.get_meter_provider()
    assert isinstance(provider, MeterProvider)
    provider.add_metric_reader(reader)
    try:
        name = unique("prom")
        breaker = CircuitBreaker(name, CircuitBreakerConfig(failure_threshold=1), clock=clock)
        breaker.call_with_fallback(fail, lambda exc: None)
        text = generate_latest(registry).decode()
    finally:
        provider.remove_metric_reader(reader)
    exposed = {line.split("{")[0] for line in text.splitlines() if name in line and not line.startswith("#")}
    assert exposed == {
        "circuit_breaker_calls_total", "circuit_breaker_slow_calls_total", "circuit_breaker_state",
        "circuit_breaker_transitions_total", "circuit_breaker_failure_rate",
        "circuit_breaker_slow_call_rate", "circuit_breaker_buffered_calls",
        "circuit_breaker_fallbacks_total", "circuit_breaker_time_in_state_seconds_total",
        "circuit_breaker_call_duration_seconds_bucket", "circuit_breaker_call_duration_seconds_count",
        "circuit_breaker_call_duration_seconds_sum",
    }, text


# -- fresh processes (global providers not yet set) ----------------------------------


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stripped stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()




def test_without_an_sdk_everything_is_a_no_op() -> None:
    code = (
        "import sys, otel_cb, otel_cb.telemetry as t\n"
        "t.enable()\n"
        "b = otel_cb.CircuitBreaker('no_sdk', otel_cb.CircuitBreakerConfig(failure_threshold=1))\n"
        "try:\n    b.call(lambda: 1 / 0)\nexcept ZeroDivisionError:\n    pass\n"
        "b.force_open(); b.reset(); t.annotate_current_span(b)\n"
        "print(b.state.value, [m for m in sys.modules if m.startswith('opentelemetry.sdk')])\n"
    )
    assert python(code) == "closed []"


# -- configure() with providers already installed ----------------------------------


def test_configure_never_replaces_installed_providers(otel: Otel) -> None:
    tracer_provider, meter_provider = trace.get_tracer_provider(), metrics.get_meter_provider()
    setup = telemetry.configure(environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert (setup.tracer_provider, setup.meter_provider, setup.metric_reader) == (None, None, None)
    assert trace.get_tracer_provider() is tracer_provider
    assert metrics.get_meter_provider() is meter_provider
    assert telemetry.is_enabled()


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("OTEL_TRACES_EXPORTER", "zipkin", "otlp, console, none"),
    ("OTEL_METRICS_EXPORTER", "otlp,statsd", "otlp, prometheus, console, none"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "grpc, http/protobuf"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "thrift", "grpc, http/protobuf"),
])
def test_configure_rejects_unsupported_values_naming_variable_value_and_choices(
    otel: Otel, variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ValueError) as info:
        telemetry.configure(environ={variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert repr(value.split(",")[-1]) in message
    assert allowed in message


def test_configure_does_nothing_when_the_sdk_is_disabled(otel: Otel) -> None:
    setup = telemetry.configure(environ={"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "bogus"})
    assert (setup.tracer_provider, setup.meter_provider) == (None, None)


# -- failures stay contained ---------------------------------------------------------


def test_a_failing_exporter_is_noticed_once_and_its_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from otel_cb.telemetry._configure import _NoticingSpanExporter

    class Flaky(SpanExporter):
        results = [SpanExportResult.FAILURE] * 3 + [SpanExportResult.SUCCESS] * 2 + [SpanExportResult.FAILURE]

        def export(self, spans: Any) -> SpanExportResult:
            return self.results.pop(0)

    exporter = _NoticingSpanExporter(Flaky)
    with caplog.at_level(logging.INFO, logger="otel_cb"):
        outcomes = [exporter.export([]) for _ in range(6)]
    assert outcomes.count(SpanExportResult.FAILURE) == 4
    notices = [r.getMessage() for r in caplog.records if r.name == "otel_cb"]
    assert len(notices) == 3
    assert "span export failed" in notices[0] and "works again" in notices[1] and "span export failed" in notices[2]


def test_a_broken_collection_costs_only_otel_cbs_metrics(
    otel: Otel, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from otel_cb.telemetry import _metrics

    def broken(source: _metrics.Source) -> None:
        raise RuntimeError("bug")

    name = unique("broken")
    breaker = CircuitBreaker(name, clock=clock)
    breaker.call(lambda: None)
    metrics.get_meter("tests").create_counter("app.requests").add(1)
    assert otel.points("circuit_breaker.calls", name)[key(outcome="success")] == 1
    monkeypatch.setattr(_metrics._collector, "collect", broken)
    with caplog.at_level(logging.ERROR, logger="otel_cb"):
        for _ in range(2):
            data = otel.reader.get_metrics_data()
            assert data is not None
            names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
            assert "app.requests" in names  # the application's metrics go on
    assert [r.getMessage() for r in caplog.records if "could not export" in r.getMessage()] == [
        "otel-cb could not export its metrics; other metrics go on"]


def test_enable_before_the_providers_are_installed_reports_once_they_are() -> None:
    code = (
        "import otel_cb, otel_cb.telemetry as t\n"
        "t.enable()\n"
        "b = otel_cb.CircuitBreaker('early_bird')\n"
        "from opentelemetry import metrics, trace\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "reader = t.add_duration_histogram(InMemoryMetricReader())\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
        "spans = InMemorySpanExporter(); provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(spans)); trace.set_tracer_provider(provider)\n"
        "b.call(lambda: None); b.force_open()\n"
        "data = reader.get_metrics_data()\n"
        "names = sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics})\n"
        "print(len(names), [s.name for s in spans.get_finished_spans()])\n"
    )
    assert python(code) == "10 ['circuit_breaker.transition']"  # every instrument


# -- the start-up notice -----------------------------------------------------------------


@pytest.mark.parametrize(("env", "sentence"), [
    ({}, "otel-cb sends traces, metrics and logs over OTLP/gRPC to http://localhost:4317."),
    ({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "9500",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:secret@collector:4317/path?token=x"},
     "otel-cb sends traces and logs over OTLP/gRPC to https://collector:4317 and serves metrics for Prometheus "
     "at http://localhost:9500/metrics."),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "console",
      "OTEL_LOGS_EXPORTER": "none"},
     "otel-cb prints traces to standard output and sends metrics over OTLP/HTTP to http://localhost:4318."),
])
def test_the_start_up_notice_is_one_plain_sentence(env: dict[str, str], sentence: str) -> None:
    from otel_cb.telemetry._configure import TelemetrySetup, describe_destinations

    installed: Any = object()
    setup = TelemetrySetup(installed, installed, None, installed)
    assert describe_destinations(setup, env) == sentence
    assert describe_destinations(TelemetrySetup(None, None, None), env) is None
