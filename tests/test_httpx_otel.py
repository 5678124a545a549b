"""Coexistence with opentelemetry-instrumentation-httpx, proven with the in-memory span exporter.

Runs in a subprocess: it installs a global TracerProvider and patches httpx
for the whole process, which other tests must not inherit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .http_server import FaultServer

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = textwrap.dedent("""
    import asyncio, json, sys
    import httpx
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    url = sys.argv[1]
""")

# The order otel-cb-instrument guarantees, applied by hand: our patch first
# (innermost), OpenTelemetry's instrumentor over it.
BY_HAND = textwrap.dedent("""
    import wrapt
    import otel_cb.telemetry
    from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerRegistry, _plugins
    from otel_cb.integrations import httpx as integration
    from otel_cb.plugin import hookimpl
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    otel_cb.telemetry.enable()
    for patch in integration.otel_cb_patches():
        wrapt.wrap_function_wrapper(patch.module, patch.target, patch.wrapper)
    HTTPXClientInstrumentor().instrument()

    class Route:
        @hookimpl
        def otel_cb_select_breaker(self, call):
            return "dependency"

    manager = _plugins.new_manager()
    manager.register(Route(), name="route")
    registry = CircuitBreakerRegistry()
    registry.add(CircuitBreaker("dependency", CircuitBreakerConfig(failure_threshold=1, open_timeout=60)))
    _plugins.activate(_plugins.Active(manager, registry, CircuitBreakerConfig(), {}))
""")

# The same through the engine: otel_cb.instrument() first, as otel-cb-instrument's bootstrap
# does, then OpenTelemetry's instrumentor.
BY_ENGINE = textwrap.dedent("""
    import otel_cb, otel_cb.telemetry
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    otel_cb.telemetry.enable()
    otel_cb.instrument({"circuit_breakers": {"dependency": {
        "failure_threshold": 1, "open_timeout": "60s", "match": {"http": [url]}}}}, disabled=())
    HTTPXClientInstrumentor().instrument()
""")

# After uninstrument(): our layer is gone, OpenTelemetry's stays.
AFTER_UNINSTRUMENT = textwrap.dedent("""
    exporter.clear()
    otel_cb.uninstrument()
    with httpx.Client() as client:
        status = client.get(url).status_code
    spans = exporter.get_finished_spans()
    print(json.dumps({"status": status, "spans": [dict(s.attributes) for s in spans]}))
""")

SCENARIO = textwrap.dedent("""
    def run_sync():
        with httpx.Client() as client:
            client.get(url + "/fails?token=secret")
            try:
                client.get(url + "/rejected?token=secret")
            except httpx.HTTPError as exc:
                print("rejected:", type(exc).__name__, file=sys.stderr)

    async def run_async():
        async with httpx.AsyncClient() as client:
            try:
                await client.get(url + "/rejected-async")
            except httpx.HTTPError as exc:
                print("rejected:", type(exc).__name__, file=sys.stderr)

    run_sync()
    asyncio.run(run_async())
    spans = [
        {"name": s.name, "kind": s.kind.name, "attributes": dict(s.attributes),
         "status": s.status.status_code.name, "events": [[e.name, dict(e.attributes)] for e in s.events]}
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps(spans))
""")


def run_script(body: str, url: str, after: str = "") -> list[Any]:
    """Run PRELUDE + body + SCENARIO + after; return each JSON line printed."""
    result = subprocess.run([sys.executable, "-c", PRELUDE + body + SCENARIO + after, url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith(("[", "{"))]


def status_code(span: dict[str, Any]) -> Any:
    # Old and new HTTP semantic conventions, whichever OTEL_SEMCONV_STABILITY_OPT_IN selects.
    attributes = span["attributes"]
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


def check_spans(spans: list[dict[str, Any]]) -> None:
    client_spans = [span for span in spans if span["kind"] == "CLIENT"]
    assert len(client_spans) == 3, spans
    failed, rejected, rejected_async = client_spans

    # The call that tripped the breaker: its client span says which breaker and
    # carries the transition.
    assert failed["attributes"]["circuit_breaker.name"] == "dependency"
    assert failed["attributes"]["circuit_breaker.state"] == "closed"
    assert status_code(failed) == 500
    change = [attrs for name, attrs in failed["events"] if name == "circuit_breaker.state_change"]
    assert change and change[0]["circuit_breaker.state"] == "open"

    # Rejected requests still have their client span, with status ERROR and the event.
    for span in (rejected, rejected_async):
        assert span["status"] == "ERROR", span
        assert span["attributes"]["circuit_breaker.name"] == "dependency"
        assert span["attributes"]["circuit_breaker.state"] == "open"
        events = dict(span["events"])
        assert "circuit_breaker.rejected" in events, span
        assert events["circuit_breaker.rejected"]["circuit_breaker.retry_after"] > 0
        assert status_code(span) is None

    # Never a path or a query in what otel-cb adds.
    for span in client_spans:
        for name, attrs in span["events"]:
            if name.startswith("circuit_breaker."):
                assert "token" not in json.dumps(attrs) and "rejected" not in json.dumps(attrs)


@pytest.fixture
def server() -> Any:
    with FaultServer("error") as running:
        yield running


def test_breaker_runs_inside_the_opentelemetry_client_span(server: FaultServer) -> None:
    (spans,) = run_script(BY_HAND, server.url)
    check_spans(spans)
    assert server.requests == 1


def test_engine_orders_the_patch_inside_the_client_span_and_uninstrument_removes_only_ours(
        server: FaultServer) -> None:
    spans, after = run_script(BY_ENGINE, server.url, AFTER_UNINSTRUMENT)
    check_spans(spans)
    assert after["status"] == 500
    assert server.requests == 2
    (span,) = after["spans"]
    assert status_code({"attributes": span}) == 500  # OpenTelemetry's wrapper is still there
    assert not any(key.startswith("circuit_breaker.") for key in span)


FALLBACK = textwrap.dedent("""
    import otel_cb, otel_cb.telemetry
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    otel_cb.telemetry.enable()
    otel_cb.instrument({"circuit_breakers": {"dependency": {
        "failure_threshold": 1, "open_timeout": "60s", "match": {"http": [url]},
        "fallback": {"type": "static", "status": 503, "json": {"error": "unavailable"}}}}}, disabled=())
    HTTPXClientInstrumentor().instrument()
    with httpx.Client() as client:
        statuses = [client.get(url).status_code, client.get(url).status_code]
    print(json.dumps({"statuses": statuses, "spans": [
        {"kind": s.kind.name, "events": [[e.name, dict(e.attributes)] for e in s.events]}
        for s in exporter.get_finished_spans()]}))
""")


def test_a_served_fallback_is_marked_on_the_client_span(server: FaultServer) -> None:
    result = subprocess.run([sys.executable, "-c", PRELUDE + FALLBACK, server.url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [500, 503]
    assert server.requests == 1
    served = [span for span in report["spans"] if span["kind"] == "CLIENT"][1]
    names = [name for name, _ in served["events"]]
    assert "circuit_breaker.rejected" in names and "circuit_breaker.fallback" in names
