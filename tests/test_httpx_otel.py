"""Coexistence with opentelemetry-instrumentation-httpx, proven with the in-memory span exporter.

Runs in a subprocess: it installs a global TracerProvider and patches httpx
for the whole process, which other tests must not inherit. Run as
``python -m tests.test_httpx_otel URL`` this module is the instrument/uninstrument
orders scenario itself: it prints one JSON line with what it saw. ``run_orders``,
``check_orders`` and ``run_orders_script`` are shared with the requests tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from .http_server import FaultServer

ROOT = Path(__file__).resolve().parent.parent
ORDERS = ("otel_first", "otel_cb_first")

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
        wrapt.wrap_function_wrapper(patch.module, patch.target, patch.load_wrapper())
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


# -- every instrument/uninstrument order, twice over, in one process --------------------------


def in_order(first: str, opentelemetry_step: Callable[[], Any], otel_cb_step: Callable[[], Any]) -> list[Any]:
    """The two steps, OpenTelemetry's first when ``first`` is ``"otel_first"`` (one of ``ORDERS``)."""
    return [opentelemetry_step, otel_cb_step] if first == "otel_first" else [otel_cb_step, opentelemetry_step]


def in_memory_tracing(integration: str) -> tuple[Any, Any, set[str]]:
    """Install a global TracerProvider exporting to memory and enable otel-cb's telemetry (once per process).

    Returns the exporter, the provider and the otel-cb plugins to disable so only ``integration`` patches.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import otel_cb.telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    otel_cb.telemetry.enable()
    return exporter, provider, {ep.name for ep in entry_points(group="otel_cb") if ep.name != integration}


def run_orders(integration: str, url: str, instrumentor: Callable[[], Any], call: Callable[[], None]) -> None:
    """In this (fresh) process: each of the four orders twice over; print what each cycle saw as JSON.

    ``integration`` names otel-cb's integration (the only one enabled), ``instrumentor()``
    makes OpenTelemetry's instrumentor and ``call()`` makes one call to ``url``. Instrumenting
    again after both uninstrumented is the second round.
    """
    import importlib

    import wrapt

    import otel_cb
    from otel_cb import registry

    exporter, _, disabled = in_memory_tracing(integration)
    config = {"circuit_breakers": {"dependency": {
        "failure_threshold": 100, "open_timeout": "60s", "match": {"http": [url]}}}}
    patches = importlib.import_module(f"otel_cb.integrations.{integration}").otel_cb_patches()
    originals = {(p.module, p.target): wrapt.resolve_path(p.module, p.target)[2] for p in patches}

    def observe(breaker: Any) -> dict[str, int]:
        exporter.clear()
        before = sum(breaker.snapshot().calls.values())
        call()
        spans = [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]
        return {"spans": len(spans), "named": sum(bool(s.get("circuit_breaker.name")) for s in spans),
                "protected": sum(breaker.snapshot().calls.values()) - before}

    seen: dict[str, Any] = {}
    for round_ in (1, 2):
        for first in ORDERS:
            for unfirst in ORDERS:
                otel = instrumentor()
                for step in in_order(first, otel.instrument, lambda: otel_cb.instrument(config, disabled=disabled)):
                    step()
                breaker = registry.get("dependency")
                both = observe(breaker)
                after = []
                for step in in_order(unfirst, otel.uninstrument, otel_cb.uninstrument):
                    step()
                    after.append(observe(breaker))
                seen[f"{round_}/{first}/{unfirst}"] = {
                    "both": both, "after_one": after[0], "after_both": after[1],
                    # Every patched attribute that is not, by identity, what it was before anything patched it.
                    "not_original": [f"{module}.{target}" for (module, target), original in originals.items()
                                     if wrapt.resolve_path(module, target)[2] is not original]}
    print(json.dumps(seen))


def check_orders(seen: dict[str, Any], per_call: int = 1) -> None:
    """Each cycle: OpenTelemetry's span around our breaker, either side alone working, then the originals."""
    assert len(seen) == 8, list(seen)
    n = per_call
    for key, cycle in seen.items():
        unfirst = key.rsplit("/", 1)[1]
        # OpenTelemetry's span is made around our breaker: it carries the breaker's name.
        assert cycle["both"] == {"spans": n, "named": n, "protected": n}, (key, cycle)
        if unfirst == "otel_first":
            assert cycle["after_one"] == {"spans": 0, "named": 0, "protected": n}, (key, cycle)
        else:
            assert cycle["after_one"] == {"spans": n, "named": 0, "protected": 0}, (key, cycle)
        assert cycle["after_both"] == {"spans": 0, "named": 0, "protected": 0}, (key, cycle)
        assert cycle["not_original"] == [], (key, cycle)


def run_orders_script(module: str, url: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", module, url], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "OTEL_SDK_DISABLED": "false"})
    assert result.returncode == 0, result.stdout + result.stderr
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen


def test_every_instrument_order_keeps_the_breaker_inside_and_restores_the_originals() -> None:
    with FaultServer("healthy") as running:
        seen = run_orders_script("tests.test_httpx_otel", running.url)
    check_orders(seen, per_call=2)


def _main(url: str) -> None:  # pragma: no cover - runs in the subprocess
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    def call() -> None:
        # Both transports (two requests): the sync and the async one are patched separately, by both sides.
        with httpx.Client() as client:
            client.get(url).raise_for_status()

        async def call_async() -> None:
            async with httpx.AsyncClient() as client:
                (await client.get(url)).raise_for_status()
        asyncio.run(call_async())

    run_orders("httpx", url, HTTPXClientInstrumentor, call)


if __name__ == "__main__":
    _main(sys.argv[1])
