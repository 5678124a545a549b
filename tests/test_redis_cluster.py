"""Shared state on a real Redis Cluster: the shared-state suite again, operator actions, and a failover.

The cluster (``redis_cluster`` in tests/redis_server.py) is six ``redis-server``
processes on loopback, three primaries with a replica each, started once per
session. The tests of test_shared_redis.py imported below run here with
backends on the cluster (``redis+cluster://``), through this module's
``backends`` fixture.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from otel_cb import CircuitBreaker, CircuitOpenError, CircuitState
from otel_cb.shared import RedisSharedState, fleet_action, from_config, running_locally
from otel_cb.shared._redis import _Link
from tests.redis_server import RedisCluster, RedisServer, redis_cluster
from tests.test_shared_redis import (
    FAST,
    boom,
    config,
    fail,
    ok,
    test_a_fleet_wide_force_open_reaches_every_process_within_100ms,
    test_a_fleet_wide_reset_resets_every_process_and_per_process_actions_stay_local,
    test_a_probe_failure_reopens_every_process,
    test_a_process_that_starts_late_adopts_the_open_state,
    test_a_process_that_starts_meanwhile_adopts_the_fleets_manual_state,
    test_a_released_probe_lease_frees_the_slot_for_another_process,
    test_a_trip_in_one_process_opens_the_breaker_in_the_others,
    test_asyncio_calls_share_state_too,
    test_count_window_counts_the_fleets_last_calls,
    test_failure_rate_counts_the_whole_fleet,
    test_manual_states_are_local_and_reset_of_an_open_breaker_closes_the_fleet,
    test_probes_are_limited_fleet_wide_and_a_success_closes_every_process,
    tripped_pair,
    wait_until,
)

__all__ = [  # the suite, run again here, and the fixtures it needs
    "redis_cluster", "test_a_fleet_wide_force_open_reaches_every_process_within_100ms",
    "test_a_fleet_wide_reset_resets_every_process_and_per_process_actions_stay_local",
    "test_a_probe_failure_reopens_every_process", "test_a_process_that_starts_late_adopts_the_open_state",
    "test_a_process_that_starts_meanwhile_adopts_the_fleets_manual_state",
    "test_a_released_probe_lease_frees_the_slot_for_another_process",
    "test_a_trip_in_one_process_opens_the_breaker_in_the_others", "test_asyncio_calls_share_state_too",
    "test_count_window_counts_the_fleets_last_calls", "test_failure_rate_counts_the_whole_fleet",
    "test_manual_states_are_local_and_reset_of_an_open_breaker_closes_the_fleet",
    "test_probes_are_limited_fleet_wide_and_a_success_closes_every_process", "tripped_pair",
]

pytest.importorskip("redis")


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # the cluster is this session's own: nothing to clean up


@pytest.fixture
def backends(redis_cluster: RedisCluster, namespace: str) -> Iterator[Callable[..., RedisSharedState]]:
    made: list[RedisSharedState] = []
    warm: list[CircuitBreaker] = []

    def make(ns: str = namespace, **overrides: float) -> RedisSharedState:
        backend = RedisSharedState(redis_cluster.url, namespace=ns, **{**FAST, **overrides})
        made.append(backend)
        # The worker connects to the cluster once a breaker is attached; the suite's timings
        # (written for one server, already connected) start once it has.
        warm.append(backend.attach(CircuitBreaker(f"warm-up-{len(made)}", config())))
        assert backend._connected.wait(10)
        return backend

    yield make
    for backend in made:
        backend.close()


def node_of(breaker: CircuitBreaker, cluster: RedisCluster) -> RedisServer:
    """The primary that holds ``breaker``'s keys."""
    link = breaker.shared_state
    assert isinstance(link, _Link)
    return cluster.primary_of(link.keys[0])


def test_the_config_selects_the_cluster(redis_cluster: RedisCluster, namespace: str) -> None:
    port = redis_cluster.nodes[0].port
    by_flag = from_config({"backend": "redis", "url": f"redis://127.0.0.1:{port}/0", "namespace": namespace,
                           "cluster": True})
    by_scheme = from_config({"backend": "redis", "url": redis_cluster.url, "namespace": namespace})
    try:
        assert by_flag.cluster and by_scheme.cluster
        a, b = by_flag.attach(CircuitBreaker("configured", config())), by_scheme.attach(CircuitBreaker(
            "configured", config()))
        time.sleep(0.3)
        fail(a, 3)
        assert wait_until(lambda: b.state is CircuitState.OPEN)
    finally:
        by_flag.close()
        by_scheme.close()
    with pytest.raises(ValueError, match=r"shared_state\.cluster"):
        from_config({"backend": "redis", "url": redis_cluster.url, "cluster": "yes"})


def test_breakers_spread_over_the_primaries(backends: Callable[..., RedisSharedState],
                                            redis_cluster: RedisCluster) -> None:
    backend = backends()
    names = [f"spread-{index}" for index in range(12)]
    attached = [backend.attach(CircuitBreaker(name, config())) for name in names]
    ports = {node_of(breaker, redis_cluster).port for breaker in attached}
    assert len(ports) > 1  # the hash tags put different breakers on different nodes


def test_a_failover_mid_workload_raises_nothing_and_state_reconverges(
        backends: Callable[..., RedisSharedState], redis_cluster: RedisCluster) -> None:
    """A primary stops while four threads call through breakers on it and on other nodes."""
    here, there = backends(), backends()
    names = [f"failover-{index}" for index in range(6)]
    mine = {name: here.attach(CircuitBreaker(name, config())) for name in names}
    theirs = {name: there.attach(CircuitBreaker(name, config())) for name in names}
    time.sleep(0.3)
    victim = node_of(mine[names[0]], redis_cluster)
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def workload() -> None:
        while not stop.is_set():
            for breaker in (*mine.values(), *theirs.values()):
                try:
                    breaker.call(ok)
                except CircuitOpenError:
                    pass
                except BaseException as exc:  # anything else came from Redis through us
                    unexpected.append(exc)
            time.sleep(0.001)

    workers = [threading.Thread(target=workload, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.2)
        redis_cluster.fail_over(victim)
        # Meanwhile a trip happens in this process: it is not lost.
        assert wait_until(lambda: running_locally(mine[names[0]]), timeout=5)
        fail(mine[names[0]], 3)
        redis_cluster.wait_until_ok()
        assert wait_until(lambda: not running_locally(mine[names[0]]) and not running_locally(theirs[names[0]]),
                          timeout=10)
        assert wait_until(lambda: theirs[names[0]].state is CircuitState.OPEN, timeout=5)
        # And the fleet works as before: a trip on another breaker propagates again.
        fail(theirs[names[1]], 3)
        assert wait_until(lambda: mine[names[1]].state is CircuitState.OPEN, timeout=5)
        fleet_action(mine[names[2]], "force_open")
        assert wait_until(lambda: theirs[names[2]].state is CircuitState.FORCED_OPEN, timeout=5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(5)
        victim.start()  # it rejoins as a replica of the primary that took over
        redis_cluster.wait_until_ok()
    assert not unexpected, unexpected[:3]
    with pytest.raises(ConnectionError, match="dependency down"):
        mine[names[3]].call(boom)


def test_an_unreachable_cluster_never_blocks_start_up_or_a_call(namespace: str) -> None:
    from tests.redis_server import free_port

    started = time.monotonic()
    backend = RedisSharedState(f"redis+cluster://127.0.0.1:{free_port()}", namespace=namespace, **FAST)
    try:
        breaker = backend.attach(CircuitBreaker("nowhere", config()))
        assert time.monotonic() - started < 0.5  # nothing connects on the caller's thread
        assert breaker.call(ok) == "ok"
        assert wait_until(lambda: running_locally(breaker))
        fail(breaker, 3)  # the local rules still protect
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(ConnectionError, match="nothing changed"):
            fleet_action(breaker, "reset")
    finally:
        backend.close()


def test_a_child_forked_from_a_cluster_backend_connects_on_its_own(backends: Callable[..., RedisSharedState]) -> None:
    import os

    parent = backends().attach(CircuitBreaker("forked", config()))
    other = backends().attach(CircuitBreaker("forked", config()))
    time.sleep(0.3)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            fleet_action(parent, "force_open")  # on the child's own cluster connections
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert wait_until(lambda: other.state is CircuitState.FORCED_OPEN and parent.state is CircuitState.FORCED_OPEN)
