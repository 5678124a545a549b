"""Shared state on Redis: Redis round trips and overhead per call, otel-cb beside pybreaker.

Every Redis command or pipeline sent on any connection (the call path and the
background threads alike) is counted by a connection class that wraps
``send_packed_command``; round trips per call are that count over the calls
made, the final flush included. Overhead is the time per call through the
breaker minus the time of the bare call, closed state, best of three runs.

Redis: ``OTEL_CB_TEST_REDIS_URL``, else 127.0.0.1:6379, else a throwaway
``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

TITLE = "Shared state on Redis (closed state, one process)"


def noop() -> int:
    return 1


def _per_call(fn: Callable[[], Any], calls: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


@contextmanager
def _redis_url() -> Iterator[str | None]:
    url = os.environ.get("OTEL_CB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
        yield url
        return
    except (redis.RedisError, OSError):
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="otel-cb-bench-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except (redis.RedisError, OSError):
                time.sleep(0.02)
        yield url
    finally:
        process.kill()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _counting_client(url: str) -> tuple[Any, list[int]]:
    """A redis client whose every round trip bumps ``count[0]``."""
    import redis

    count = [0]

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            count[0] += 1
            super().send_packed_command(command, check_health)

    kwargs = redis.Redis.from_url(url).connection_pool.connection_kwargs
    pool = redis.ConnectionPool(connection_class=CountingConnection, host=kwargs.get("host", "127.0.0.1"),
                                port=kwargs.get("port", 6379), db=kwargs.get("db", 0), socket_timeout=1.0)
    return redis.Redis(connection_pool=pool), count


def run(quick: bool) -> str:
    try:
        import pybreaker
        import redis
    except ImportError as exc:  # pragma: no cover - the bench extra is missing
        return f"skipped: {exc.name} is not installed"
    from otel_cb import CircuitBreaker, CircuitBreakerConfig
    from otel_cb.shared import RedisSharedState

    calls = 2_000 if quick else 20_000
    with _redis_url() as url:
        if url is None:
            return "skipped: no Redis (set OTEL_CB_TEST_REDIS_URL or install redis-server)"
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        rows: list[tuple[str, float, float | None]] = []
        bare = _per_call(noop, calls)
        rows.append(("bare call", bare, None))

        local = CircuitBreaker("bench_local", CircuitBreakerConfig())
        rows.append(("otel-cb, local state", _per_call(lambda: local.call(noop), calls), 0.0))

        client, count = _counting_client(url)
        shared_state = RedisSharedState(client=client, namespace=namespace)
        shared = shared_state.attach(CircuitBreaker("bench_shared", CircuitBreakerConfig()))
        time.sleep(0.2)  # initial read and subscription out of the way
        before = count[0]
        elapsed = _per_call(lambda: shared.call(noop), calls)
        time.sleep(0.1)  # the last batch is flushed
        rows.append(("otel-cb + RedisSharedState", elapsed, (count[0] - before) / (3 * calls)))
        shared_state.close()

        in_memory = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        rows.append(("pybreaker, in memory", _per_call(lambda: in_memory.call(noop), calls), 0.0))

        py_client, py_count = _counting_client(url)
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, py_client, namespace=namespace)
        on_redis = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
        py_calls = max(200, calls // 10)  # several round trips each: fewer calls suffice
        before = py_count[0]
        elapsed = _per_call(lambda: on_redis.call(noop), py_calls)
        rows.append(("pybreaker + CircuitRedisStorage", elapsed, (py_count[0] - before) / (3 * py_calls)))

        cleanup = redis.Redis.from_url(url)
        for pattern in (f"otel_cb:{{{namespace}:*", f"pybreaker:{namespace}*"):
            keys = list(cleanup.scan_iter(match=pattern))
            if keys:
                cleanup.delete(*keys)
        for closable in (cleanup, client, py_client):
            closable.close()

    lines = ["| breaker | per call (us) | overhead over a bare call (us) | Redis round trips per call |",
             "|---|---:|---:|---:|"]
    for name, per_call, trips in rows:
        overhead = "" if trips is None else f"{(per_call - bare) * 1e6:.2f}"
        lines.append(f"| {name} | {per_call * 1e6:.2f} | {overhead} | {_trips(trips)} |")
    lines.append("")
    lines.append(f"{calls} calls per run (pybreaker on Redis: {max(200, calls // 10)}), best of 3. otel-cb sends "
                 "closed-state outcomes in batches from a background thread; pybreaker reads and writes its "
                 "counters and state on Redis inside every call.")
    return "\n".join(lines)


def _trips(trips: float | None) -> str:
    if trips is None:
        return ""
    if 0 < trips < 0.01:
        return f"{trips:.4f} (one per {round(1 / trips):,} calls)"
    return f"{trips:.3f}"


if __name__ == "__main__":
    print(run(quick=False))
