"""asyncpg: what a breaker adds to a real query on loopback.

``await conn.fetchval("SELECT 1")`` on one connection to a local PostgreSQL,
with OpenTelemetry's asyncpg instrumentation on in both cases (an SDK tracer
provider that records every span), measured without otel-cb and with
``otel_cb.instrument()`` routing the database to a breaker. The two setups
alternate in short batches, many times, so drift and the neighbours' load hit
them alike; each figure is the minimum over batches of the mean time per call, and the ratio is the median
over pairs of adjacent batches (loopback round trips on a shared machine are
noisy; pairing cancels drift). A third row times the breaker's own path
around a no-op coroutine, free of I/O noise, without and with a recording
span (setting ``circuit_breaker.name`` / ``.state`` on an SDK span is most of it).

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


async def _own_cost(calls: int, tracer: Any = None) -> float:
    """The protected-call path alone around a no-op coroutine: what otel-cb adds, without I/O noise.

    With ``tracer``, inside a recording span, as under OpenTelemetry's
    instrumentation: the breaker's attributes are then set on that span.
    """
    from otel_cb import CircuitBreaker
    from otel_cb.integrations.asyncpg import _call, _protected

    async def noop() -> int:
        return 1

    breaker = CircuitBreaker("bench_asyncpg_own_cost")
    call = _call("127.0.0.1:5432/test", "fetchval")
    best = float("inf")
    span = tracer.start_as_current_span("bench") if tracer is not None else contextlib.nullcontext()
    with span:
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                await noop()
            bare = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(calls):
                await _protected(call, breaker, None, noop())
            best = min(best, (time.perf_counter() - start - bare) / calls)
    return best


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
    except (OSError, asyncpg.PostgresError) as exc:
        return f"Skipped: no PostgreSQL at the benchmark DSN ({type(exc).__name__})."
    finally:
        otel_cb.registry.remove(breaker.name)
    assert breaker.snapshot().calls["success"] > 0, "the protected runs did not go through the breaker"
    bare, protected = min(results["unprotected"]), min(results["protected"])
    # Each protected batch against the unprotected batch just before it: drift cancels out.
    ratios = sorted(p / u for u, p in zip(results["unprotected"], results["protected"], strict=True))
    ratio = ratios[len(ratios) // 2]
    own = asyncio.run(_own_cost(2_000 if quick else 50_000))
    own_traced = asyncio.run(_own_cost(2_000 if quick else 50_000, provider.get_tracer("bench")))
    overhead = ratio - 1.0
    return "\n".join([
        "| setup | time per `fetchval('SELECT 1')` (best batch) | vs unprotected (median of paired batches) |",
        "|---|---|---|",
        f"| OpenTelemetry only | {bare * 1e6:.1f} us | 1.000 |",
        f"| OpenTelemetry + otel-cb breaker | {protected * 1e6:.1f} us | {ratio:.3f} |",
        f"| the breaker's own path, no I/O, no span | {own * 1e6:.2f} us | {own / bare:.3f} of a query |",
        f"| the same inside a recording span (attributes set) | {own_traced * 1e6:.2f} us "
        f"| {own_traced / bare:.3f} of a query |",
        "",
        f"Target: a protected call costs at most {TARGET:.0%} more: {overhead:+.1%}, "
        f"{'met' if overhead <= TARGET else 'missed'} ({calls} calls x {repeats} repeats).",
    ])
