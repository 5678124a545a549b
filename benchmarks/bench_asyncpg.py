"""asyncpg: what a breaker adds to a real query on loopback.

``await conn.fetchval("SELECT 1")`` on one connection to a local PostgreSQL,
with OpenTelemetry's asyncpg instrumentation on in both cases (an SDK tracer
provider that records every span), measured without otel-cb and with
``otel_cb.instrument()`` routing the database to a breaker. The two setups
alternate in short batches, many times, so drift and the neighbours' load hit
them alike; each time is the minimum over batches of the mean time per call, and the ratio is the median
over pairs of adjacent batches (loopback round trips on a shared machine are
noisy; pairing cancels drift). Two more rows time otel-cb's layer alone:
the patched method's wrapper around a no-op coroutine, free of I/O noise,
without and with a recording span. A third setup is the floor that any
breaker marking the span pays: a wrapper in otel-cb's place that only sets
the two span attributes, end to end and in the layer batches (OpenTelemetry's
own handling of the attributes). Targets: +3% end to end, 4 us for the layer.

Old against new: set ``OTEL_CB_BENCH_BASELINE`` to a copy of an earlier
``otel_cb`` package under another name (see ``bench_core``), and that copy's
wrapper is one more side in the same layer batches, with the new/old ratios.
Only the layer: the copy cannot patch asyncpg end to end beside the installed
package (its patches belong to the ``asyncpg`` plugin name, which the entry
point of the installed package holds)::

    mkdir -p /tmp/base && git archive main otel_cb | tar -x -C /tmp/base
    mv /tmp/base/otel_cb /tmp/base/otel_cb_main
    OTEL_CB_BENCH_BASELINE=/tmp/base/otel_cb_main .venv/bin/python -m benchmarks.run --only bench_asyncpg

The server is ``OTEL_CB_TEST_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/test``;
without one the section says so instead of a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from .bench_httpx import FLOOR, attributes_only

__all__ = ["TITLE", "run"]

TITLE = "asyncpg: protected query vs unprotected, both traced by OpenTelemetry"

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET = 0.03
LAYER_TARGET = 4e-6
BASELINE_ENV = "OTEL_CB_BENCH_BASELINE"
BREAKER = "bench_asyncpg_db"
UNPROTECTED = "unprotected"
NEW = "otel-cb"


async def _time_calls(conn: Any, calls: int) -> float:
    fetchval = conn.fetchval
    for _ in range(min(calls, 50)):  # warm-up: statement cache, branch predictors
        await fetchval("SELECT 1")
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            await fetchval("SELECT 1")
        return (time.perf_counter() - start) / calls
    finally:
        gc.enable()


class _Package:
    """One otel-cb package (this one, or the baseline copy) that the rounds switch on and off."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.root = importlib.import_module(name)
        self.integration = importlib.import_module(f"{name}.integrations.asyncpg")
        self.config = config
        self.breaker = self.root.CircuitBreaker(BREAKER)
        names = [ep.name for ep in entry_points(group="otel_cb")]
        if name == "otel_cb":
            self.disabled, self.plugins = [n for n in names if n != "asyncpg"], []
        else:
            # The entry points name this package's integration; the copy brings its own.
            self.disabled, self.plugins = names, [self.integration]

    def instrument(self) -> None:
        self.root.instrument(self.config, disabled=self.disabled, plugins=self.plugins)

    def uninstrument(self) -> None:
        self.root.uninstrument()

    def layer_wrapper(self) -> Callable[..., Any]:
        """The wrapper a patched ``Connection.fetchval`` runs (whatever this version calls its factory)."""
        module: ModuleType = self.integration
        if hasattr(module, "_on_connection"):
            return module._on_connection("fetchval")  # type: ignore[no-any-return]
        return module._protecting("fetchval", module._target_of_connection)  # type: ignore[no-any-return]


async def _own_cost(wrappers: dict[str, Callable[..., Any]], calls: int,
                    tracer: Any = None) -> tuple[dict[str, float], float]:
    """Each patched method's wrapper around a no-op coroutine: what otel-cb adds, without I/O noise.

    Goes through the same wrapper as a patched ``Connection.fetchval``
    (routing by the connection's address, admission, the awaitable, the
    verdict); each package must be instrumented with a breaker for the
    database. With ``tracer``, inside a recording span, as under
    OpenTelemetry's instrumentation: the breaker's attributes are then set on
    that span, and the second figure is what OpenTelemetry's own handling of
    those two attributes costs: the same batches through ``attributes_only``
    (only the attributes, then the call), timed among the others because alone
    in a tight loop they look half as dear. Timed in CPU time of this thread (the layer
    does no I/O), so other processes' load does not count; the collector is
    off during a batch. Each round times the bare batch and every wrapper's,
    in an order that alternates; each figure is the median over rounds of
    (wrapped - bare).
    """

    async def noop(*args: Any) -> int:
        return 1

    connection = SimpleNamespace(_addr=("127.0.0.1", 5432), _params=SimpleNamespace(database="test"))
    args: tuple[Any, ...] = ("SELECT 1",)
    kwargs: dict[str, Any] = {}

    async def bare(count: int) -> float:
        start = time.thread_time()
        for _ in range(count):
            await noop(*args)
        return time.thread_time() - start

    def batch_of(wrapper: Callable[..., Any]) -> Callable[[int], Any]:
        async def wrapped(count: int) -> float:
            start = time.thread_time()
            for _ in range(count):
                await wrapper(noop, connection, args, kwargs)
            return time.thread_time() - start
        return wrapped

    if tracer is not None:
        wrappers = {**wrappers, FLOOR: attributes_only}
    batches = {UNPROTECTED: bare, **{side: batch_of(wrapper) for side, wrapper in wrappers.items()}}
    order = list(batches)
    rounds, per_batch = 15, max(calls // 15, 50)
    span = tracer.start_as_current_span("bench") if tracer is not None else contextlib.nullcontext()
    differences: dict[str, list[float]] = {side: [] for side in wrappers}
    with span:
        for batch in batches.values():
            await batch(per_batch)
        for number in range(rounds):
            timings = {}
            gc.disable()
            try:
                for side in order if number % 2 == 0 else order[::-1]:
                    timings[side] = await batches[side](per_batch) / per_batch
            finally:
                gc.enable()
            for side in wrappers:
                differences[side].append(timings[side] - timings[UNPROTECTED])
    figures = {side: _median(values) for side, values in differences.items()}
    return figures, figures.pop(FLOOR, 0.0)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _baseline() -> str | None:
    """The package name of ``OTEL_CB_BENCH_BASELINE``'s copy, importable; None without one."""
    baseline = os.environ.get(BASELINE_ENV)
    if not baseline:
        return None
    path = Path(baseline).resolve()
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    return path.name


def run(quick: bool) -> str:
    """Measure and return the markdown table."""
    import asyncpg
    import wrapt
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    from otel_cb.integrations.asyncpg import db_target

    dsn = os.environ.get("OTEL_CB_TEST_POSTGRES_DSN") or DEFAULT_DSN
    calls, repeats = (200, 2) if quick else (500, 30)
    config = {"circuit_breakers": {BREAKER: {"match": {"db": [db_target(dsn)]}}},
              "auto_breakers": {"enabled": False}}
    packages = {NEW: _Package("otel_cb", config)}
    baseline = _baseline()
    if baseline is not None:
        packages[f"baseline ({baseline})"] = _Package(baseline, config)
    otel = AsyncPGInstrumentor()
    provider = TracerProvider()  # records every span; no exporter, so nothing leaves the process
    # The baseline copy is timed in the layer batches only (see the module docstring).
    sides = [UNPROTECTED, NEW, FLOOR]
    fetchval = vars(asyncpg.Connection)["fetchval"]
    results: dict[str, list[float]] = {side: [] for side in sides}

    async def measure() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            for number in range(repeats):
                for side in sides if number % 2 == 0 else sides[::-1]:
                    if otel.is_instrumented_by_opentelemetry:
                        otel.uninstrument()
                    package = packages.get(side)
                    if package is not None:
                        package.instrument()
                    if side == FLOOR:
                        wrapt.wrap_function_wrapper("asyncpg.connection", "Connection.fetchval", attributes_only)
                    # OpenTelemetry's wrapper goes on last, outside ours, as otel-cb-instrument orders them.
                    otel.instrument(tracer_provider=provider)
                    try:
                        results[side].append(await _time_calls(conn, calls))
                    finally:
                        otel.uninstrument()
                        if package is not None:
                            package.uninstrument()
                        asyncpg.Connection.fetchval = fetchval
        finally:
            await conn.close()

    for package in packages.values():
        package.root.registry.add(package.breaker)
    try:
        asyncio.run(measure())
        for package in packages.values():
            package.instrument()
        try:
            wrappers = {side: package.layer_wrapper() for side, package in packages.items()}
            layer_calls = 2_000 if quick else 45_000
            own, _ = asyncio.run(_own_cost(wrappers, layer_calls))
            own_traced, attributes = asyncio.run(_own_cost(wrappers, layer_calls, provider.get_tracer("bench")))
        finally:
            for package in packages.values():
                package.uninstrument()
    except (OSError, asyncpg.PostgresError) as exc:
        return f"Skipped: no PostgreSQL at the benchmark DSN ({type(exc).__name__})."
    finally:
        for package in packages.values():
            package.root.registry.remove(BREAKER)
    assert packages[NEW].breaker.snapshot().calls["success"] > repeats * calls, "the protected runs missed the breaker"
    query = _median(results[UNPROTECTED])

    def ratio(side: str, against: str = UNPROTECTED) -> float:
        # Each batch against the other side's batch of the same round: drift cancels out.
        return _median([p / u for u, p in zip(results[against], results[side], strict=True)])

    lines = [
        "| setup | time per `fetchval('SELECT 1')` (best batch) | vs unprotected (median of paired batches) |",
        "|---|---|---|",
        f"| OpenTelemetry only | {min(results[UNPROTECTED]) * 1e6:.1f} us | 1.000 |",
    ]
    lines.append(f"| OpenTelemetry + otel-cb breaker | {min(results[NEW]) * 1e6:.1f} us | {ratio(NEW):.3f} |")
    lines.append(f"| OpenTelemetry + a wrapper that only sets the two attributes (floor) | "
                 f"{min(results[FLOOR]) * 1e6:.1f} us | {ratio(FLOOR):.3f} |")
    for side in packages:
        suffix = "" if side == NEW else f", {side}"
        lines.append(f"| otel-cb's layer alone (patched wrapper, no I/O, no span){suffix} | {own[side] * 1e6:.2f} us "
                     f"| {own[side] / query:.3f} of a query |")
        lines.append(f"| the same inside a recording span (attributes set){suffix} | {own_traced[side] * 1e6:.2f} us, "
                     f"of which OpenTelemetry's attribute handling {attributes * 1e6:.2f} us "
                     f"| {own_traced[side] / query:.3f} of a query |")
    overhead = ratio(NEW) - 1.0
    lines += [
        "",
        f"Target: a protected call costs at most {TARGET:.0%} more: {overhead:+.1%}, "
        f"{'met' if overhead <= TARGET else 'missed'}; the layer in a recording span at most "
        f"{LAYER_TARGET * 1e6:.0f} us: {'met' if own_traced[NEW] <= LAYER_TARGET else 'missed'} "
        f"({calls} calls x {repeats} paired repeats; layer: median of 15 paired batches).",
    ]
    lines.append(f"otel-cb beyond OpenTelemetry's attributes (otel-cb / floor, median of paired batches): "
                 f"{ratio(NEW, FLOOR) - 1:+.1%}; layer {(own_traced[NEW] - attributes) * 1e6:.2f} us.")
    for side in packages:
        if side != NEW:
            lines.append(f"New against {side}: layer {own[NEW] / own[side]:.2f}x without a span, "
                         f"{own_traced[NEW] / own_traced[side]:.2f}x in a recording span.")
    return "\n".join(lines)
