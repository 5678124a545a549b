"""What the httpx integration adds per request: patched against unpatched, both traced by OpenTelemetry.

Both sides run OpenTelemetry's httpx instrumentation with an SDK tracer
provider (spans recorded, not exported) and otel-cb's telemetry enabled,
against the same loopback HTTP/1.1 server (``tests/http_server.py`` in a
process of its own, keep-alive). The patched side adds otel-cb's wrapper
inside OpenTelemetry's, with a breaker per destination routed through the
plugin helpers. Rounds alternate between the two sides (ABBA) so drift in the
machine's load hits both alike; the extra wall time is the median over rounds
of each round's patched/unpatched ratio (pairing cancels drift), shown next
to each side's best round. The layer alone is the patched wrapper around an
inner transport that answers at once with a streamed body (read and closed,
as a client does), inside a recording span, minus the same without the
wrapper: the median of paired batches. Of it, OpenTelemetry's own attribute
handling is timed apart (``span.set_attributes`` of the two breaker
attributes on an SDK span). Targets: at most 2% more wall time; the layer at
most 10 us per request.

The section runs in a subprocess: it installs global OpenTelemetry providers
and patches httpx for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "httpx: per-request cost of the patched client (both with OpenTelemetry's httpx instrumentation)"

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.02
LAYER_TARGET = 10e-6


def run(quick: bool) -> str:
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_httpx", "quick" if quick else "full"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"bench_httpx failed:\n{result.stderr}")
    return result.stdout


class _Sides:
    """Switches otel-cb's patch in and out beneath OpenTelemetry's instrumentor."""

    def __init__(self) -> None:
        import httpx
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        self.httpx = httpx
        self.instrumentor = HTTPXClientInstrumentor()
        self.originals = {"HTTPTransport": vars(httpx.HTTPTransport)["handle_request"],
                          "AsyncHTTPTransport": vars(httpx.AsyncHTTPTransport)["handle_async_request"]}

    def unpatched(self) -> None:
        self._reset()
        self.instrumentor.instrument()

    def patched(self) -> None:
        import wrapt

        from otel_cb.integrations import httpx as integration

        self._reset()
        for patch in integration.otel_cb_patches():  # inner first, as otel-cb-instrument orders them
            wrapt.wrap_function_wrapper(patch.module, patch.target, patch.wrapper)
        self.instrumentor.instrument()

    def _reset(self) -> None:
        if self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.uninstrument()
        self.httpx.HTTPTransport.handle_request = self.originals["HTTPTransport"]
        self.httpx.AsyncHTTPTransport.handle_async_request = self.originals["AsyncHTTPTransport"]


def _child(quick: bool) -> str:
    sys.path.insert(0, str(ROOT))
    import httpx
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import otel_cb.telemetry
    from otel_cb import CircuitBreakerConfig, CircuitBreakerRegistry, _plugins
    from otel_cb.plugin import Call, hookimpl

    trace.set_tracer_provider(TracerProvider())
    otel_cb.telemetry.enable()

    class PerDestination:
        @hookimpl
        def otel_cb_select_breaker(self, call: Call) -> str:
            return f"http_{call.target.rsplit(':', 1)[-1]}"

    manager = _plugins.new_manager()
    manager.register(PerDestination(), name="per_destination")
    _plugins.activate(_plugins.Active(manager, CircuitBreakerRegistry(), CircuitBreakerConfig(), {}))

    rounds, requests = (4, 100) if quick else (40, 250)
    sides = _Sides()
    # kind -> side -> [(wall seconds, client CPU seconds) per request, one per round]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        kind: {"unpatched": [], "patched": []} for kind in ("sync", "async")}
    with _server_process() as base_url:
        url = f"{base_url}/item"
        client = httpx.Client()
        loop = asyncio.new_event_loop()
        async_client = httpx.AsyncClient()

        async def async_requests(count: int) -> None:
            for _ in range(count):
                (await async_client.get(url)).raise_for_status()

        def sync_requests(count: int) -> None:
            for _ in range(count):
                client.get(url).raise_for_status()

        batches = {"sync": sync_requests, "async": lambda count: loop.run_until_complete(async_requests(count))}
        for round_number in range(rounds):
            # ABBA order, so whatever favours the first (or second) batch of a round favours both sides.
            for side in ("unpatched", "patched") if round_number % 2 == 0 else ("patched", "unpatched"):
                getattr(sides, side)()
                for kind, batch in batches.items():
                    batch(10)  # warm the connection and the route
                    wall, cpu = time.perf_counter(), time.process_time()
                    batch(requests)
                    results[kind][side].append(((time.perf_counter() - wall) / requests,
                                                (time.process_time() - cpu) / requests))
        sides.patched()
        layer, attributes = _layer_cost(httpx, url, 2_000 if quick else 30_000)
        sides._reset()
        client.close()
        loop.run_until_complete(async_client.aclose())
        loop.close()

    lines = ["| client | unpatched (best round) | patched (best round) | extra wall time (median of paired rounds) | "
             "extra client CPU (median) | otel-cb layer alone (of which OpenTelemetry's attributes) | "
             "layer / request | target |", "|---|---|---|---|---|---|---|---|"]
    for kind, by_side in results.items():
        base, patched = min(by_side["unpatched"]), min(by_side["patched"])
        pairs = list(zip(by_side["unpatched"], by_side["patched"], strict=True))
        ratio = _median([p[0] / u[0] for u, p in pairs])
        extra_cpu = _median([p[1] - u[1] for u, p in pairs])
        request = _median([u[0] for u, _ in pairs])
        lines.append(f"| httpx {kind} | {base[0] * 1e6:.1f} us | {patched[0] * 1e6:.1f} us | "
                     f"{(ratio - 1) * 100:+.1f}% | {extra_cpu * 1e6:+.1f} us | "
                     f"{layer * 1e6:.2f} us ({attributes * 1e6:.2f} us) | {layer / request * 100:.2f}% | "
                     f"<= {TARGET * 100:.0f}%, <= {LAYER_TARGET * 1e6:.0f} us |")
    lines.append("")
    lines.append(f"{rounds} ABBA rounds of {requests} keep-alive GETs per side against a loopback server in "
                 "another process. Both sides trace every request with opentelemetry-instrumentation-httpx. "
                 "*Extra wall time*: the median over rounds of patched/unpatched; *extra client CPU*: CPU time of "
                 "the client process per request, patched minus unpatched, median over rounds. *otel-cb layer "
                 "alone*: the patched wrapper around an inner transport that answers at once with a streamed "
                 "body, inside a recording span (routing, admission, span attributes, classification, body "
                 "wrapping and verdict), median of paired batches; in parentheses the part that is "
                 "OpenTelemetry's own handling of the two span attributes. On a loaded machine the end-to-end "
                 "figures carry noise of the order of the differences.")
    return "\n".join(lines)


@contextlib.contextmanager
def _server_process() -> Iterator[str]:
    """The loopback server in a process of its own, so it does not compete with the client for the GIL."""
    code = ("import sys; from tests.http_server import FaultServer; server = FaultServer().start(); "
            "print(server.url, flush=True); sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait(10)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _layer_cost(httpx: Any, url: str, calls: int) -> tuple[float, float]:
    """Per request: otel-cb's patched wrapper, and OpenTelemetry's share of it (the two span attributes).

    The inner call answers at once with a streamed body, as ``HTTPTransport``
    does; the client's part (read the body, close the response) is on both
    sides. Batches alternate bare / wrapped; each figure is the median over
    pairs of their difference, in CPU time of this thread (the layer does no
    I/O), so other processes' load does not count.
    """
    import gc

    from opentelemetry import trace

    from otel_cb.integrations import httpx as integration

    request = httpx.Request("GET", url)

    class Body(httpx.SyncByteStream):  # not a ByteStream: httpx would read that at construction
        def __iter__(self) -> Iterator[bytes]:
            yield b"{}"

    headers = [(b"content-length", b"2")]

    def answer(*args: Any, **kwargs: Any) -> Any:
        return httpx.Response(200, headers=headers, stream=Body(), request=request)

    def bare() -> None:
        response = answer(request)
        response.read()
        response.close()

    def wrapped() -> None:
        response = integration._handle_request(answer, None, (request,), {})
        response.read()
        response.close()

    def batch(fn: Any, count: int) -> float:
        gc.disable()
        try:
            start = time.thread_time()
            for _ in range(count):
                fn()
            return (time.thread_time() - start) / count
        finally:
            gc.enable()

    rounds, per_batch = 15, max(calls // 15, 50)
    # Inside a recording span, as under OpenTelemetry's wrapper: the span attributes are part of the cost.
    with trace.get_tracer("bench_httpx").start_as_current_span("client") as span:
        batch(wrapped, per_batch)
        differences = []
        for number in range(rounds):
            if number % 2:
                base = batch(bare, per_batch)
                differences.append(batch(wrapped, per_batch) - base)
            else:
                differences.append(batch(wrapped, per_batch) - batch(bare, per_batch))
        layer = _median(differences)
        attributes = {"circuit_breaker.name": "http_8080", "circuit_breaker.state": "closed"}
        attributes_cost = _median([batch(lambda: span.set_attributes(attributes), per_batch)
                                   for _ in range(rounds)])
    return layer, attributes_cost


def main(argv: list[str]) -> int:
    print(_child(quick=argv[:1] == ["quick"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


