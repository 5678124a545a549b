"""What the httpx integration adds per request: patched against unpatched, both traced by OpenTelemetry.

Both sides run OpenTelemetry's httpx instrumentation with an SDK tracer
provider (spans recorded, not exported) and otel-cb's telemetry enabled,
against the same loopback HTTP/1.1 server (``tests/http_server.py`` in a
process of its own, keep-alive). The patched side adds otel-cb's wrapper
inside OpenTelemetry's, with a breaker per destination routed through the
plugin helpers. Rounds alternate between the sides (ABBA) so drift in the
machine's load hits both alike; the extra wall time is the median over rounds
of each round's patched/unpatched ratio (pairing cancels drift), shown next
to each side's best round. The layer alone is the patched wrapper around an
inner transport that answers at once with a streamed body (read and closed,
as a client does), inside a recording span, minus the same without the
wrapper: the median of paired batches, in CPU time of the thread.

OpenTelemetry's share is measured as a side of its own, *attributes only*: a
wrapt wrapper in otel-cb's place that only puts the two breaker attributes on
the current span (``span.set_attribute``, as otel-cb sets them) and calls
through. It runs in the same rounds end to end and in the same layer batches,
so the table shows the floor that any breaker marking the client span pays,
and what otel-cb adds beyond it (otel-cb / attributes only, paired rounds).
Targets: at most 2% more wall time; the layer at most 10 us per request.

Old against new: set ``OTEL_CB_BENCH_BASELINE`` to a copy of an earlier
``otel_cb`` package under another name (see ``bench_core``), and that copy is
one more patched side in the same rounds and the same layer batches, with the
median of the paired new/old ratios::

    mkdir -p /tmp/base && git archive main otel_cb | tar -x -C /tmp/base
    mv /tmp/base/otel_cb /tmp/base/otel_cb_main
    OTEL_CB_BENCH_BASELINE=/tmp/base/otel_cb_main .venv/bin/python -m benchmarks.run --only bench_httpx

``bench_requests`` runs the same way and shares this module's set-up.

The section runs in a subprocess: it installs global OpenTelemetry providers
and patches httpx for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "httpx: per-request cost of the patched client (both with OpenTelemetry's httpx instrumentation)"

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.02
LAYER_TARGET = 10e-6
BASELINE_ENV = "OTEL_CB_BENCH_BASELINE"
UNPATCHED = "unpatched"
FLOOR = "attributes only"  # OpenTelemetry's share: see attributes_only
WRAPT_ONLY = "wrapt only"  # a wrapper that only calls through: what being patched costs (bench_instructions)
ATTRIBUTES = {"circuit_breaker.name": "http_8080", "circuit_breaker.state": "closed"}

# side -> [(wall seconds, client CPU seconds) per request, one per round]
Rounds = dict[str, list[tuple[float, float]]]


def run(quick: bool) -> str:
    return run_child("benchmarks.bench_httpx", quick)


def run_child(module: str, quick: bool) -> str:
    result = subprocess.run([sys.executable, "-m", module, "quick" if quick else "full"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{result.stderr}")
    return result.stdout


# -- set-up shared with bench_requests ---------------------------------------------------


def set_up() -> list[str]:
    """Install the SDK tracer provider; activate otel-cb (and the baseline copy, if any). Returns the packages."""
    sys.path.insert(0, str(ROOT))
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    packages = ["otel_cb"]
    baseline = os.environ.get(BASELINE_ENV)
    if baseline:
        path = Path(baseline).resolve()
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        packages.append(path.name)
    for package in packages:
        _activate(package)
    return packages


def _activate(package: str) -> None:
    """otel-cb's telemetry on, and a breaker per destination routed through the plugin helpers."""
    root = importlib.import_module(package)
    importlib.import_module(f"{package}.telemetry").enable()
    plugins = importlib.import_module(f"{package}._plugins")
    hookimpl = importlib.import_module(f"{package}.plugin").hookimpl

    class PerDestination:
        @hookimpl  # type: ignore[misc]
        def otel_cb_select_breaker(self, call: Any) -> str:
            return f"http_{call.target.rsplit(':', 1)[-1]}"

    manager = plugins.new_manager()
    manager.register(PerDestination(), name="per_destination")
    plugins.activate(plugins.Active(manager, root.CircuitBreakerRegistry(), root.CircuitBreakerConfig(), {}))


@contextlib.contextmanager
def server_process() -> Iterator[str]:
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


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def timed_rounds(sides: dict[str, Callable[[], None]], batches: dict[str, Callable[[int], None]], rounds: int,
                 requests: int) -> dict[str, Rounds]:
    """Per kind of batch, per side: wall and CPU time per request of each round.

    Each round switches to every side in turn, forwards in even rounds and
    backwards in odd ones (ABBA), and runs each batch after ten warm-up requests.
    The collector runs between batches, not in them: a full collection (tens of
    milliseconds, at moments no side chooses) landing in one batch moved that
    round's ratio by more than the differences measured here.
    """
    results: dict[str, Rounds] = {kind: {side: [] for side in sides} for kind in batches}
    order = list(sides)
    for number in range(rounds):
        for side in order if number % 2 == 0 else order[::-1]:
            sides[side]()
            for kind, batch in batches.items():
                batch(10)  # warm the connection and the route
                gc.collect()
                gc.disable()
                try:
                    wall, cpu = time.perf_counter(), time.process_time()
                    batch(requests)
                    results[kind][side].append(((time.perf_counter() - wall) / requests,
                                                (time.process_time() - cpu) / requests))
                finally:
                    gc.enable()
    return results


def apply_patches(package: str, integration: str) -> Any:
    """Apply ``package``'s patches of ``integration`` as ``otel_cb.instrument()`` does; returns what removes them.

    Through the package's own patching engine, so a patched call runs what it
    runs for users: the engine's switch layer, then the integration's wrapper.
    """
    patching = importlib.import_module(f"{package}._patching")
    for patch in importlib.import_module(f"{package}.integrations.{integration}").otel_cb_patches():
        patching.apply(patch)
    return patching.remove_all


def layer_of(package: str, patch: Any) -> Callable[..., Any]:
    """What wrapt calls for ``patch`` once ``package`` applied it: the engine's layer around the wrapper."""
    switch = importlib.import_module(f"{package}._patching")._Switch
    # An earlier copy's switch may take the wrapper itself rather than the patch.
    takes_patch = next(iter(inspect.signature(switch).parameters)) == "patch"
    return switch(patch if takes_patch else patch.wrapper).layer  # type: ignore[no-any-return]


def annotate_only() -> None:
    """What otel-cb asks of OpenTelemetry per call: the two breaker attributes on the current span, as it sets them."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        (name, name_value), (state, state_value) = ATTRIBUTES.items()
        span.set_attribute(name, name_value)
        span.set_attribute(state, state_value)


def attributes_only(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The floor: a wrapt wrapper where otel-cb's sits that only sets the two attributes, then calls through."""
    annotate_only()
    return wrapped(*args, **kwargs)


def calling_through(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A wrapt wrapper where otel-cb's sits that does nothing but call through."""
    return wrapped(*args, **kwargs)


# The stand-ins for otel-cb's wrapper, by side.
STAND_INS = {FLOOR: attributes_only, WRAPT_ONLY: calling_through}


def layer_costs(bare: Callable[[], None], wrapped: dict[str, Callable[[], None]],
                enter: Callable[[str], None], calls: int) -> dict[str, float]:
    """Per side of ``wrapped``: the median over paired batches of (wrapped - bare) per request.

    CPU time of this thread (the layer does no I/O), so other processes' load
    does not count; the collector is off during a batch. Each round times the
    bare batch and every wrapped one, in an order that alternates, inside one
    recording span, as under OpenTelemetry's client instrumentation.
    ``enter(side)`` switches patches a side needs around the call
    (``UNPATCHED`` for the bare batch). One more side, ``FLOOR``, is
    OpenTelemetry's share: the bare call with the two attributes set first,
    timed among the same calls as the layer (alone in a tight loop it looks
    half as dear).
    """
    from opentelemetry import trace

    def batch(fn: Callable[[], None], count: int) -> float:
        gc.disable()
        try:
            start = time.thread_time()
            for _ in range(count):
                fn()
            return (time.thread_time() - start) / count
        finally:
            gc.enable()

    def floor() -> None:
        annotate_only()
        bare()

    wrapped = {**wrapped, FLOOR: floor}
    rounds, per_batch = 15, max(calls // 15, 50)
    sides = {UNPATCHED: bare, **wrapped}
    order = list(sides)
    differences: dict[str, list[float]] = {side: [] for side in wrapped}
    with trace.get_tracer("bench_layer").start_as_current_span("client"):
        for side, fn in sides.items():
            enter(side)
            batch(fn, per_batch)
        for number in range(rounds):
            timings = {}
            for side in order if number % 2 == 0 else order[::-1]:
                enter(side)
                timings[side] = batch(sides[side], per_batch)
            for side in wrapped:
                differences[side].append(timings[side] - timings[UNPATCHED])
        enter(UNPATCHED)
    return {side: median(values) for side, values in differences.items()}


def table(client: str, results: dict[str, Rounds], layers: dict[str, float]) -> list[str]:
    """The markdown rows: per kind of batch and per side, against the unpatched side; then side against side."""
    packages = [side for side in layers if side != FLOOR]
    share = layers[FLOOR]
    lines = ["| client | unpatched (best round) | patched (best round) | extra wall time (median of paired rounds) | "
             "extra client CPU (median) | layer alone (of which OpenTelemetry's attributes) | "
             "layer / request | target |", "|---|---|---|---|---|---|---|---|"]
    for kind, by_side in results.items():
        base = by_side[UNPATCHED]
        request = median([wall for wall, _ in base])
        for side in [*packages, FLOOR]:
            pairs = list(zip(base, by_side[side], strict=True))
            ratio = median([p[0] / u[0] for u, p in pairs])
            extra_cpu = median([p[1] - u[1] for u, p in pairs])
            label = f"{client} {kind} ({side})"
            target = f"<= {TARGET * 100:.0f}%, <= {LAYER_TARGET * 1e6:.0f} us" if side != FLOOR else "(floor)"
            lines.append(f"| {label} | {min(base)[0] * 1e6:.1f} us | {min(by_side[side])[0] * 1e6:.1f} us | "
                         f"{(ratio - 1) * 100:+.1f}% | {extra_cpu * 1e6:+.1f} us | "
                         f"{layers[side] * 1e6:.2f} us ({share * 1e6:.2f} us) | "
                         f"{layers[side] / request * 100:.2f}% | {target} |")
    lines.append("")
    for kind, by_side in results.items():
        for side in packages:
            pairs = list(zip(by_side[FLOOR], by_side[side], strict=True))
            ratio = median([p[0] / f[0] for f, p in pairs])
            extra_cpu = median([p[1] - f[1] for f, p in pairs])
            lines.append(f"{client} {kind}: {side} beyond OpenTelemetry's attributes ({side} / {FLOOR}, median "
                         f"of paired rounds): {(ratio - 1) * 100:+.1f}% wall time, {extra_cpu * 1e6:+.1f} us client "
                         f"CPU per request; layer {(layers[side] - share) * 1e6:.2f} us.")
    if len(packages) > 1:
        new, old = packages
        for kind, by_side in results.items():
            ratio = median([n[0] / o[0] for n, o in zip(by_side[new], by_side[old], strict=True)])
            lines.append(f"{client} {kind}: {new} / {old}, median of paired rounds: {(ratio - 1) * 100:+.1f}% wall "
                         f"time per request; layer {layers[new] * 1e6:.2f} us against {layers[old] * 1e6:.2f} us.")
    return lines


# -- httpx ------------------------------------------------------------------------------------


class _Sides:
    """Switches otel-cb's patch (of one package) in and out beneath OpenTelemetry's instrumentor."""

    def __init__(self) -> None:
        import httpx
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        self.httpx = httpx
        self.remove: Callable[[], None] | None = None
        self.instrumentor = HTTPXClientInstrumentor()
        self.originals = {"HTTPTransport": vars(httpx.HTTPTransport)["handle_request"],
                          "AsyncHTTPTransport": vars(httpx.AsyncHTTPTransport)["handle_async_request"]}

    def unpatched(self) -> None:
        self.reset()
        self.instrumentor.instrument()

    def patched(self, package: str) -> None:
        import wrapt

        self.reset()
        if package in STAND_INS:
            for target in ("HTTPTransport.handle_request", "AsyncHTTPTransport.handle_async_request"):
                wrapt.wrap_function_wrapper("httpx", target, STAND_INS[package])
        else:  # inner first, as otel-cb-instrument orders them
            self.remove = apply_patches(package, "httpx")
        self.instrumentor.instrument()

    def reset(self) -> None:
        if self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.uninstrument()
        if self.remove is not None:
            self.remove()
            self.remove = None
        self.httpx.HTTPTransport.handle_request = self.originals["HTTPTransport"]
        self.httpx.AsyncHTTPTransport.handle_async_request = self.originals["AsyncHTTPTransport"]



def _child(quick: bool) -> str:
    packages = set_up()
    import httpx

    rounds, requests = (4, 100) if quick else (200, 50)
    sides = _Sides()
    switch: dict[str, Callable[[], None]] = {UNPATCHED: sides.unpatched}
    for package in [*packages, FLOOR]:
        switch[package] = lambda package=package: sides.patched(package)  # type: ignore[misc]
    with server_process() as base_url:
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
        results = timed_rounds(switch, batches, rounds, requests)
        sides.reset()
        layers = _layer_costs(httpx, url, packages, 2_000 if quick else 30_000)
        client.close()
        loop.run_until_complete(async_client.aclose())
        loop.close()

    lines = table("httpx", results, layers)
    lines.append("")
    lines.append(f"{rounds} ABBA rounds of {requests} keep-alive GETs per side against a loopback server in "
                 "another process. Both sides trace every request with opentelemetry-instrumentation-httpx. "
                 "*Extra wall time*: the median over rounds of patched/unpatched; *extra client CPU*: CPU time of "
                 "the client process per request, patched minus unpatched, median over rounds. *otel-cb layer "
                 "alone*: the patched wrapper around an inner transport that answers at once with a streamed "
                 "body, inside a recording span (routing, admission, span attributes, classification, body "
                 "wrapping and verdict), CPU time of the thread, median of paired batches; in parentheses the "
                 "part that is OpenTelemetry's own handling of the two span attributes. *attributes only*: a "
                 "wrapper in otel-cb's place that only sets those two attributes on the client span, as otel-cb "
                 "does: the floor any breaker that marks the span pays; the lines under the table compare "
                 "otel-cb with it, round by round. On a loaded machine the end-to-end figures carry noise of "
                 "the order of the differences.")
    return "\n".join(lines)


def _layer_costs(httpx: Any, url: str, packages: list[str], calls: int) -> dict[str, float]:
    """Per request: each package's patched wrapper, and OpenTelemetry's share of it (the two span attributes).

    The inner call answers at once with a streamed body, as ``HTTPTransport``
    does; the client's part (read the body, close the response) is on both
    sides.
    """
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

    def wrapped(package: str) -> Callable[[], None]:
        patch = importlib.import_module(f"{package}.integrations.httpx").otel_cb_patches()[0]
        handle_request = layer_of(package, patch)

        def call() -> None:
            response = handle_request(answer, None, (request,), {})
            response.read()
            response.close()

        return call

    return layer_costs(bare, {package: wrapped(package) for package in packages}, lambda side: None, calls)


def main(argv: list[str]) -> int:
    print(_child(quick=argv[:1] == ["quick"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
