"""The gRPC integration with OpenTelemetry's grpc instrumentation, and under ``otel-cb-instrument``.

Both run in a subprocess: OpenTelemetry's global tracer provider can be set
only once per process, and ``otel-cb-instrument`` starts a program of its own.
Run as ``python -m tests.test_grpc_otel`` this module is the scenario itself:
it prints one JSON line with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from tests.test_httpx_otel import in_memory_tracing, in_order

ROOT = Path(__file__).resolve().parent.parent
ORDERS = ("otel_first", "otel_cb_first")
CONFIG = {
    "circuit_breakers": {
        "shield": {
            "failure_threshold": 2,
            "open_timeout": "60s",
            "slow_call_duration": None,
            "match": {"grpc": ["llm.shield.v1.ShieldService"]},
        },
    },
}


def run_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture(scope="module")
def scenario() -> dict[str, Any]:
    result = run_python("-m", "tests.test_grpc_otel")
    assert result.returncode == 0, result.stdout + result.stderr
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen


@pytest.mark.parametrize("round_", [1, 2], ids=["first", "instrumented again"])
@pytest.mark.parametrize("flavour", ["sync", "aio"])
@pytest.mark.parametrize("instrumented_first", ORDERS)
@pytest.mark.parametrize("uninstrumented_first", ORDERS)
def test_client_span_carries_the_breaker_in_any_order(scenario: dict[str, Any], round_: int, flavour: str,
                                                      instrumented_first: str, uninstrumented_first: str) -> None:
    seen = scenario[f"{round_}/{flavour}/{instrumented_first}/{uninstrumented_first}"]
    healthy, failed, tripping, rejected = seen["spans"]
    # OpenTelemetry's span is the outer one: it covers the breaker's decisions.
    for span in seen["spans"]:
        assert span["name"] == "/llm.shield.v1.ShieldService/AnalyzeSecurityEvent"
        assert span["attributes"]["circuit_breaker.name"] == "shield"
    assert healthy["attributes"]["circuit_breaker.state"] == "closed"
    assert healthy["attributes"]["rpc.grpc.status_code"] == 0
    assert failed["attributes"]["rpc.grpc.status_code"] == 14
    assert "circuit_breaker.state_change" in tripping["events"]
    assert "circuit_breaker.state_change" not in failed["events"]
    assert "circuit_breaker.rejected" in rejected["events"]
    assert rejected["attributes"]["rpc.grpc.status_code"] == 14
    assert rejected["server_saw_it"] is False
    # Either side's uninstrument leaves the other one working, then both are gone.
    after_one, after_both = seen["after_one"], seen["after_both"]
    if uninstrumented_first == "otel_first":
        assert after_one == {"spans": 0, "protected": True}
    else:
        assert after_one == {"spans": 1, "protected": False}
    assert after_both == {"spans": 0, "protected": False}
    # Both uninstrumented: every attribute otel-cb patched is its original object again.
    assert seen["not_original"] == []


def test_otel_cb_instrument_protects_a_grpc_program(tmp_path: Path) -> None:
    if "grpc" not in {ep.name for ep in entry_points(group="otel_cb")}:
        pytest.skip("the grpc plugin's entry point is not installed (pip install -e .)")
    cli = Path(sys.executable).parent / "otel-cb-instrument"
    if not cli.exists():
        pytest.skip("otel-cb-instrument is not installed")
    (tmp_path / "otel-cb.yaml").write_text(json.dumps(CONFIG))  # JSON is YAML
    program = tmp_path / "client.py"
    program.write_text(textwrap.dedent("""
        import json
        import grpc
        from otel_cb import CircuitOpenError
        from tests.grpc_server import FaultServer, stubs

        pb = stubs()
        seen = []
        with FaultServer(mode="unavailable") as server, grpc.insecure_channel(server.address) as channel:
            stub = pb.shield_pb2_grpc.ShieldServiceStub(channel)
            for _ in range(3):
                try:
                    stub.AnalyzeSecurityEvent(pb.shield_pb2.SecurityEvent(event_id="e"), timeout=5)
                except CircuitOpenError as exc:
                    seen.append(["rejected", exc.name, exc.code().name])
                except grpc.RpcError as exc:
                    seen.append(["failed", exc.code().name])
            seen.append(["server calls", server.total])
        print(json.dumps(seen))
    """))
    # Only the grpc plugin: the result must not depend on other installed plugins.
    disabled = ",".join(ep.name for ep in entry_points(group="otel_cb") if ep.name != "grpc")
    result = subprocess.run(
        [str(cli), sys.executable, str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OTEL_CB_DISABLED": disabled,
             "OTEL_CB_CONFIG": str(tmp_path / "otel-cb.yaml"), "OTEL_TRACES_EXPORTER": "none",
             "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        ["failed", "UNAVAILABLE"], ["failed", "UNAVAILABLE"], ["rejected", "shield", "UNAVAILABLE"],
        ["server calls", 2],
    ]


# -- the scenario, run in a fresh interpreter -------------------------------------------------


def _main() -> None:  # pragma: no cover - runs in the subprocess
    import grpc
    import wrapt
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient

    import otel_cb
    from otel_cb import registry
    from otel_cb.integrations import grpc as integration
    from tests.grpc_server import FaultServer, stubs

    exporter, _, disabled = in_memory_tracing("grpc")
    pb = stubs()
    event = pb.shield_pb2.SecurityEvent(event_id="e", payload="login")
    # What otel-cb patches, before anything patched it: both uninstrumented, each must be this object again.
    originals = {(p.module, p.target): wrapt.resolve_path(p.module, p.target)[2]
                 for p in integration.otel_cb_patches()}

    def sync_call(server: FaultServer) -> bool:
        with grpc.insecure_channel(server.address) as channel:
            try:
                pb.shield_pb2_grpc.ShieldServiceStub(channel).AnalyzeSecurityEvent(event, timeout=5)
            except grpc.RpcError:
                return False
        return True

    def aio_call(server: FaultServer) -> bool:
        async def call() -> bool:
            async with grpc.aio.insecure_channel(server.address) as channel:
                try:
                    await pb.shield_pb2_grpc.ShieldServiceStub(channel).AnalyzeSecurityEvent(event, timeout=5)
                except grpc.RpcError:
                    return False
            return True
        return asyncio.run(call())

    def shield_calls() -> int:
        breaker = registry.get("shield")
        return sum(breaker.snapshot().calls.values()) if breaker is not None else 0

    seen: dict[str, Any] = {}
    with FaultServer() as server:
        # Twice over: instrumenting again after both sides uninstrumented must protect again.
        for round_, (flavour, call, instrumentor) in ((r, f) for r in (1, 2) for f in (
                ("sync", sync_call, GrpcInstrumentorClient), ("aio", aio_call, GrpcAioInstrumentorClient))):
            for first in ORDERS:
                for unfirst in ORDERS:
                    otel = instrumentor()
                    for step in in_order(first, otel.instrument,
                                         lambda: otel_cb.instrument(CONFIG, disabled=disabled)):
                        step()
                    exporter.clear()
                    spans = []
                    for mode in ("healthy", "unavailable", "unavailable", "unavailable"):
                        server.mode = mode
                        before = server.total
                        call(server)
                        # The client span; a transition judged outside it gets a span of its own.
                        span = [s for s in exporter.get_finished_spans() if s.name.startswith("/")][-1]
                        spans.append({
                            "name": span.name,
                            "attributes": dict(span.attributes or {}),
                            "events": [e.name for e in span.events],
                            "server_saw_it": server.total > before,
                        })
                    server.mode = "healthy"
                    registry.get("shield").reset()
                    outcomes = []
                    for step in in_order(unfirst, otel.uninstrument, otel_cb.uninstrument):
                        step()
                        exporter.clear()
                        before_calls = shield_calls()
                        assert call(server)
                        outcomes.append({"spans": sum(s.name.startswith("/") for s in exporter.get_finished_spans()),
                                         "protected": shield_calls() > before_calls})
                    seen[f"{round_}/{flavour}/{first}/{unfirst}"] = {
                        "spans": spans, "after_one": outcomes[0], "after_both": outcomes[1],
                        "not_original": [f"{module}.{target}" for (module, target), original in originals.items()
                                         if wrapt.resolve_path(module, target)[2] is not original]}
    print(json.dumps(seen))


if __name__ == "__main__":
    _main()
