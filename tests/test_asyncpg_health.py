"""The asyncpg integration's default health check (``SELECT 1`` on a fresh connection), on a real PostgreSQL.

The server is reached through a TCP proxy, whose counters show that each check
opens (and closes) a connection of its own, while the pool's are left alone,
and whose blackhole mode makes the server silent, so the check times out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitState
from otel_cb.integrations.asyncpg import ResilientPool
from tests.conftest import FakeClock
from tests.postgres import postgres_cluster, postgres_dsn
from tests.tcp_proxy import TcpProxy

from .test_asyncpg import _target, instrumented

__all__ = ["postgres_cluster", "postgres_dsn"]  # fixtures, re-exported for pytest


def config(**overrides: object) -> CircuitBreakerConfig:
    values: dict[str, object] = {"failure_threshold": 3, "minimum_calls": 100, "open_timeout": 10.0,
                                 "slow_call_duration": None, "health_check_interval": None,
                                 "health_check_timeout": 1.0}
    values.update(overrides)
    return CircuitBreakerConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def proxied(postgres_dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    parts = urlsplit(postgres_dsn)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy, parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        breaker.acquire().record("failure")
    assert breaker.state is CircuitState.OPEN


SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"


async def sessions(pool: ResilientPool, application: str, expected: int) -> int:
    """Sessions of ``application`` on the server, waited for (backends exit asynchronously)."""
    deadline = time.monotonic() + 5
    while (count := await pool.fetchval(SESSIONS, application)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return int(count)


def test_resilient_pool_gets_select_1_on_a_fresh_connection(proxied: tuple[TcpProxy, str], clock: FakeClock) -> None:
    proxy, dsn = proxied
    breaker = CircuitBreaker("health_db", config(), clock=clock)

    async def main() -> None:
        application = f"otel-cb-health-{uuid.uuid4().hex[:8]}"
        pool = await ResilientPool.create(dsn, breaker=breaker, min_size=1, max_size=1,
                                          server_settings={"application_name": application})
        try:
            assert breaker.health_check is not None
            trip(breaker)
            calls = dict(breaker.snapshot().calls)
            accepted = proxy.accepted
            proxy.set_mode("blackhole")
            started = time.monotonic()
            assert await breaker.check_health_async() is False
            assert time.monotonic() - started < 3  # bounded by health_check_timeout
            proxy.set_mode("forward")
            assert await breaker.check_health_async() is True
            assert await breaker.check_health_async() is True
            assert breaker.state is CircuitState.HALF_OPEN
            assert proxy.accepted == accepted + 3  # one fresh connection per check
            assert dict(breaker.snapshot().calls) == calls  # checks are not user calls
            breaker.reset()
            # The checks connected as the pool does (same settings) and closed again: the pool's one is left.
            assert await sessions(pool, application, 1) == 1
        finally:
            await pool.close()

    asyncio.run(main())


def test_instrumented_connect_attaches_the_check_which_bypasses_the_open_breaker(
        proxied: tuple[TcpProxy, str], clock: FakeClock) -> None:
    _, dsn = proxied
    breaker = CircuitBreaker("health_auto_db", config(), clock=clock)

    async def main() -> None:
        connection = await asyncpg.connect(dsn)
        await connection.close()
        assert breaker.health_check is not None
        trip(breaker)
        assert breaker.check_health() is True  # from sync code: on the monitor's loop

    with instrumented(breaker, _target(dsn)):
        asyncio.run(main())


def test_the_users_own_check_wins(proxied: tuple[TcpProxy, str], clock: FakeClock) -> None:
    _, dsn = proxied

    def mine() -> bool:
        return True

    breaker = CircuitBreaker("health_own_db", config(), clock=clock, health_check=mine)

    async def main() -> None:
        pool = await ResilientPool.create(dsn, breaker=breaker, min_size=1, max_size=1)
        await pool.close()

    asyncio.run(main())
    assert breaker.health_check is mine
