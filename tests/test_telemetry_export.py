"""Telemetry over the wire: ``configure()`` in a fresh process, a real receiver on loopback.

Global providers can be set once per process, so each scenario runs a small
application in a subprocess configured only through ``OTEL_*`` variables:
a breaker trips and recovers under application spans, then the providers
flush. The test process runs the OTLP receiver (``tests/otlp_receiver.py``)
or scrapes the Prometheus endpoint, and asserts on what arrived.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .otlp_receiver import Received, attributes, grpc_receiver, http_receiver

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    from opentelemetry import trace
    import otel_cb, otel_cb.telemetry as telemetry

    setup = telemetry.configure()
    now = [1000.0]
    breaker = otel_cb.CircuitBreaker(
        "e2e_backend",
        otel_cb.CircuitBreakerConfig(failure_threshold=2, success_threshold=1, open_timeout=5.0),
        clock=lambda: now[0],
    )
    tracer = trace.get_tracer("app")

    def fail():
        raise ConnectionError("down")

    for _ in range(2):
        with tracer.start_as_current_span("fetch_orders"):
            try:
                breaker.call(fail)
            except ConnectionError:
                pass
    with tracer.start_as_current_span("fetch_orders"):
        try:
            breaker.call(lambda: "never")
        except otel_cb.CircuitOpenError:
            pass
    now[0] += 5.0
    with tracer.start_as_current_span("fetch_orders"):
        breaker.call(lambda: "ok")
    EXTRA
    SHUTDOWN
    print("done", flush=True)
""")


def run_app(env: dict[str, str], extra: str = "", timeout: float = 60,
            shutdown: str = "setup.shutdown()") -> subprocess.CompletedProcess[str]:
    full = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    full.update({"OTEL_SERVICE_NAME": "orders", "OTEL_METRIC_EXPORT_INTERVAL": "60000", **env})
    code = APP.replace("EXTRA", extra).replace("SHUTDOWN", shutdown)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0 and "done" in result.stdout, result.stdout + result.stderr
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def values(received: Received, metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """Last value per attribute set (minus the breaker name) of e2e_backend's points."""
    found = {}
    for scope, point in received.metric_points(metric):
        assert scope == "otel_cb"
        attrs = attributes(point.attributes)
        if attrs.pop("circuit_breaker.name") != "e2e_backend":
            continue
        value = point.as_int if point.HasField("as_int") else point.as_double
        found[tuple(sorted(attrs.items()))] = value
    return found


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_metrics_and_log_events_arrive_at_an_otlp_receiver(protocol: str) -> None:
    receiver = grpc_receiver() if protocol == "grpc" else http_receiver()
    with receiver as received:
        result = run_app({"OTEL_EXPORTER_OTLP_ENDPOINT": received.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol})

    spans = [span for span in received.spans() if span.name == "fetch_orders"]
    assert len(spans) == 4
    events = [[(event.name, attributes(event.attributes)) for event in span.events] for span in spans]
    assert events[0] == []
    assert events[1] == [("circuit_breaker.state_change", {
        "circuit_breaker.name": "e2e_backend", "circuit_breaker.previous_state": "closed",
        "circuit_breaker.state": "open", "circuit_breaker.reason": "consecutive_failures"})]
    assert events[2] == [("circuit_breaker.rejected", {
        "circuit_breaker.name": "e2e_backend", "circuit_breaker.state": "open", "circuit_breaker.retry_after": 5.0})]
    assert spans[2].status.code == spans[2].status.STATUS_CODE_ERROR
    assert "e2e_backend" in spans[2].status.message
    assert [(name, attrs["circuit_breaker.state"], attrs["circuit_breaker.reason"]) for name, attrs in events[3]] == [
        ("circuit_breaker.state_change", "half_open", "open_timeout_elapsed"),
        ("circuit_breaker.state_change", "closed", "probe_success"),
    ]
    assert {"service.name": "orders"}.items() <= received.resources()[0].items()

    assert values(received, "circuit_breaker.calls") == {
        (("circuit_breaker.outcome", "success"),): 1, (("circuit_breaker.outcome", "failure"),): 2,
        (("circuit_breaker.outcome", "ignored"),): 0, (("circuit_breaker.outcome", "rejected"),): 1,
    }
    states = values(received, "circuit_breaker.state")
    assert {state: value for ((_, state),), value in states.items() if value} == {"closed": 1}
    assert len(states) == 5
    transitions = values(received, "circuit_breaker.transitions")
    assert sorted(dict(k)["circuit_breaker.state"] for k in transitions) == ["closed", "half_open", "open"]
    assert values(received, "circuit_breaker.time_in_state")[(("circuit_breaker.state", "open"),)] == 5.0
    durations = {attributes(p.attributes)["circuit_breaker.outcome"]: p.count
                 for _, p in received.metric_points("circuit_breaker.call.duration")}
    assert durations == {"success": 1, "failure": 2}
    # The collector was up: no failure notice.
    assert "export failed" not in result.stderr and "could not be delivered" not in result.stderr

    # The same events as log records, each correlated with the span it happened in.
    records = [record for scope, record in received.log_records() if scope == "otel_cb"]
    assert [(record.event_name, attributes(record.attributes).get("circuit_breaker.state")) for record in records] == [
        ("circuit_breaker.state_change", "open"), ("circuit_breaker.rejected", "open"),
        ("circuit_breaker.state_change", "half_open"), ("circuit_breaker.state_change", "closed"),
    ]
    assert attributes(records[0].attributes) == {
        "event.name": "circuit_breaker.state_change", "circuit_breaker.name": "e2e_backend",
        "circuit_breaker.previous_state": "closed", "circuit_breaker.state": "open",
        "circuit_breaker.reason": "consecutive_failures"}
    assert attributes(records[1].attributes) == {
        "event.name": "circuit_breaker.rejected", "circuit_breaker.name": "e2e_backend",
        "circuit_breaker.state": "open", "circuit_breaker.retry_after": 5.0}
    for record, span in zip(records, [spans[1], spans[2], spans[3], spans[3]], strict=True):
        assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
    assert records[0].severity_text == "WARN" and records[3].severity_text == "INFO"


@pytest.mark.parametrize(("protocol", "shutdown"), [
    ("grpc", "setup.shutdown()"),
    ("http/protobuf", "setup.shutdown()"),
    ("grpc", "pass  # the SDK's atexit handlers flush"),
])
def test_a_collector_that_is_down_costs_one_notice_and_never_breaks_the_app(protocol: str, shutdown: str) -> None:
    port = free_port()  # nothing listens there any more
    # The exporters would retry for 30 s per signal at exit; otel-cb gives up
    # on a dead collector after a short grace, so the process ends well within
    # the subprocess timeout (a hang fails the test, it is not a speed check).
    result = run_app({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "30", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "100",
    }, extra="import time; time.sleep(0.5)", timeout=25, shutdown=shutdown)
    assert result.stderr.count("span export failed") <= 1, result.stderr
    assert result.stderr.count("metric export failed") <= 1, result.stderr
    assert "Transient error" not in result.stderr
    assert "Failed to export" not in result.stderr
    assert "circuit breaker 'e2e_backend' closed -> open (consecutive_failures)" in result.stderr
    # Said once while running (when an export had time to fail), once at exit for what was dropped.
    notices = [line for line in result.stderr.splitlines() if "otel-cb telemetry" in line]
    assert sum("could not be delivered at shutdown" in line for line in notices) == 1, result.stderr
    assert len(notices) <= 4, result.stderr


def test_prometheus_pull_endpoint_serves_the_documented_names() -> None:
    port = free_port()
    scrape = textwrap.dedent(f"""
        import urllib.request
        body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        print(body, flush=True)
    """).replace("\n", "\n    ")
    result = run_app({
        "OTEL_METRICS_EXPORTER": "prometheus", "OTEL_TRACES_EXPORTER": "none",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
    }, extra=scrape)
    lines = [line for line in result.stdout.splitlines() if 'circuit_breaker_name="e2e_backend"' in line]
    names = {line.split("{")[0] for line in lines}
    assert names == {
        "circuit_breaker_calls_total", "circuit_breaker_slow_calls_total", "circuit_breaker_state",
        "circuit_breaker_transitions_total", "circuit_breaker_failure_rate", "circuit_breaker_slow_call_rate",
        "circuit_breaker_buffered_calls", "circuit_breaker_fallbacks_total",
        "circuit_breaker_time_in_state_seconds_total",
        "circuit_breaker_call_duration_seconds_bucket", "circuit_breaker_call_duration_seconds_count",
        "circuit_breaker_call_duration_seconds_sum",
    }, result.stdout
    calls = [line for line in lines if line.startswith("circuit_breaker_calls_total")
             and 'circuit_breaker_outcome="rejected"' in line]
    assert len(calls) == 1 and calls[0].endswith(" 1.0")


def test_a_taken_prometheus_port_is_logged_and_the_app_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_app({
            "OTEL_METRICS_EXPORTER": "prometheus", "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(taken.getsockname()[1]),
        })
    assert result.stderr.count("could not serve Prometheus metrics") == 1, result.stderr
