"""httpx under ``otel-cb-instrument``: an unmodified application gets breakers on its httpx calls.

A real subprocess runs a small application through the console script, with
a config file routing the loopback server to a breaker; the application reads
back its own spans (OpenTelemetry's httpx instrumentation, activated by the
bootstrap) and the breaker's counters.
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

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent("""
    import asyncio, json, sys
    import httpx
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    url = sys.argv[1]
    outcomes = []
    with httpx.Client() as client:
        for _ in range(3):
            try:
                outcomes.append(client.get(url + "/orders?id=7").status_code)
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)

    async def later():
        async with httpx.AsyncClient() as client:
            try:
                await client.get(url)
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)

    asyncio.run(later())
    import otel_cb
    breaker = otel_cb.registry.get("orders")
    print(json.dumps({
        "outcomes": outcomes,
        "state": breaker.state.value if breaker else None,
        "calls": breaker.snapshot().calls if breaker else None,
        "spans": [{"kind": s.kind.name, "status": s.status.status_code.name, "attributes": dict(s.attributes),
                   "events": [e.name for e in s.events]} for s in exporter.get_finished_spans()],
    }))
""")


def test_unmodified_app_under_otel_cb_instrument(tmp_path: Path) -> None:
    command = shutil.which("otel-cb-instrument", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.fail("otel-cb-instrument is not installed in this environment")
    app = tmp_path / "app.py"
    app.write_text(APP)
    with FaultServer("error") as server:
        config = tmp_path / "otel-cb.yaml"
        config.write_text(textwrap.dedent(f"""
            circuit_breakers:
              orders:
                failure_threshold: 2
                open_timeout: 60s
                match: {{http: ["{server.url}"]}}
        """))
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
               "OTEL_LOGS_EXPORTER": "none", "OTEL_CB_CONFIG": str(config)}
        env.pop("OTEL_CB_DISABLED", None)
        result = subprocess.run([command, sys.executable, str(app), server.url], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        assert server.requests == 2, "the third and fourth requests must not reach the server"

    assert report["outcomes"] == [500, 500, "HTTPCircuitOpenError", "HTTPCircuitOpenError"]
    assert report["state"] == "open"
    assert report["calls"] == {"success": 0, "failure": 2, "ignored": 0, "rejected": 2}
    client_spans = [span for span in report["spans"] if span["kind"] == "CLIENT"]
    assert len(client_spans) == 4
    for span in client_spans:
        assert span["attributes"]["circuit_breaker.name"] == "orders"
    assert "circuit_breaker.state_change" in client_spans[1]["events"]
    for span in client_spans[2:]:
        assert span["status"] == "ERROR"
        assert "circuit_breaker.rejected" in span["events"]
    assert "Traceback" not in result.stderr
