"""What the requests integration adds per request: patched against unpatched, both traced by OpenTelemetry.

Both sides run OpenTelemetry's requests instrumentation with an SDK tracer
provider (spans recorded, not exported) and otel-cb's telemetry enabled,
against the same loopback HTTP/1.1 server (``tests/http_server.py`` in a
process of its own, keep-alive ``requests.Session``). The patched side adds
otel-cb's three patches (``HTTPAdapter.send`` inside OpenTelemetry's
``Session.send``, and the body's end), with a breaker per destination routed
through the plugin helpers. Each round measures both sides, in ABBA order;
the table shows the median over rounds of each side and of the per-round
ratio (paired, so drift in the machine's load hits both alike), the best
round, and what otel-cb's layer alone costs per request (the patched adapter
around an inner send that answers at once, body read) against the unpatched
request. Targets: at most 2% more wall time, at most 10 us for the layer.

The section runs in a subprocess: it installs global OpenTelemetry providers
and patches requests for the whole process.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "requests: per-request cost of the patched client (both with OpenTelemetry's requests instrumentation)"

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.02
LAYER_TARGET = 10e-6


def run(quick: bool) -> str:
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_requests", "quick" if quick else "full"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"bench_requests failed:\n{result.stderr}")
    return result.stdout


class _Sides:
    """Switches otel-cb's patches in and out; OpenTelemetry's instrumentor stays on both sides."""

    def __init__(self) -> None:
        import requests
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        from otel_cb.integrations import requests as integration

        self.patches = integration.otel_cb_patches()
        self.owners = [(requests.adapters.HTTPAdapter, "send"), (requests.Response, "iter_content"),
                       (requests.Response, "close")]
        self.originals = [vars(owner)[name] for owner, name in self.owners]
        RequestsInstrumentor().instrument()

    def unpatched(self) -> None:
        for (owner, name), original in zip(self.owners, self.originals, strict=True):
            setattr(owner, name, original)

    def patched(self) -> None:
        import wrapt

        self.unpatched()
        for patch in self.patches:
            wrapt.wrap_function_wrapper(patch.module, patch.target, patch.wrapper)


def _child(quick: bool) -> str:
    sys.path.insert(0, str(ROOT))
    import requests
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import otel_cb.telemetry
    from otel_cb import CircuitBreakerConfig, CircuitBreakerRegistry, _plugins
    from otel_cb.plugin import Call, hookimpl

    from .bench_httpx import _server_process

    trace.set_tracer_provider(TracerProvider())
    otel_cb.telemetry.enable()

    class PerDestination:
        @hookimpl
        def otel_cb_select_breaker(self, call: Call) -> str:
            return f"http_{call.target.rsplit(':', 1)[-1]}"

    manager = _plugins.new_manager()
    manager.register(PerDestination(), name="per_destination")
    _plugins.activate(_plugins.Active(manager, CircuitBreakerRegistry(), CircuitBreakerConfig(), {}))

    rounds, count = (4, 100) if quick else (40, 250)
    sides = _Sides()
    results: dict[str, list[float]] = {"unpatched": [], "patched": []}  # wall seconds per request, per round
    with _server_process() as base_url, requests.Session() as session:
        url = f"{base_url}/item"

        def batch(n: int) -> None:
            for _ in range(n):
                session.get(url).raise_for_status()

        for round_number in range(rounds):
            for side in ("unpatched", "patched") if round_number % 2 == 0 else ("patched", "unpatched"):
                getattr(sides, side)()
                batch(10)  # warm the connection and the route
                start = time.perf_counter()
                batch(count)
                results[side].append((time.perf_counter() - start) / count)
        layer = _layer_cost(requests, sides, url, 2_000 if quick else 50_000)
        sides.unpatched()

    base, patched = results["unpatched"], results["patched"]
    ratio = statistics.median(p / b for p, b in zip(patched, base, strict=True)) - 1
    lines = ["| client | unpatched, per request | patched, per request | extra wall time (median of paired rounds) "
             "| best rounds | otel-cb layer alone | layer / request | target |",
             "|---|---|---|---|---|---|---|---|",
             f"| requests sync | {statistics.median(base) * 1e6:.1f} us | {statistics.median(patched) * 1e6:.1f} us | "
             f"{ratio * 100:+.1f}% | {min(base) * 1e6:.1f} -> {min(patched) * 1e6:.1f} us "
             f"({(min(patched) / min(base) - 1) * 100:+.1f}%) | {layer * 1e6:.2f} us | "
             f"{layer / statistics.median(base) * 100:.2f}% | <= {TARGET * 100:.0f}%, layer <= "
             f"{LAYER_TARGET * 1e6:.0f} us |",
             "",
             f"{rounds} rounds, each {count} keep-alive GETs per side (ABBA order) through one requests.Session "
             "against a loopback server in another process; per-request medians over rounds, and the median of the "
             "per-round ratios. Both sides trace every request with opentelemetry-instrumentation-requests. "
             "*otel-cb layer alone*: the patched HTTPAdapter.send around an inner send that answers at once, with "
             "its body read through the patched iter_content, inside a recording span (routing, admission, span "
             "attributes, classification and the verdict at the body's end). On a loaded machine the end-to-end "
             "figures carry noise of the order of the differences."]
    return "\n".join(lines)


def _layer_cost(requests: Any, sides: _Sides, url: str, calls: int) -> float:
    """Per request: otel-cb's patched adapter around a send that answers at once, body read, in a recording span."""
    from opentelemetry import trace
    from urllib3 import HTTPResponse

    adapter = requests.adapters.HTTPAdapter()
    request = requests.Request("GET", url).prepare()
    send = sides.patches[0].wrapper

    def answer(*args: Any, **kwargs: Any) -> Any:
        raw = HTTPResponse(body=io.BytesIO(b"{}"), headers={"Content-Length": "2"}, status=200,
                           preload_content=False)
        return adapter.build_response(request, raw)

    def bare() -> None:
        answer(request).content  # noqa: B018

    def wrapped() -> None:
        send(answer, adapter, (request,), {}).content  # noqa: B018

    # Small batches, the two alternating, the least disturbed batch of each: robust on a shared machine.
    batch = 200
    timings = {"bare": float("inf"), "wrapped": float("inf")}
    with trace.get_tracer("bench_requests").start_as_current_span("client"):
        for _ in range(max(2, calls // batch)):
            for name, fn, side in (("bare", bare, sides.unpatched), ("wrapped", wrapped, sides.patched)):
                side()
                start = time.perf_counter()
                for _ in range(batch):
                    fn()
                timings[name] = min(timings[name], (time.perf_counter() - start) / batch)
    return timings["wrapped"] - timings["bare"]


def main(argv: list[str]) -> int:
    print(_child(quick=argv[:1] == ["quick"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
