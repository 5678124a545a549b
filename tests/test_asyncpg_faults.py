"""asyncpg behind a breaker while a real PostgreSQL fails: trip, fail fast, probe, close, no leaks.

Every scenario runs against a throwaway cluster (stopping the shared server
is never allowed) through a TCP proxy whose counters prove that nothing
reaches the server while the breaker is open. The breakers use a fake clock:
the open timeout elapses when the test says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState
from otel_cb.integrations.asyncpg import ResilientPool
from tests.conftest import FakeClock
from tests.postgres import APP_ROLE_CONNECTION_LIMIT, Cluster, postgres_cluster
from tests.tcp_proxy import TcpProxy

__all__ = ["postgres_cluster"]  # the fixture, re-exported for pytest

exceptions = asyncpg.exceptions
OPEN_TIMEOUT = 10.0


def config(**overrides: object) -> CircuitBreakerConfig:
    values: dict[str, object] = {"failure_threshold": 3, "minimum_calls": 100, "open_timeout": OPEN_TIMEOUT,
                                 "half_open_max_calls": 1, "success_threshold": 1, "slow_call_duration": None,
                                 "health_check_interval": None}  # the tests run the checks themselves
    values.update(overrides)
    return CircuitBreakerConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def proxy(postgres_cluster: Cluster) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", postgres_cluster.port) as running:
        yield running


def via(proxy: TcpProxy, user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{proxy.port}/postgres"


async def assert_fails_fast(pool: ResilientPool, proxy: TcpProxy, calls: int = 5) -> None:
    """While open: every call is refused at once, no byte and no connection reaches the server."""
    before = (proxy.accepted, proxy.bytes_from_client)
    idle = pool.pool.get_idle_size()
    for _ in range(calls):
        with pytest.raises(CircuitOpenError) as info:
            await pool.fetchval("SELECT 1")
        assert info.value.name == pool.circuit_breaker.name
    await asyncio.sleep(0.05)  # anything sent would have reached the proxy by now
    assert (proxy.accepted, proxy.bytes_from_client) == before
    assert pool.pool.get_idle_size() == idle  # and no connection was taken from the pool


async def probe_and_close(pool: ResilientPool, clock: FakeClock) -> None:
    breaker = pool.circuit_breaker
    assert breaker.state is CircuitState.OPEN
    clock.advance(OPEN_TIMEOUT + 0.1)
    # The pool's default health check (SELECT 1 on a fresh connection), not a user call, finds the recovery.
    for _ in range(breaker.config.healthy_threshold):
        assert await breaker.check_health_async()
    assert breaker.state is CircuitState.HALF_OPEN
    assert await pool.fetchval("SELECT 42") == 42  # the probe
    assert breaker.state is CircuitState.CLOSED
    assert [await pool.fetchval("SELECT $1::int", n) for n in range(3)] == [0, 1, 2]


def assert_no_leaks(cluster: Cluster, application: str) -> None:
    """After the pool is closed the server holds no session of it (backends exit asynchronously)."""
    deadline = time.monotonic() + 5
    query = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'"
    while (left := cluster.psql(query)) != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == "0"


async def trip(pool: ResilientPool, operation: Callable[[], Awaitable[object]],
               expected: type[BaseException] | tuple[type[BaseException], ...]) -> None:
    """Fail until the breaker opens: exactly ``failure_threshold`` failures."""
    breaker = pool.circuit_breaker
    threshold = breaker.config.failure_threshold
    assert threshold is not None
    for _ in range(threshold):
        assert breaker.state is CircuitState.CLOSED
        with pytest.raises(expected):
            await operation()
    assert breaker.state is CircuitState.OPEN


Body = Callable[[ResilientPool], Awaitable[None]]


def scenario(cluster: Cluster, proxy: TcpProxy, breaker: CircuitBreaker, body: Body, *, user: str = "postgres",
             settings: dict[str, str] | None = None, **pool_kwargs: object) -> None:
    """Run ``body(pool)`` with a ResilientPool through the proxy; then check nothing leaked.

    ``body`` breaks the database, trips the breaker, checks it fails fast,
    heals the database and probes; this checks that every connection is
    back in the pool, closes the pool, and that the server holds no session
    of it any more.
    """
    app = f"otel_cb_{breaker.name}"

    async def main() -> None:
        pool = await ResilientPool.create(via(proxy, user), breaker=breaker,
                                          server_settings={"application_name": app, **(settings or {})},
                                          **pool_kwargs)  # type: ignore[arg-type]
        try:
            await body(pool)
            assert pool.pool.get_idle_size() == pool.pool.get_size()
        finally:
            await pool.close()

    asyncio.run(main())
    assert_no_leaks(cluster, app)


def test_server_stopped_and_restarted_mid_workload(postgres_cluster: Cluster, proxy: TcpProxy,
                                                    clock: FakeClock) -> None:
    breaker = CircuitBreaker("restart_db", config(), clock=clock)

    async def worker(pool: ResilientPool, outcomes: list[str]) -> None:
        for _ in range(40):
            try:
                await pool.fetchval("SELECT 1")
                outcomes.append("ok")
            except CircuitOpenError:
                outcomes.append("rejected")
                return
            except Exception:
                outcomes.append("failed")
            await asyncio.sleep(0.01)

    async def body(pool: ResilientPool) -> None:
        outcomes: list[str] = []
        workers = [asyncio.create_task(worker(pool, outcomes)) for _ in range(4)]
        await asyncio.sleep(0.1)
        postgres_cluster.stop()  # mid-workload
        await asyncio.gather(*workers)
        assert outcomes.count("ok") >= 4
        assert outcomes.count("rejected") == 4  # every worker ended up refused
        assert breaker.state is CircuitState.OPEN
        assert breaker.snapshot().calls["failure"] >= 3
        await assert_fails_fast(pool, proxy)
        postgres_cluster.start()
        await probe_and_close(pool, clock)

    try:
        scenario(postgres_cluster, proxy, breaker, body, min_size=2, max_size=4, timeout=2, command_timeout=2)
    finally:
        if not _running(postgres_cluster):
            postgres_cluster.start()


def _running(cluster: Cluster) -> bool:
    try:
        cluster.psql("SELECT 1")
    except Exception:
        return False
    return True


def test_connections_refused_by_the_server(postgres_cluster: Cluster, proxy: TcpProxy, clock: FakeClock) -> None:
    breaker = CircuitBreaker("refused_db", config(), clock=clock)
    at_start = CircuitBreaker("refused_at_start_db", config())

    async def body(pool: ResilientPool) -> None:
        # Another client holds every connection the role may open (the pool has none yet: min_size=0).
        hogs = [await asyncpg.connect(postgres_cluster.app_dsn) for _ in range(APP_ROLE_CONNECTION_LIMIT)]
        try:
            with pytest.raises(exceptions.TooManyConnectionsError):
                await ResilientPool.create(via(proxy, "app"), breaker=at_start, min_size=1, max_size=2)
            assert at_start.snapshot().calls["failure"] == 1  # a pool that cannot start is a failure
            await trip(pool, lambda: pool.fetchval("SELECT 1"), exceptions.TooManyConnectionsError)
            await assert_fails_fast(pool, proxy)
            for hog in hogs[:2]:
                await hog.close()
            await probe_and_close(pool, clock)
        finally:
            for hog in hogs:
                await hog.close()

    scenario(postgres_cluster, proxy, breaker, body, user="app", min_size=0, max_size=2)


def test_pool_exhausted(postgres_cluster: Cluster, proxy: TcpProxy, clock: FakeClock) -> None:
    breaker = CircuitBreaker("exhausted_db", config(), clock=clock)

    async def body(pool: ResilientPool) -> None:
        held = await pool.pool.acquire()  # a slow caller keeps the only connection
        await trip(pool, lambda: pool.fetchval("SELECT 1"), asyncio.TimeoutError)
        await assert_fails_fast(pool, proxy)
        await pool.pool.release(held)
        await probe_and_close(pool, clock)

    scenario(postgres_cluster, proxy, breaker, body, acquire_timeout=0.05, min_size=1, max_size=1)


def test_statement_timeouts(postgres_cluster: Cluster, proxy: TcpProxy, clock: FakeClock) -> None:
    breaker = CircuitBreaker("timeouts_db", config(), clock=clock)

    async def body(pool: ResilientPool) -> None:
        await trip(pool, lambda: pool.fetchval("SELECT pg_sleep(2)"), exceptions.QueryCanceledError)
        await assert_fails_fast(pool, proxy)
        await probe_and_close(pool, clock)  # quick queries pass the statement timeout

    scenario(postgres_cluster, proxy, breaker, body, settings={"statement_timeout": "50"}, min_size=1, max_size=2)


def test_network_blackhole(postgres_cluster: Cluster, proxy: TcpProxy, clock: FakeClock) -> None:
    breaker = CircuitBreaker("blackhole_db", config(), clock=clock)

    async def body(pool: ResilientPool) -> None:
        assert await pool.fetchval("SELECT 1") == 1
        proxy.set_mode("blackhole")  # packets vanish, nothing answers
        await trip(pool, lambda: pool.fetchval("SELECT 1"), asyncio.TimeoutError)
        await assert_fails_fast(pool, proxy)
        proxy.set_mode("forward")
        proxy.cut()  # the network heals; connections that lived through it are dead
        await probe_and_close(pool, clock)

    scenario(postgres_cluster, proxy, breaker, body, min_size=1, max_size=2, timeout=0.5, command_timeout=0.2)


def test_transaction_failing_midway_rolls_back_and_returns_the_connection(
        postgres_cluster: Cluster, proxy: TcpProxy, clock: FakeClock) -> None:
    breaker = CircuitBreaker("tx_pool_db", config(failure_threshold=1), clock=clock)

    async def work(conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO otel_cb_tx VALUES (1)")
        await conn.execute("SELECT pg_sleep(2)")  # the statement timeout fires: a failure, the breaker opens

    async def body(pool: ResilientPool) -> None:
        await pool.execute("CREATE TABLE IF NOT EXISTS otel_cb_tx (id int)")
        with pytest.raises(exceptions.QueryCanceledError):
            await pool.transaction(work)
        assert breaker.state is CircuitState.OPEN
        assert pool.pool.get_idle_size() == pool.pool.get_size() == 1
        await assert_fails_fast(pool, proxy)
        assert postgres_cluster.psql("SELECT count(*) FROM otel_cb_tx") == "0"
        assert postgres_cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'otel_cb_tx_pool_db' "
            "AND state LIKE 'idle in transaction%'") == "0"
        await probe_and_close(pool, clock)
        await pool.execute("DROP TABLE otel_cb_tx")

    scenario(postgres_cluster, proxy, breaker, body, settings={"statement_timeout": "100"}, min_size=1, max_size=1)
