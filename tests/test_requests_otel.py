"""Coexistence with opentelemetry-instrumentation-requests, in both instrumentation orders, and under
``otel-cb-instrument``.

Runs in subprocesses: they install a global TracerProvider and patch requests
for the whole process, which other tests must not inherit. Run as
``python -m tests.test_requests_otel URL`` this module is the instrument/uninstrument
orders scenario (``tests.test_httpx_otel.run_orders``): it prints one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .http_server import FaultServer
from .test_httpx_otel import check_orders, run_orders, run_orders_script, status_code

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = textwrap.dedent("""
    import json, sys
    import requests
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    import otel_cb, otel_cb.telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    url = sys.argv[1]
    otel_cb.telemetry.enable()
    CONFIG = {"circuit_breakers": {"dependency": {
        "failure_threshold": 1, "open_timeout": "60s", "match": {"http": [url]}}}}
""")

OURS_FIRST = "otel_cb.instrument(CONFIG, disabled=())\nRequestsInstrumentor().instrument()\n"
THEIRS_FIRST = "RequestsInstrumentor().instrument()\notel_cb.instrument(CONFIG, disabled=())\n"

SCENARIO = textwrap.dedent("""
    with requests.Session() as session:
        session.get(url + "/fails?token=secret")
        try:
            session.get(url + "/rejected?token=secret")
        except requests.RequestException as exc:
            print("rejected:", type(exc).__name__, file=sys.stderr)
    spans = [
        {"name": s.name, "kind": s.kind.name, "attributes": dict(s.attributes),
         "status": s.status.status_code.name, "events": [[e.name, dict(e.attributes)] for e in s.events]}
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps(spans))
    exporter.clear()
    otel_cb.uninstrument()
    status = requests.get(url).status_code
    print(json.dumps({"status": status, "spans": [dict(s.attributes) for s in exporter.get_finished_spans()]}))
""")


@pytest.fixture
def server() -> Any:
    with FaultServer("error") as running:
        yield running


@pytest.mark.parametrize("order", [OURS_FIRST, THEIRS_FIRST], ids=["otel-cb first", "opentelemetry first"])
def test_breaker_runs_inside_the_client_span_in_either_order(server: FaultServer, order: str) -> None:
    result = subprocess.run([sys.executable, "-c", PRELUDE + order + SCENARIO, server.url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rejected: RequestsCircuitOpenError" in result.stderr
    spans, after = [json.loads(line) for line in result.stdout.strip().splitlines()]
    client_spans = [span for span in spans if span["kind"] == "CLIENT"]
    assert len(client_spans) == 2, spans
    failed, rejected = client_spans
    assert failed["attributes"]["circuit_breaker.name"] == "dependency"
    assert failed["attributes"]["circuit_breaker.state"] == "closed"
    assert status_code(failed) == 500
    change = [attrs for name, attrs in failed["events"] if name == "circuit_breaker.state_change"]
    assert change and change[0]["circuit_breaker.state"] == "open"
    # The rejected request still has its client span, in error, with the event.
    assert rejected["status"] == "ERROR"
    assert rejected["attributes"]["circuit_breaker.state"] == "open"
    events = dict(rejected["events"])
    assert events["circuit_breaker.rejected"]["circuit_breaker.retry_after"] > 0
    assert status_code(rejected) is None
    assert "token" not in json.dumps([span["events"] for span in client_spans])
    # uninstrument() removed our layer only: OpenTelemetry's span is still made, without our attributes.
    assert after["status"] == 500
    (span,) = after["spans"]
    assert status_code({"attributes": span}) == 500
    assert not any(key.startswith("circuit_breaker.") for key in span)
    assert server.requests == 2


APP = textwrap.dedent("""
    import json, sys
    import requests
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(requests.get(sys.argv[1] + "/orders?id=7").status_code)
        except requests.RequestException as exc:
            outcomes.append(type(exc).__name__)
    import otel_cb
    print(json.dumps({"outcomes": outcomes, "calls": otel_cb.registry.get("orders").snapshot().calls,
                      "spans": [dict(s.attributes) for s in exporter.get_finished_spans()]}))
""")


def test_unmodified_app_under_otel_cb_instrument(tmp_path: Path) -> None:
    command = shutil.which("otel-cb-instrument", path=str(Path(sys.executable).parent))
    assert command is not None, "otel-cb-instrument is not installed in this environment"
    app = tmp_path / "app.py"
    app.write_text(APP)
    with FaultServer("error") as server:
        config = tmp_path / "otel-cb.yaml"
        config.write_text(f"circuit_breakers:\n  orders: {{failure_threshold: 2, open_timeout: 60s, "
                          f"match: {{http: [\"{server.url}\"]}}}}\n")
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
               "OTEL_LOGS_EXPORTER": "none", "OTEL_CB_CONFIG": str(config)}
        env.pop("OTEL_CB_DISABLED", None)
        result = subprocess.run([command, sys.executable, str(app), server.url], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert server.requests == 2
    assert report["outcomes"] == [500, 500, "RequestsCircuitOpenError"]
    assert report["calls"] == {"success": 0, "failure": 2, "ignored": 0, "rejected": 1}
    assert len(report["spans"]) == 3  # OpenTelemetry's requests instrumentation, activated by the bootstrap
    assert all(span["circuit_breaker.name"] == "orders" for span in report["spans"])


def test_every_instrument_order_keeps_the_breaker_inside_and_restores_the_originals() -> None:
    with FaultServer("healthy") as running:
        seen = run_orders_script("tests.test_requests_otel", running.url)
    check_orders(seen)


def _main(url: str) -> None:  # pragma: no cover - runs in the subprocess
    import requests
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    def call() -> None:
        with requests.Session() as session:
            session.get(url).raise_for_status()

    run_orders("requests", url, RequestsInstrumentor, call)


if __name__ == "__main__":
    _main(sys.argv[1])
