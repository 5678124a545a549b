"""asyncpg keeps its own call shapes under otel-cb: what raises at call time still does.

asyncpg's ``connresource.guarded`` methods (prepared statements, cursors,
transactions) check the connection synchronously and raise
``InterfaceError`` when it went back to the pool or was closed; argument
binding raises ``TypeError`` at call time too. The patched methods must do
the same, and look the same to ``inspect``. Each test runs plain and under
``otel_cb.instrument()`` with a breaker routed to the database, against a
real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import warnings
from collections.abc import Iterator
from importlib.metadata import entry_points

import asyncpg
import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from otel_cb.integrations.asyncpg import db_target, otel_cb_patches
from tests.postgres import postgres_cluster, postgres_dsn

__all__ = ["postgres_cluster", "postgres_dsn"]  # fixtures, re-exported for pytest

RELEASED = r"released back to the pool"


@contextlib.contextmanager
def maybe_instrumented(on: bool, dsn: str, name: str) -> Iterator[CircuitBreaker]:
    """``instrument()`` with only the asyncpg plugin and a breaker for ``dsn`` (or nothing, when off)."""
    breaker = CircuitBreaker(name, CircuitBreakerConfig(minimum_calls=100))
    if not on:
        yield breaker
        return
    others = [ep.name for ep in entry_points(group="otel_cb") if ep.name != "asyncpg"]
    otel_cb.registry.add(breaker)
    try:
        otel_cb.instrument({"circuit_breakers": {name: {"match": {"db": [db_target(dsn)]}}},
                            "auto_breakers": {"enabled": False}}, disabled=others)
        yield breaker
    finally:
        otel_cb.uninstrument()
        otel_cb.registry.remove(name)


@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "otel-cb"])
def test_released_connection_resources_raise_at_call_time(postgres_dsn: str, instrumented: bool) -> None:
    """asyncpg's own tests/test_pool.py::TestPool::test_pool_11, its call-time part."""

    async def main() -> None:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as con:
                ps = await con.prepare("SELECT 1")
                async with con.transaction():
                    cur = await con.cursor("SELECT 1")
                    ps_cur = await ps.cursor()
                txn = con.transaction()
            with warnings.catch_warnings():
                # A call that returned a coroutine would warn "never awaited": that is the bug.
                warnings.simplefilter("error", RuntimeWarning)
                for meth in ("fetchval", "fetchrow", "fetch", "explain", "fetchmany", "executemany"):
                    with pytest.raises(asyncpg.InterfaceError, match=rf"PreparedStatement\.{meth}.*{RELEASED}"):
                        getattr(ps, meth)()  # not awaited: raised by the call itself
                for c in (cur, ps_cur):
                    for meth in ("fetch", "fetchrow", "forward"):
                        with pytest.raises(asyncpg.InterfaceError, match=rf"Cursor\.{meth}.*{RELEASED}"):
                            getattr(c, meth)()
                for meth in ("start", "commit", "rollback"):
                    with pytest.raises(asyncpg.InterfaceError, match=rf"Transaction\.{meth}.*{RELEASED}"):
                        getattr(txn, meth)()
        finally:
            await pool.close()

    with maybe_instrumented(instrumented, postgres_dsn, "shape_released_db") as breaker:
        asyncio.run(main())
    if instrumented:
        # The breaker saw the start-up, the acquire, prepare and the cursors, and none of the refused calls.
        calls = breaker.snapshot().calls
        assert calls["success"] >= 4 and calls["failure"] == 0 and calls["ignored"] == 0


@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "otel-cb"])
def test_closed_connection_and_bad_arguments_raise_at_call_time(postgres_dsn: str, instrumented: bool) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        statement = await conn.prepare("SELECT $1::int")
        cursor_iter = conn.cursor("SELECT 1").__aiter__()
        with pytest.raises(TypeError):
            conn.fetch()  # type: ignore[call-arg]  # no query: binding fails before any coroutine exists
        with pytest.raises(TypeError):
            statement.fetchval(1, 2, 3, 4, column=0, bogus=1)  # type: ignore[call-arg]
        await conn.close()
        for meth in ("fetchval", "fetchrow", "fetch"):
            with pytest.raises(asyncpg.InterfaceError, match=r"connection is closed"):
                getattr(statement, meth)(1)
        with pytest.raises(asyncpg.InterfaceError, match=r"connection is closed"):
            cursor_iter.__anext__()

    with maybe_instrumented(instrumented, postgres_dsn, "shape_closed_db"):
        asyncio.run(main())


def test_a_rejected_call_is_refused_on_await_and_leaves_no_coroutine_behind(postgres_dsn: str) -> None:
    async def main(breaker: CircuitBreaker) -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            statement = await conn.prepare("SELECT 1")
            breaker.force_open()
            pending = statement.fetchval()  # a call while open is made, as without otel-cb
            assert inspect.isawaitable(pending)
            with pytest.raises(CircuitOpenError):
                await pending
            breaker.reset()
            assert await statement.fetchval() == 1
        finally:
            await conn.close()

    with maybe_instrumented(True, postgres_dsn, "shape_rejected_db") as breaker, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the refused method's coroutine is closed, not dropped
        asyncio.run(main(breaker))
    assert breaker.snapshot().calls["rejected"] == 1


def test_patched_methods_look_like_the_originals_to_inspect() -> None:
    import wrapt

    patches = otel_cb_patches()
    originals = {}
    for patch in patches:
        owner = wrapt.resolve_path(__import__(patch.module, fromlist=["_"]), patch.target)[2]
        originals[(patch.module, patch.target)] = owner
    with maybe_instrumented(True, "postgresql://x@127.0.0.1:1/none", "shape_inspect_db"):
        for patch in patches:
            module = __import__(patch.module, fromlist=["_"])
            patched = wrapt.resolve_path(module, patch.target)[2]
            original = originals[(patch.module, patch.target)]
            assert patched is not original, patch.target
            assert patched.__wrapped__ is original
            assert patched.__name__ == original.__name__
            assert inspect.iscoroutinefunction(patched) == inspect.iscoroutinefunction(original), patch.target
            assert inspect.signature(patched) == inspect.signature(original), patch.target


TWO_NAMES = """
import asyncio, gc, sys, warnings
import wrapt
import otel_cb
otel_cb.instrument({"circuit_breakers": {"defaults": {"failure_threshold": 1, "adaptive": False}}})
import asyncpg  # imported after instrument(): the post-import hooks patch asyncpg.connection first

def layers(function):
    count = 0
    while isinstance(function, wrapt.BaseObjectProxy):
        count += otel_cb._patching.switch_of(function) is not None
        function = function.__wrapped__
    return count, function

assert asyncpg.connect is asyncpg.connection.connect
assert layers(asyncpg.connect)[0] == 1, layers(asyncpg.connect)
original = layers(asyncpg.connect)[1]

async def main():
    for expected in (OSError, otel_cb.CircuitOpenError, otel_cb.CircuitOpenError):
        try:
            await asyncpg.connect("postgresql://postgres@127.0.0.1:1/x", timeout=5)
        except expected:
            pass
    gc.collect()

asyncio.run(main())
otel_cb.uninstrument()
assert asyncpg.connect is original and asyncpg.connection.connect is original
print("ok")
"""


def test_connect_under_its_two_names_is_one_layer_and_a_refusal_leaves_no_coroutine_unawaited() -> None:
    # asyncpg.connect is asyncpg.connection.connect: two patches, one function. Two layers made the
    # outer one, refusing, drop the inner one's already created coroutine: "never awaited" warnings.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", TWO_NAMES], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "never awaited" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
