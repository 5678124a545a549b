"""asyncpg integration: destinations, classification, settings, ResilientPool and auto-patching.

Fault scenarios against a server that stops, refuses, times out or vanishes
behind a proxy are in ``test_asyncpg_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState
from otel_cb.integrations import asyncpg as integration
from otel_cb.integrations._asyncpg_policy import connection_target
from otel_cb.integrations.asyncpg import FailureRules, ResilientPool, db_target, validate_settings
from otel_cb.plugin import Call, hookimpl
from tests.conftest import FakeClock
from tests.postgres import postgres_cluster, postgres_dsn

__all__ = ["postgres_cluster", "postgres_dsn"]  # fixtures, re-exported for pytest

ROOT = Path(__file__).resolve().parent.parent
exceptions = asyncpg.exceptions


def config(**overrides: object) -> CircuitBreakerConfig:
    values: dict[str, object] = {"failure_threshold": 3, "minimum_calls": 100, "open_timeout": 10.0,
                                 "half_open_max_calls": 1, "success_threshold": 1, "slow_call_duration": None}
    values.update(overrides)
    return CircuitBreakerConfig(**values)  # type: ignore[arg-type]


# -- destinations -----------------------------------------------------------------


@pytest.mark.parametrize(("dsn", "kwargs", "expected"), [
    ("postgresql://svc:s3cret@DB.internal:6432/incidents?sslmode=require", {}, "db.internal:6432/incidents"),
    ("postgres://svc@db/incidents", {}, "db:5432/incidents"),
    ("postgresql://svc:pw@h1:5432,h2:5433/app", {}, "h1:5432,h2:5433/app"),
    ("postgresql://[::1]:5433/app", {}, "[::1]:5433/app"),
    ("postgresql:///app?host=10.0.0.7&port=6000", {}, "10.0.0.7:6000/app"),
    ("postgresql://svc:pw@db:5432/app", {"host": "other", "port": 7000, "database": "x"}, "other:7000/x"),
    ("db:5432/incidents", {}, "db:5432/incidents"),
    (None, {"host": "10.0.0.5", "database": "app"}, "10.0.0.5:5432/app"),
    ("postgresql://alice:pw@db:5432", {}, "db:5432/alice"),
])
def test_db_target_is_host_port_dbname_without_credentials(dsn, kwargs, expected, monkeypatch) -> None:
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    target = db_target(dsn, **kwargs)
    assert target == expected
    assert "s3cret" not in target and "svc" not in target and "sslmode" not in target


def test_db_target_falls_back_to_the_libpq_environment(monkeypatch) -> None:
    monkeypatch.setenv("PGHOST", "pg.example")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGDATABASE", "orders")
    assert db_target() == "pg.example:6543/orders"


def test_connection_target_from_tcp_and_unix_socket_addresses() -> None:
    assert connection_target(("127.0.0.1", 5432), "test") == "127.0.0.1:5432/test"
    assert connection_target("/run/postgresql/.s.PGSQL.5433", "test") == "/run/postgresql:5433/test"


def test_db_target_agrees_with_the_config_loaders_match_patterns() -> None:
    from otel_cb._settings import normalize_pattern

    for dsn in ("postgresql://u:p@DB:5432/incidents", "postgresql://db/incidents", "db:6432/x"):
        assert db_target(dsn) == normalize_pattern("db", dsn)


# -- classification ---------------------------------------------------------------


@pytest.mark.parametrize("error", [
    exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    exceptions.TooManyConnectionsError("too many connections for role"),
    exceptions.CannotConnectNowError("the database system is starting up"),
    exceptions.AdminShutdownError("terminating connection due to administrator command"),
    exceptions.CrashShutdownError("crash"),
    exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    asyncio.TimeoutError(),
    ConnectionRefusedError(111, "refused"),
    OSError("unreachable"),
])
def test_database_failures_count(error: BaseException) -> None:
    assert FailureRules().verdict(error) == "failure"


@pytest.mark.parametrize("error", [
    exceptions.PostgresSyntaxError("syntax error at or near"),
    exceptions.UndefinedTableError('relation "nope" does not exist'),
    exceptions.UniqueViolationError("duplicate key"),
    exceptions.ForeignKeyViolationError("violates foreign key"),
    exceptions.InvalidTextRepresentationError("invalid input syntax for type integer"),
    exceptions.DivisionByZeroError("division by zero"),
    exceptions.SerializationError("could not serialize"),
    exceptions.InterfaceError("cannot perform operation: another operation is in progress"),
    ValueError("bad argument"),
])
def test_client_caused_errors_are_ignored(error: BaseException) -> None:
    assert FailureRules().verdict(error) == "ignored"


def test_settings_replace_and_override_the_default_sqlstates() -> None:
    rules = FailureRules.from_settings("db", {"failure_sqlstates": ["08", "40P01"], "ignore_sqlstates": ["08006"]})
    assert rules.verdict(exceptions.DeadlockDetectedError("deadlock")) == "failure"
    assert rules.verdict(exceptions.ConnectionDoesNotExistError("gone")) == "failure"
    assert rules.verdict(exceptions.ConnectionFailureError("failed")) == "ignored"  # 08006 ignored
    assert rules.verdict(exceptions.TooManyConnectionsError("x")) == "ignored"  # 53 no longer listed
    no_timeouts = FailureRules.from_settings("db", {"ignore_sqlstates": ["57014"]})
    assert no_timeouts.verdict(exceptions.QueryCanceledError("timeout")) == "ignored"
    assert no_timeouts.verdict(exceptions.AdminShutdownError("shutdown")) == "failure"


@pytest.mark.parametrize(("section", "field", "value"), [
    ({"failure_sqlstates": "08"}, "failure_sqlstates", "'08'"),
    ({"failure_sqlstates": ["8"]}, "failure_sqlstates", "'8'"),
    ({"ignore_sqlstates": [57014]}, "ignore_sqlstates", "57014"),
])
def test_bad_settings_name_the_field_the_value_and_what_is_allowed(section, field, value) -> None:
    with pytest.raises(ValueError) as info:
        validate_settings("orders_db", section)
    message = str(info.value)
    assert f"circuit_breakers.orders_db.{field}" in message
    assert value in message
    assert "SQLSTATE" in message


def test_config_loader_validates_the_database_keys() -> None:
    from otel_cb._settings import load

    with pytest.raises(ValueError, match="ignore_sqlstates"):
        load({"circuit_breakers": {"orders_db": {"ignore_sqlstates": ["nope!"]}}})
    settings = load({"circuit_breakers": {"orders_db": {"failure_sqlstates": ["08"]}}})
    assert [section.name for section in settings.breakers] == ["orders_db"]


def test_every_patch_target_exists_in_the_installed_asyncpg() -> None:
    patches = integration.otel_cb_patches()
    assert patches == integration.otel_cb_patches()  # the same patches every time
    for patch in patches:
        owner: object = importlib.import_module(patch.module)
        *path, name = patch.target.split(".")
        for part in path:
            owner = getattr(owner, part)
        assert callable(getattr(owner, name)), patch
        assert patch.integration == "asyncpg"


def test_loading_the_plugin_imports_neither_asyncpg_nor_opentelemetry() -> None:
    code = ("import sys, otel_cb.integrations.asyncpg as m; m.otel_cb_patches(); "
            "print([n for n in sys.modules if n.split('.')[0] in ('asyncpg', 'opentelemetry')])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# -- ResilientPool against a real server ----------------------------------------------


def test_resilient_pool_runs_queries_and_callables(postgres_dsn: str) -> None:
    breaker = CircuitBreaker("pool_basics", config())

    async def main() -> None:
        pool = await ResilientPool.create(postgres_dsn, breaker=breaker, min_size=1, max_size=2)
        try:
            assert await pool.fetchval("SELECT 40 + $1::int", 2) == 42
            assert [r["n"] for r in await pool.fetch("SELECT generate_series(1, 3) AS n")] == [1, 2, 3]
            row = await pool.fetchrow("SELECT 'x' AS v")
            assert row is not None and row["v"] == "x"
            assert await pool.execute("SELECT 1") == "SELECT 1"
            assert await pool.execute(lambda conn: conn.fetchval("SELECT 7")) == 7
            assert await pool.transaction(lambda conn: conn.fetchval("SELECT txid_current() > 0")) is True
            assert pool.is_healthy and pool.circuit_state is CircuitState.CLOSED
            assert isinstance(pool, otel_cb.CircuitProtected)
        finally:
            await pool.close()

    asyncio.run(main())
    snapshot = breaker.snapshot()
    assert snapshot.calls["success"] == 7  # start-up + six operations, one call each
    assert snapshot.calls["failure"] == 0


def test_client_errors_do_not_open_the_breaker(postgres_dsn: str) -> None:
    breaker = CircuitBreaker("pool_client_errors", config(failure_threshold=1))
    table = f"t_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        pool = await ResilientPool.create(postgres_dsn, breaker=breaker, min_size=1, max_size=1)
        try:
            await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
            await pool.execute(f"INSERT INTO {table} VALUES (1)")
            for query, error in [("SELEC 1", exceptions.PostgresSyntaxError),
                                 ("SELECT * FROM no_such_table_here", exceptions.UndefinedTableError),
                                 (f"INSERT INTO {table} VALUES (1)", exceptions.UniqueViolationError),
                                 ("SELECT 'abc'::int", exceptions.InvalidTextRepresentationError)]:
                with pytest.raises(error):
                    await pool.execute(query)
            assert breaker.state is CircuitState.CLOSED
            await pool.execute(f"DROP TABLE {table}")
        finally:
            await pool.close()

    asyncio.run(main())
    assert breaker.snapshot().calls["ignored"] == 4


def test_resilient_pool_refuses_to_start_while_open(postgres_dsn: str) -> None:
    breaker = CircuitBreaker("pool_open_at_start", config())
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        asyncio.run(ResilientPool.create(postgres_dsn, breaker=breaker))


# -- auto-patching through otel_cb.instrument() -----------------------------------------------


def _others() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.name for ep in entry_points(group="otel_cb") if ep.name != "asyncpg"]


@contextlib.contextmanager
def instrumented(breaker: CircuitBreaker, target: str, *, plugins: tuple[object, ...] = (),
                 **section: object) -> Iterator[None]:
    """instrument() with only the asyncpg plugin, routing ``target`` to ``breaker``."""
    otel_cb.registry.add(breaker)
    try:
        otel_cb.instrument({"circuit_breakers": {breaker.name: {"match": {"db": [target]}, **section}},
                            "auto_breakers": {"enabled": False}}, disabled=_others(), plugins=plugins)
        yield
    finally:
        otel_cb.uninstrument()
        otel_cb.registry.remove(breaker.name)


def _target(dsn: str) -> str:
    return db_target(dsn)


def test_instrumented_pool_and_connection_calls_go_through_the_breaker(postgres_dsn: str, clock: FakeClock) -> None:
    breaker = CircuitBreaker("auto_db", config(), clock=clock)

    async def main() -> None:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
        try:
            before = breaker.snapshot().calls["success"]
            assert await pool.fetchval("SELECT 1") == 1  # acquire + fetchval: one call
            assert breaker.snapshot().calls["success"] == before + 1
            async with pool.acquire() as conn:  # acquire: one call
                await conn.fetch("SELECT 1")
                statement = await conn.prepare("SELECT $1::int")
                assert await statement.fetchval(5) == 5
                async with conn.transaction():
                    rows = [r async for r in conn.cursor("SELECT generate_series(1, 3)")]
                    assert len(rows) == 3
            with pytest.raises(exceptions.PostgresSyntaxError):
                await pool.execute("SELEC 1")
            assert breaker.snapshot().calls["ignored"] == 1
            breaker.force_open()
            idle = pool.get_idle_size()
            with pytest.raises(CircuitOpenError):
                await pool.fetchval("SELECT 1")
            with pytest.raises(CircuitOpenError):
                await pool.acquire()
            assert pool.get_idle_size() == idle  # no connection was taken from the pool
            with pytest.raises(CircuitOpenError):
                await asyncpg.connect(postgres_dsn)
            with pytest.raises(CircuitOpenError):
                await asyncpg.create_pool(postgres_dsn, min_size=1)
            async with pool:  # entering a pool that is already started sends nothing: not refused
                pass
            breaker.reset()
        finally:
            await pool.close()

    with instrumented(breaker, _target(postgres_dsn)):
        asyncio.run(main())
    assert breaker.snapshot().calls["rejected"] == 4


def test_unrouted_databases_are_not_touched(postgres_dsn: str) -> None:
    breaker = CircuitBreaker("auto_db_other", config())
    breaker.force_open()

    async def main() -> int:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return int(await conn.fetchval("SELECT 3"))
        finally:
            await conn.close()

    with instrumented(breaker, "elsewhere:5432/nothing"):
        assert asyncio.run(main()) == 3


def test_uninstrument_restores_the_original_methods() -> None:
    originals = {name: getattr(asyncpg.connection.Connection, name) for name in ("fetch", "execute")}
    original_connect = asyncpg.connect
    with instrumented(CircuitBreaker("roundtrip_db", config()), "x:5432/y"):
        assert asyncpg.connection.Connection.fetch is not originals["fetch"]
    for name, method in originals.items():
        assert getattr(asyncpg.connection.Connection, name) is method
    assert asyncpg.connect is original_connect


def test_a_breaker_opening_mid_transaction_leaves_nothing_open(postgres_dsn: str, clock: FakeClock) -> None:
    breaker = CircuitBreaker("tx_db", config(failure_threshold=1), clock=clock)
    table = f"t_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1,
                                         server_settings={"application_name": table})
        try:
            await pool.execute(f"CREATE TABLE {table} (id int)")
            async with pool.acquire() as conn:
                with pytest.raises(CircuitOpenError):
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES (1)")
                        await conn.execute("SET LOCAL statement_timeout = 50")
                        with pytest.raises(exceptions.QueryCanceledError):
                            await conn.execute("SELECT pg_sleep(2)")  # the database "fails": the breaker opens
                        assert breaker.state is CircuitState.OPEN
                        await conn.execute(f"INSERT INTO {table} VALUES (2)")  # refused, not sent
                assert not conn.is_in_transaction()  # rolled back although the breaker is open
            assert pool.get_idle_size() == pool.get_size() == 1  # given back
            breaker.reset()
            async with pool.acquire() as conn:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
                stuck = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                                            "AND state LIKE 'idle in transaction%'", table)
                assert stuck == 0
                await conn.execute(f"DROP TABLE {table}")
        finally:
            await pool.close()

    with instrumented(breaker, _target(postgres_dsn)):
        asyncio.run(main())


def test_instrumented_settings_decide_classification(postgres_dsn: str) -> None:
    breaker = CircuitBreaker("no_timeouts_db", config(failure_threshold=1))

    async def main() -> None:
        conn = await asyncpg.connect(postgres_dsn, server_settings={"statement_timeout": "30"})
        try:
            for _ in range(3):
                with pytest.raises(exceptions.QueryCanceledError):
                    await conn.execute("SELECT pg_sleep(1)")
        finally:
            await conn.close()

    with instrumented(breaker, _target(postgres_dsn), ignore_sqlstates=["57014"]):
        asyncio.run(main())
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot().calls["ignored"] == 3


@pytest.mark.parametrize("section, verdict", [({}, "failure"),
                                              ({"ignore_exceptions": ["asyncio.TimeoutError"]}, "ignored")],
                         ids=["counted_by_default", "ignored_when_the_section_says_so"])
def test_a_callers_own_timeout_counts_unless_the_section_ignores_it(postgres_dsn: str, section: dict[str, object],
                                                                     verdict: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("SELECT pg_sleep(1)", timeout=0.05)
            assert await conn.fetchval("SELECT 1") == 1  # asyncpg cancelled the query: the connection works
        finally:
            await conn.close()

    otel_cb.instrument({"circuit_breakers": {"timeouts_db": {"match": {"db": [_target(postgres_dsn)]}, **section}},
                        "auto_breakers": {"enabled": False}}, disabled=_others())
    try:
        asyncio.run(main())
        calls = otel_cb.registry.get("timeouts_db").snapshot().calls
    finally:
        otel_cb.uninstrument()
        otel_cb.registry.remove("timeouts_db")
    assert calls[verdict] == 1


class DatabasePolicy:
    """A plugin: syntax errors count as failures; an open breaker serves -1."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    @hookimpl
    def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> str | None:
        if call.kind == "db" and isinstance(exception, exceptions.PostgresSyntaxError):
            return "failure"
        return None

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object | None:
        self.calls.append(call)
        return -1 if call.kind == "db" and isinstance(error, CircuitOpenError) else None


def test_plugin_hooks_classify_and_serve_fallbacks(postgres_dsn: str) -> None:
    breaker = CircuitBreaker("hooked_db", config(failure_threshold=1))
    policy = DatabasePolicy()

    async def main() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            with pytest.raises(exceptions.PostgresSyntaxError):  # a failure now: the breaker opens
                await conn.fetchval("SELEC 1")
            assert breaker.state is CircuitState.OPEN
            assert await conn.fetchval("SELECT 1") == -1  # served by the plugin, nothing sent
        finally:
            conn.terminate()

    with instrumented(breaker, _target(postgres_dsn), plugins=(policy,)):
        asyncio.run(main())
    assert breaker.snapshot().fallbacks["success"] == 1
    assert [(c.kind, c.target, c.method) for c in policy.calls][-1] == ("db", _target(postgres_dsn), "fetchval")


def test_automatic_breakers_are_named_without_credentials(postgres_dsn: str) -> None:
    parts = urlsplit(postgres_dsn)
    secret = "pw-" + uuid.uuid4().hex[:8]
    host = parts.hostname or "127.0.0.1"
    dsn = f"postgresql://{parts.username or 'postgres'}:{secret}@{host}:{parts.port or 5432}{parts.path}"

    async def main() -> None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()

    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 10}}, disabled=_others())
    try:
        asyncio.run(main())
        names = [breaker.name for breaker in otel_cb.registry]
    finally:
        otel_cb.uninstrument()
    assert f"db://{_target(postgres_dsn)}" in names
    assert not any(secret in name or "postgres:" in name for name in names)


def test_resilient_pool_without_a_breaker_uses_the_registrys_database_breaker(postgres_dsn: str) -> None:
    name = f"db://{_target(postgres_dsn)}"
    otel_cb.registry.remove(name)

    async def main() -> None:
        pool = await ResilientPool.create(postgres_dsn, min_size=1, max_size=1)
        try:
            assert pool.circuit_breaker is otel_cb.registry.get(name)
            assert pool.circuit_breaker.config == CircuitBreakerConfig.preset("database")
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()

    try:
        asyncio.run(main())
    finally:
        otel_cb.registry.remove(name)


# -- coexistence with opentelemetry-instrumentation-asyncpg ------------------------------------

OTEL_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    import asyncpg
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    import otel_cb, otel_cb.telemetry
    from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
    from importlib.metadata import entry_points

    dsn, target = sys.argv[1], sys.argv[2]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    otel_cb.telemetry.enable()
    breaker = otel_cb.registry.add(CircuitBreaker("orders_db", CircuitBreakerConfig(failure_threshold=1)))
    others = [ep.name for ep in entry_points(group="otel_cb") if ep.name != "asyncpg"]
    otel_cb.instrument({"circuit_breakers": {"orders_db": {"failure_threshold": 1, "match": {"db": [target]}}}},
                       disabled=others)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # after ours: OpenTelemetry's span is outside

    async def main():
        conn = await asyncpg.connect(dsn)
        await conn.fetchval("SELECT 1")
        try:
            await conn.execute("SELECT pg_sleep(1)", timeout=0.05)
        except asyncio.TimeoutError:
            pass
        try:
            await conn.fetchval("SELECT 2")
        except CircuitOpenError:
            pass
        conn.terminate()

    asyncio.run(main())
    spans = [{"name": s.name, "attributes": dict(s.attributes or {}),
              "events": [e.name for e in s.events], "status": s.status.status_code.name}
             for s in exporter.get_finished_spans()]
    print(json.dumps(spans))
""")


def test_database_spans_carry_the_breaker(postgres_dsn: str) -> None:
    result = subprocess.run([sys.executable, "-c", OTEL_SCRIPT, postgres_dsn, _target(postgres_dsn)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OTEL_SDK_DISABLED": "false"})
    assert result.returncode == 0, result.stderr
    spans = json.loads(result.stdout.strip().splitlines()[-1])
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) >= {"SELECT"}, spans
    selects = [span for span in spans if span["name"] == "SELECT"]
    assert len(selects) == 3, spans  # SELECT 1, the timed-out sleep, the refused SELECT 2
    ok, timed_out, refused = selects
    assert ok["attributes"]["circuit_breaker.name"] == "orders_db"
    assert ok["attributes"]["circuit_breaker.state"] == "closed"
    assert timed_out["status"] == "ERROR"
    assert refused["attributes"]["circuit_breaker.name"] == "orders_db"
    assert refused["attributes"]["circuit_breaker.state"] == "open"
    assert refused["status"] == "ERROR"
    assert "circuit_breaker.rejected" in refused["events"], refused
    assert "circuit_breaker.state_change" in timed_out["events"], timed_out


# -- destinations the client refuses, and multi-host DSNs -------------------------------


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://u:pw@127.0.0.1:49507,127.0.0.1:49507/postgres", "127.0.0.1:49507/postgres"),
    ("postgresql://a:1,b:2,c:3,d:4,e:5/app", "a:1,b:2,c:3,+2/app"),
    ("postgresql://B:1,a:2/app", "b:1,a:2/app"),
])
def test_multi_host_dsns_name_each_host_once_in_order_bounded(dsn: str, expected: str) -> None:
    assert db_target(dsn) == expected


@pytest.mark.parametrize(("dsn", "kwargs"), [
    ("invalid://example.org/db", {}),
    ("db:5432/incidents", {}),  # a target, not a DSN: asyncpg refuses it
    ("postgresql://127.0.0.1:abc/test", {}),
    ("postgresql://postgres@127.0.0.1:5432/test", {"port": "zz"}),
])
def test_connect_arguments_asyncpg_refuses_create_and_touch_no_breaker(postgres_dsn: str, dsn: str,
                                                                        kwargs: dict[str, object]) -> None:
    async def attempt() -> BaseException:
        try:
            await asyncpg.connect(dsn, timeout=2, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            return exc
        raise AssertionError("asyncpg accepted the arguments")

    plain = asyncio.run(attempt())
    otel_cb.instrument({"auto_breakers": {"enabled": True, "max": 10},
                        "circuit_breakers": {"catch_all": {"match": {"db": ["*:*/*"]}}}}, disabled=_others())
    try:
        under = asyncio.run(attempt())
        touched = {b.name: b.snapshot().calls for b in otel_cb.registry if any(b.snapshot().calls.values())}
        names = {b.name for b in otel_cb.registry}
    finally:
        otel_cb.uninstrument()
    assert type(under) is type(plain) and str(under) == str(plain)
    assert touched == {} and not any(name.startswith("db://") for name in names)
