"""Telemetry on by default: an application's own providers get everything, with no otel-cb call.

Each case is a fresh interpreter (global providers can be set once per
process). The application installs SDK providers of its own, in-memory, and
never calls ``otel_cb.telemetry.enable()`` or ``add_duration_histogram()``;
otel-cb reaches them through the API's global (proxy) providers, whether
they were installed before or after the breakers were made. The opt-outs
(``disable()``, ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``) and the events
switch (``OTEL_CB_EVENTS``) are checked the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROVIDERS = textwrap.dedent("""
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    def install():
        global reader, spans, logs
        reader, spans, logs = InMemoryMetricReader(), InMemorySpanExporter(), InMemoryLogRecordExporter()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(tracer_provider)
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        _logs.set_logger_provider(logger_provider)
""")

APP = textwrap.dedent("""
    import json
    import otel_cb
    from opentelemetry import trace

    BEFORE
    breaker = otel_cb.CircuitBreaker("contract", otel_cb.CircuitBreakerConfig(failure_threshold=1))
    AFTER
    tracer = trace.get_tracer("app")

    def fail():
        raise ConnectionError("down")

    breaker.call(lambda: "ok")
    with tracer.start_as_current_span("fetch"):
        try:
            breaker.call(fail)
        except ConnectionError:
            pass
    with tracer.start_as_current_span("fetch_again"):
        try:
            breaker.call(lambda: "never")
        except otel_cb.CircuitOpenError:
            pass
    breaker.reset()      # outside any span: a transition span of its own
    data = reader.get_metrics_data()
    names = sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                    if sm.scope.name == "otel_cb"}) if data else []
    durations = {p.attributes["circuit_breaker.outcome"]: p.count for rm in data.resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics if m.name == "circuit_breaker.call.duration"
                 for p in m.data.data_points} if data else {}
    finished = spans.get_finished_spans()
    print(json.dumps({
        "metrics": names,
        "durations": durations,
        "spans": {s.name: [e.name for e in s.events] for s in finished},
        "logs": [(r.log_record.event_name, r.log_record.attributes["event.name"],
                  [s.name for s in finished if s.context.span_id == r.log_record.span_id])
                 for r in logs.get_finished_logs()],
    }))
""")

EVERY_METRIC = [
    "circuit_breaker.buffered_calls", "circuit_breaker.call.duration", "circuit_breaker.calls",
    "circuit_breaker.failure_rate", "circuit_breaker.fallbacks", "circuit_breaker.slow_call_rate",
    "circuit_breaker.slow_calls", "circuit_breaker.state", "circuit_breaker.time_in_state",
    "circuit_breaker.transitions",
]


def app(before: str = "", after: str = "", env: dict[str, str] | None = None) -> dict[str, object]:
    code = PROVIDERS + APP.replace("BEFORE", before).replace("AFTER", after)
    full = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    full.update(env or {})
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=full)
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)
    return found


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_application_with_its_own_providers_gets_everything_without_any_call(when: str) -> None:
    # Providers installed before the breaker is made, or after (through the API's proxies).
    found = app(before="install()") if when == "before" else app(after="install()")
    assert found["metrics"] == EVERY_METRIC
    assert found["spans"] == {
        "fetch": ["circuit_breaker.state_change"], "fetch_again": ["circuit_breaker.rejected"],
        "circuit_breaker.transition": ["circuit_breaker.state_change"],
    }
    assert found["logs"] == [
        ["circuit_breaker.state_change", "circuit_breaker.state_change", ["fetch"]],
        ["circuit_breaker.rejected", "circuit_breaker.rejected", ["fetch_again"]],
        ["circuit_breaker.state_change", "circuit_breaker.state_change", ["circuit_breaker.transition"]],
    ]
    assert found["durations"] == {"success": 1, "failure": 1}


@pytest.mark.parametrize(("before", "env"), [
    ("install(); import otel_cb.telemetry; otel_cb.telemetry.disable()", {}),
    ("install()", {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx, otel_cb"}),
], ids=["disable", "environment"])
def test_opting_out_reports_nothing_and_the_breaker_still_protects(before: str, env: dict[str, str]) -> None:
    found = app(before=before, env=env)
    assert found == {"metrics": [], "durations": {}, "spans": {"fetch": [], "fetch_again": []}, "logs": []}


def test_enable_wins_over_the_environment() -> None:
    found = app(before="install(); import otel_cb.telemetry; otel_cb.telemetry.enable()",
                env={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_cb"})
    assert found["metrics"] == EVERY_METRIC


@pytest.mark.parametrize(("events", "span_events", "log_events"), [
    ("span", True, False), ("log", False, True), ("span,log", True, True),
])
def test_otel_cb_events_chooses_span_events_log_events_or_both(events: str, span_events: bool,
                                                               log_events: bool) -> None:
    found = app(before="install()", env={"OTEL_CB_EVENTS": events})
    spans = found["spans"]
    assert isinstance(spans, dict)
    assert (spans["fetch"] == ["circuit_breaker.state_change"]) is span_events
    assert "circuit_breaker.transition" in spans  # the transition span itself stays either way
    assert bool(found["logs"]) is log_events


def test_an_unknown_events_value_is_said_once_and_both_stay_on() -> None:
    code = PROVIDERS + "install()\nimport otel_cb\notel_cb.CircuitBreaker('x')\n"
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["OTEL_CB_EVENTS"] = "spans"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0
    assert result.stderr.count("OTEL_CB_EVENTS: 'spans' is not supported; use span, log or span,log") == 1


def test_without_an_sdk_breakers_keep_no_duration_buckets() -> None:
    # No SDK provider: nothing but the API is loaded, and the call path does no extra work.
    code = (
        "import sys, otel_cb\n"
        "b = otel_cb.CircuitBreaker('no_sdk')\n"
        "b.call(lambda: 1)\n"
        "import otel_cb.telemetry as t\n"
        "print(t.is_enabled(), b.snapshot().durations, [m for m in sys.modules if m.startswith('opentelemetry.sdk')])\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout.strip() == "True {} []", result.stderr
