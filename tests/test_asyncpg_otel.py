"""The asyncpg integration with OpenTelemetry's asyncpg instrumentation, instrumented and uninstrumented in any order.

Runs in a subprocess: OpenTelemetry's global tracer provider can be set only
once per process and both sides patch asyncpg for the whole process. Run as
``python -m tests.test_asyncpg_otel DSN`` this module is the scenario itself:
it prints one JSON line with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.postgres import postgres_cluster, postgres_dsn
from tests.test_httpx_otel import in_memory_tracing, in_order

__all__ = ["postgres_cluster", "postgres_dsn"]  # fixtures, re-exported for pytest

ROOT = Path(__file__).resolve().parent.parent
ORDERS = ("otel_first", "otel_cb_first")


def run_scenario(dsn: str, first: str, unfirst: str, rounds: int) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "tests.test_asyncpg_otel", dsn, first, unfirst, str(rounds)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OTEL_SDK_DISABLED": "false"})
    assert result.returncode == 0, result.stdout + result.stderr
    seen: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen


def check_round(seen: dict[str, Any], uninstrumented_first: str) -> None:
    assert seen["outcomes"] == ["ok", "timeout", "rejected"]
    healthy, timed_out, rejected = seen["spans"]
    # OpenTelemetry's span is the outer one whichever side patched first: it covers the breaker's decisions.
    for span in seen["spans"]:
        assert span["attributes"]["circuit_breaker.name"] == "orders_db"
    assert healthy["attributes"]["circuit_breaker.state"] == "closed"
    assert healthy["status"] != "ERROR"
    assert timed_out["status"] == "ERROR"
    assert "circuit_breaker.state_change" in timed_out["events"]
    assert rejected["attributes"]["circuit_breaker.state"] == "open"
    assert rejected["status"] == "ERROR"
    assert "circuit_breaker.rejected" in rejected["events"]
    # Either side's uninstrument leaves the other one working, then both are gone.
    after_one, after_both = seen["after_one"], seen["after_both"]
    if uninstrumented_first == "otel_first":
        assert after_one == {"spans": 0, "protected": True}
    else:
        assert after_one == {"spans": 1, "protected": False}
    assert after_both == {"spans": 0, "protected": False}


@pytest.mark.parametrize("instrumented_first", ORDERS)
@pytest.mark.parametrize("uninstrumented_first", ORDERS)
def test_database_span_carries_the_breaker_in_any_order(postgres_dsn: str, instrumented_first: str,
                                                        uninstrumented_first: str) -> None:
    (seen,) = run_scenario(postgres_dsn, instrumented_first, uninstrumented_first, 1)
    check_round(seen, uninstrumented_first)


@pytest.mark.parametrize("instrumented_first", ORDERS)
@pytest.mark.parametrize("uninstrumented_first", ORDERS)
def test_both_uninstrumented_leave_asyncpg_original_in_any_order(postgres_dsn: str, instrumented_first: str,
                                                                 uninstrumented_first: str) -> None:
    # OpenTelemetry's unwrap() re-sets the class attribute from a bound lookup, which copies our inner
    # layer to the top when it goes first: that copy must go too, leaving the very original function.
    (seen,) = run_scenario(postgres_dsn, instrumented_first, uninstrumented_first, 1)
    assert seen["ours_left"] == [], seen["ours_left"]
    assert seen["not_original"] == [], seen["not_original"]


@pytest.mark.parametrize("instrumented_first", ORDERS)
@pytest.mark.parametrize("uninstrumented_first", ORDERS)
def test_instrumenting_again_after_both_uninstrumented_protects_again(postgres_dsn: str, instrumented_first: str,
                                                                      uninstrumented_first: str) -> None:
    for seen in run_scenario(postgres_dsn, instrumented_first, uninstrumented_first, 2):
        check_round(seen, uninstrumented_first)
        assert seen["ours_left"] == [] and seen["not_original"] == []


# -- the scenario, run in a fresh interpreter -------------------------------------------------


def _main(dsn: str, first: str, unfirst: str, count: int) -> None:  # pragma: no cover - runs in the subprocess
    import asyncpg
    import asyncpg.connection
    import asyncpg.cursor
    import asyncpg.pool
    import asyncpg.prepared_stmt
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    import otel_cb
    from otel_cb import CircuitOpenError, registry
    from otel_cb._patching import switch_of
    from otel_cb.integrations.asyncpg import db_target

    classes = (asyncpg.connection.Connection, asyncpg.prepared_stmt.PreparedStatement, asyncpg.cursor.Cursor,
               asyncpg.cursor.CursorIterator, asyncpg.pool.Pool)
    originals = {cls: dict(vars(cls)) for cls in classes}
    exporter, provider, disabled = in_memory_tracing("asyncpg")
    config = {"circuit_breakers": {"orders_db": {
        "failure_threshold": 1, "open_timeout": "60s", "slow_call_duration": None,
        "match": {"db": [db_target(dsn)]}}}}

    async def query(conn: Any, sql: str, timeout: float | None = None) -> str:
        try:
            await conn.fetchval(sql, timeout=timeout)
        except CircuitOpenError:
            return "rejected"
        except asyncio.TimeoutError:
            return "timeout"
        return "ok"

    def database_spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name.startswith("SELECT")]

    async def run(first: str, unfirst: str) -> dict[str, Any]:
        otel = AsyncPGInstrumentor()
        for step in in_order(first, lambda: otel.instrument(tracer_provider=provider),
                             lambda: otel_cb.instrument(config, disabled=disabled)):
            step()
        conn = await asyncpg.connect(dsn)
        try:
            exporter.clear()
            outcomes = [await query(conn, "SELECT 1"), await query(conn, "SELECT pg_sleep(1)", 0.05),
                        await query(conn, "SELECT 2")]
            spans = [{"attributes": dict(s.attributes or {}), "events": [e.name for e in s.events],
                      "status": s.status.status_code.name} for s in database_spans()]
            breaker = registry.get("orders_db")
            assert breaker is not None
            breaker.reset()
            after = []
            for step in in_order(unfirst, otel.uninstrument, otel_cb.uninstrument):
                step()
                exporter.clear()
                before = sum(breaker.snapshot().calls.values())
                assert await query(conn, "SELECT 3") == "ok"
                after.append({"spans": len(database_spans()),
                              "protected": sum(breaker.snapshot().calls.values()) > before})
        finally:
            conn.terminate()
        return {"outcomes": outcomes, "spans": spans, "after_one": after[0], "after_both": after[1],
                "ours_left": ours_left(), "not_original": not_original()}

    def not_original() -> list[str]:
        # Every class attribute that is not, by identity, what it was before anything was instrumented.
        return [f"{cls.__name__}.{name}" for cls in classes
                for name in originals[cls].keys() | vars(cls).keys()
                if vars(cls).get(name) is not originals[cls].get(name)]

    def ours_left() -> list[str]:
        # Every wrapt layer still on asyncpg's classes whose wrapper is otel-cb's.
        left = []
        for cls in classes:
            for name, node in vars(cls).items():
                for _ in range(8):
                    if not hasattr(node, "_self_wrapper"):
                        break
                    if switch_of(node) is not None:
                        left.append(f"{cls.__name__}.{name}")
                    node = node.__wrapped__
        return left

    async def rounds(first: str, unfirst: str, count: int) -> list[dict[str, Any]]:
        return [await run(first, unfirst) for _ in range(count)]

    print(json.dumps(asyncio.run(rounds(first, unfirst, count))))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
