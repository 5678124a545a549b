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
without and with a recording span, with OpenTelemetry's own handling of the
two span attributes timed apart. Targets: +3% end to end, 4 us for the layer.

The server is ``OTEL_CB_TEST_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/test``;
without one the section says so instead of a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from importlib.metadata import entry_points
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "asyncpg: protected query vs unprotected, both traced by OpenTelemetry"

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET = 0.03
LAYER_TARGET = 4e-6


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


async def _own_cost(calls: int, tracer: Any = None) -> tuple[float, float]:
    """The patched method's wrapper around a no-op coroutine: what otel-cb adds, without I/O noise.

    Goes through the same wrapper as a patched ``Connection.fetchval``
    (routing by the connection's address, admission, the awaitable, the
    verdict); otel-cb must be instrumented with a breaker for the database.
    With ``tracer``, inside a recording span, as under OpenTelemetry's
    instrumentation: the breaker's attributes are then set on that span, and
    the second figure is what OpenTelemetry's own handling of those two
    attributes costs. Timed in CPU time of this thread (the layer does no
    I/O), so other processes' load does not count. Batches alternate bare / wrapped; each figure is the
    median over pairs of their difference.
    """
    from types import SimpleNamespace

    from otel_cb.integrations.asyncpg import _protecting, _target_of_connection

    async def noop(*args: Any) -> int:
        return 1

    wrapper = _protecting("fetchval", _target_of_connection)
    connection = SimpleNamespace(_addr=("127.0.0.1", 5432), _params=SimpleNamespace(database="test"))
    args: tuple[Any, ...] = ("SELECT 1",)
    kwargs: dict[str, Any] = {}

    async def bare(count: int) -> float:
        start = time.thread_time()
        for _ in range(count):
            await noop(*args)
        return time.thread_time() - start

    async def wrapped(count: int) -> float:
        start = time.thread_time()
        for _ in range(count):
            await wrapper(noop, connection, args, kwargs)
        return time.thread_time() - start

    rounds, per_batch = 15, max(calls // 15, 50)
    span = tracer.start_as_current_span("bench") if tracer is not None else contextlib.nullcontext()
    differences, attributes = [], []
    with span as current:
        await wrapped(per_batch)
        for _ in range(rounds):
            differences.append((await wrapped(per_batch) - await bare(per_batch)) / per_batch)
            if current is not None:
                values = {"circuit_breaker.name": "bench_asyncpg_db", "circuit_breaker.state": "closed"}
                start = time.thread_time()
                for _ in range(per_batch):
                    current.set_attributes(values)
                attributes.append((time.thread_time() - start) / per_batch)
    return _median(differences), _median(attributes) if attributes else 0.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def run(quick: bool) -> str:
    """Measure and return the markdown table."""
    import asyncpg
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    import otel_cb
    from otel_cb import CircuitBreaker
    from otel_cb.integrations.asyncpg import db_target

    dsn = os.environ.get("OTEL_CB_TEST_POSTGRES_DSN") or DEFAULT_DSN
    calls, repeats = (200, 2) if quick else (500, 30)
    others = [ep.name for ep in entry_points(group="otel_cb") if ep.name != "asyncpg"]
    breaker = CircuitBreaker("bench_asyncpg_db")
    config = {"circuit_breakers": {breaker.name: {"match": {"db": [db_target(dsn)]}}},
              "auto_breakers": {"enabled": False}}
    otel = AsyncPGInstrumentor()
    provider = TracerProvider()  # records every span; no exporter, so nothing leaves the process
    results: dict[str, list[float]] = {"unprotected": [], "protected": []}

    async def measure() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            for _ in range(repeats):
                for setup in ("unprotected", "protected"):
                    if otel.is_instrumented_by_opentelemetry:
                        otel.uninstrument()
                    if setup == "protected":
                        otel_cb.instrument(config, disabled=others)
                    # OpenTelemetry's wrapper goes on last, outside ours, as otel-cb-instrument orders them.
                    otel.instrument(tracer_provider=provider)
                    try:
                        results[setup].append(await _time_calls(conn, calls))
                    finally:
                        otel.uninstrument()
                        otel_cb.uninstrument()
        finally:
            await conn.close()

    otel_cb.registry.add(breaker)
    try:
        asyncio.run(measure())
        otel_cb.instrument(config, disabled=others)
        try:
            own, _ = asyncio.run(_own_cost(2_000 if quick else 45_000))
            own_traced, attributes = asyncio.run(_own_cost(2_000 if quick else 45_000, provider.get_tracer("bench")))
        finally:
            otel_cb.uninstrument()
    except (OSError, asyncpg.PostgresError) as exc:
        return f"Skipped: no PostgreSQL at the benchmark DSN ({type(exc).__name__})."
    finally:
        otel_cb.registry.remove(breaker.name)
    assert breaker.snapshot().calls["success"] > 0, "the protected runs did not go through the breaker"
    bare, protected = min(results["unprotected"]), min(results["protected"])
    # Each protected batch against the unprotected batch just before it: drift cancels out.
    ratio = _median([p / u for u, p in zip(results["unprotected"], results["protected"], strict=True)])
    query = _median(results["unprotected"])
    overhead = ratio - 1.0
    return "\n".join([
        "| setup | time per `fetchval('SELECT 1')` (best batch) | vs unprotected (median of paired batches) |",
        "|---|---|---|",
        f"| OpenTelemetry only | {bare * 1e6:.1f} us | 1.000 |",
        f"| OpenTelemetry + otel-cb breaker | {protected * 1e6:.1f} us | {ratio:.3f} |",
        f"| otel-cb's layer alone (patched wrapper, no I/O, no span) | {own * 1e6:.2f} us "
        f"| {own / query:.3f} of a query |",
        f"| the same inside a recording span (attributes set) | {own_traced * 1e6:.2f} us, of which "
        f"OpenTelemetry's attribute handling {attributes * 1e6:.2f} us | {own_traced / query:.3f} of a query |",
        "",
        f"Target: a protected call costs at most {TARGET:.0%} more: {overhead:+.1%}, "
        f"{'met' if overhead <= TARGET else 'missed'}; the layer in a recording span at most "
        f"{LAYER_TARGET * 1e6:.0f} us: {'met' if own_traced <= LAYER_TARGET else 'missed'} "
        f"({calls} calls x {repeats} paired repeats; layer: median of 15 paired batches).",
    ])
