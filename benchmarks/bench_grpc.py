"""What the gRPC integration adds per call: patched against unpatched, both traced by OpenTelemetry.

Both sides run OpenTelemetry's grpc instrumentation (sync and aio) with an
SDK tracer provider (spans recorded, not exported) against the same loopback
server (``tests/grpc_server.py``), making unary ``GetResourceUsage`` calls.
The patched side adds otel-cb's interceptor inside OpenTelemetry's, an
automatic breaker routed through the plugin helpers, and
``otel_cb.telemetry.enable()``. Rounds alternate between the two sides so
drift in the machine's load hits both alike; the table shows each side's
median round. Target: at most 2% more wall time.

The section runs in a subprocess: it installs global OpenTelemetry providers
and patches grpc for the whole process.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "gRPC: per-call cost of the patched channel (both with OpenTelemetry's grpc instrumentation)"

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.02
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def run(quick: bool) -> str:
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_grpc", "quick" if quick else "full"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"bench_grpc failed:\n{result.stderr}")
    return result.stdout


class _Sides:
    """Switches otel-cb's patches in and out beneath OpenTelemetry's instrumentors."""

    def __init__(self) -> None:
        import grpc._channel
        import grpc.aio._channel
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient

        self.sync_channel = grpc._channel.Channel
        self.aio_channel = grpc.aio._channel.Channel
        self.instrumentors = (GrpcInstrumentorClient(), GrpcAioInstrumentorClient())
        self.originals = {kind: vars(self.sync_channel)[kind] for kind in KINDS}
        self.aio_init = vars(self.aio_channel)["__init__"]

    def unpatched(self) -> None:
        self._reset()
        for instrumentor in self.instrumentors:
            instrumentor.instrument()

    def patched(self) -> None:
        import wrapt

        from otel_cb.integrations import grpc as integration

        self._reset()
        for patch in integration.otel_cb_patches():
            wrapt.wrap_function_wrapper(patch.module, patch.target, patch.wrapper)
        for instrumentor in self.instrumentors:
            instrumentor.instrument()

    def _reset(self) -> None:
        for instrumentor in self.instrumentors:
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        for kind, original in self.originals.items():
            setattr(self.sync_channel, kind, original)
        self.aio_channel.__init__ = self.aio_init


def _child(quick: bool) -> str:
    sys.path.insert(0, str(ROOT))
    import grpc
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import otel_cb.telemetry
    from otel_cb import CircuitBreakerConfig, CircuitBreakerRegistry, _plugins
    from otel_cb.plugin import Call, hookimpl
    from tests.grpc_server import FaultServer, stubs

    trace.set_tracer_provider(TracerProvider())
    otel_cb.telemetry.enable()

    class PerTarget:  # what the built-in router's automatic breakers do, without a config file
        @hookimpl
        def otel_cb_select_breaker(self, call: Call) -> str:
            return f"grpc://{call.target}"

    registry = CircuitBreakerRegistry()
    manager = _plugins.new_manager()
    manager.register(PerTarget(), name="per_target")
    _plugins.activate(_plugins.Active(manager, registry, CircuitBreakerConfig(), {}))

    pb = stubs()
    request = pb.edge_pb2.ResourceUsageRequest(agent_id="bench")
    rounds, calls = (4, 150) if quick else (15, 1500)
    sides = _Sides()
    results: dict[str, dict[str, list[float]]] = {"sync": {"unpatched": [], "patched": []},
                                                  "aio": {"unpatched": [], "patched": []}}
    loop = asyncio.new_event_loop()
    with FaultServer() as server:

        async def aio_batch(stub: Any, count: int) -> None:
            for _ in range(count):
                await stub.GetResourceUsage(request)

        def sync_batch(stub: Any, count: int) -> None:
            for _ in range(count):
                stub.GetResourceUsage(request)

        for _ in range(rounds):
            for side in ("unpatched", "patched"):
                getattr(sides, side)()
                with grpc.insecure_channel(server.address) as channel:
                    stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
                    sync_batch(stub, 20)  # connect and warm the route
                    start = time.perf_counter()
                    sync_batch(stub, calls)
                    results["sync"][side].append((time.perf_counter() - start) / calls)

                async def aio_round(side: str = side) -> None:
                    async with grpc.aio.insecure_channel(server.address) as channel:
                        stub = pb.edge_pb2_grpc.EdgeAgentServiceStub(channel)
                        await aio_batch(stub, 20)
                        start = time.perf_counter()
                        await aio_batch(stub, calls)
                        results["aio"][side].append((time.perf_counter() - start) / calls)

                loop.run_until_complete(aio_round())
        sides._reset()
    loop.close()
    protected = sum(sum(b.snapshot().calls.values()) for b in registry)

    lines = ["| client | unpatched, per call | patched, per call | extra (median of paired rounds) | target |",
             "|---|---|---|---|---|"]
    for flavour, side_results in results.items():
        base = statistics.median(side_results["unpatched"])
        patched = statistics.median(side_results["patched"])
        # Each round times both sides back to back: the per-round ratio cancels drift between rounds.
        extra = statistics.median(new / old for new, old in zip(side_results["patched"], side_results["unpatched"],
                                                               strict=True)) - 1
        lines.append(f"| grpc {flavour} unary | {base * 1e6:.1f} us | {patched * 1e6:.1f} us | "
                     f"{extra * 100:+.1f}% ({(patched - base) * 1e6:+.1f} us between the medians) | "
                     f"<= {TARGET * 100:.0f}% |")
    lines.append("")
    lines.append(f"{rounds} alternating rounds of {calls} unary calls per side on one loopback channel; "
                 f"per-side medians, the extra the median of the per-round ratios ({protected} calls went "
                 "through a breaker). Both sides trace every call with "
                 "opentelemetry-instrumentation-grpc. On a loaded machine the loopback round trip is noisy; "
                 "the row below isolates otel-cb's own work.")
    lines.append("")
    lines.append("| otel-cb's own work per call | sync | aio |")
    lines.append("|---|---|---|")
    sync_cost, aio_cost = _own_work(quick)
    lines.append(f"| routing, admission, span annotation, verdict (no network) | {sync_cost * 1e6:.1f} us | "
                 f"{aio_cost * 1e6:.1f} us |")
    return "\n".join(lines)


def _own_work(quick: bool) -> tuple[float, float]:
    """Seconds per call that the interceptors spend on a call that succeeds, with a stand-in for grpc."""
    import grpc

    from otel_cb.integrations.grpc import CircuitBreakerInterceptor, aio_interceptors

    class Details:
        method = "/llm.edge.v1.EdgeAgentService/GetResourceUsage"

    class Finished:  # a finished sync call: what the continuation hands back
        def done(self) -> bool:
            return True

        def add_callback(self, callback: Any) -> bool:
            return False  # already over: judged at once

        def cancelled(self) -> bool:
            return False

        def exception(self) -> None:
            return None

        def code(self) -> Any:
            return grpc.StatusCode.OK

        def trailing_metadata(self) -> tuple[()]:
            return ()

    class AioFinished:  # a finished aio call
        def add_done_callback(self, callback: Any) -> None:
            callback(self)

        def cancelled(self) -> bool:
            return False

        async def code(self) -> Any:
            return grpc.StatusCode.OK

    finished, aio_finished, details = Finished(), AioFinished(), Details()
    count = 5_000 if quick else 50_000

    def continuation(details: Any, request: Any) -> Finished:
        return finished

    async def aio_continuation(details: Any, request: Any) -> AioFinished:
        return aio_finished

    sync_interceptor = CircuitBreakerInterceptor()  # routed by the plugin helpers, as when patched
    aio_interceptor = aio_interceptors()[0]

    def sync_side(protected: bool) -> float:
        start = time.perf_counter()
        for _ in range(count):
            if protected:
                sync_interceptor.intercept_unary_unary(continuation, details, None)
            else:
                continuation(details, None)
        return time.perf_counter() - start

    async def aio_side(protected: bool) -> float:
        start = time.perf_counter()
        for _ in range(count):
            if protected:
                await aio_interceptor.intercept_unary_unary(aio_continuation, details, None)
            else:
                await aio_continuation(details, None)
        return time.perf_counter() - start

    sync_costs, aio_costs = [], []
    for _ in range(5):
        sync_costs.append((sync_side(True) - sync_side(False)) / count)
        aio_costs.append((asyncio.run(aio_side(True)) - asyncio.run(aio_side(False))) / count)
    return statistics.median(sync_costs), statistics.median(aio_costs)


def main(argv: list[str]) -> int:
    print(_child(quick=argv[:1] == ["quick"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
