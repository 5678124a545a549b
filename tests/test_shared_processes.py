"""Shared breaker state across real worker processes on a real Redis.

Each worker is a separate interpreter (multiprocessing, spawn) with its own
breaker and ``RedisSharedState``, as gunicorn or uvicorn workers would be.
Times are compared with ``time.monotonic()``, which is one system-wide clock
for every process on Linux.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, StateChangeEvent
from otel_cb.shared import RedisSharedState
from tests.redis_server import RedisCluster, namespace, redis_cluster, redis_url

__all__ = ["namespace", "redis_cluster", "redis_url"]  # fixtures

pytest.importorskip("redis")

SPAWN = multiprocessing.get_context("spawn")
SETTINGS = {"flush_interval": 0.002, "sync_interval": 0.5, "retry_interval": 0.1, "timeout": 0.2}


def breaker_config(**overrides: Any) -> CircuitBreakerConfig:
    settings: dict[str, Any] = {"failure_threshold": 3, "failure_rate_threshold": None, "open_timeout": 30.0,
                                "slow_call_duration": None, "success_threshold": 100}
    settings.update(overrides)
    return CircuitBreakerConfig(**settings)


def join_breaker(url: str, ns: str, **overrides: Any) -> tuple[RedisSharedState, CircuitBreaker]:
    lease = overrides.pop("probe_lease", 10.0)
    backend = RedisSharedState(url, namespace=ns, probe_lease=lease, **SETTINGS)
    breaker = backend.attach(CircuitBreaker("payments", breaker_config(**overrides)))
    time.sleep(0.3)  # the subscription is in place
    return backend, breaker


def boom() -> None:
    raise ConnectionError("dependency down")


# -- workers (module level, so that spawn can import them) ------------------------


ROUNDS = 3  # the bound is a latency: a machine busy with other work gets three tries


def trip_worker(url: str, ns: str, trips: bool, ready: Any, go: list[Any], results: Any) -> None:
    backend = RedisSharedState(url, namespace=ns, **SETTINGS)
    breakers = [backend.attach(CircuitBreaker(f"payments-{round_}", breaker_config())) for round_ in range(ROUNDS)]
    opened = [threading.Event() for _ in range(ROUNDS)]
    opened_at: list[float | None] = [None] * ROUNDS

    def on_open(round_: int) -> Callable[[StateChangeEvent], None]:
        def listener(event: StateChangeEvent) -> None:
            if event.state is CircuitState.OPEN:
                opened_at[round_] = time.monotonic()
                opened[round_].set()
        return listener

    for round_, breaker in enumerate(breakers):
        breaker.add_listener(on_open(round_))
    time.sleep(0.3)  # the subscription is in place
    ready.put(os.getpid())
    for round_, breaker in enumerate(breakers):
        if not go[round_].wait(30):
            break
        if trips:
            for _ in range(3):
                try:
                    breaker.call(boom)
                except ConnectionError:
                    pass
        opened[round_].wait(5)
        try:
            breaker.call(lambda: None)
            rejected = False
        except CircuitOpenError:
            rejected = True
        results.put((round_, trips, opened_at[round_], rejected))
    backend.close()


def probe_worker(url: str, ns: str, ready: Any, go: Any, lock: Any, current: Any, highest: Any,
                 admitted: Any) -> None:
    backend, breaker = join_breaker(url, ns, open_timeout=0.3, half_open_max_calls=2)
    ready.put(os.getpid())
    go.wait(10)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            permit = breaker.acquire()
        except CircuitOpenError:
            time.sleep(0.002)
            continue
        if breaker.state is not CircuitState.HALF_OPEN:  # not a probe (not yet tripped)
            permit.release()
            time.sleep(0.002)
            continue
        with lock:
            current.value += 1
            highest.value = max(highest.value, current.value)
            admitted.value += 1
        time.sleep(0.03)  # the probe call
        with lock:
            current.value -= 1
        permit.release()  # no verdict: the breaker stays half-open and others may probe
    backend.close()


def stuck_prober(url: str, ns: str, ready: Any) -> None:
    backend, breaker = join_breaker(url, ns, open_timeout=0.2, half_open_max_calls=1, probe_lease=0.6)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            breaker.acquire()  # the probe never reports: this process is killed mid-call
            break
        except CircuitOpenError:
            time.sleep(0.01)
    ready.put(breaker.state.value)
    time.sleep(60)
    backend.close()


# -- tests ------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


def start(processes: list[Any], target: Any, *args: Any) -> None:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    processes.append(process)


def test_a_trip_in_one_worker_rejects_in_every_worker_within_100ms(redis_url: str, namespace: str,
                                                                   processes: list[Any]) -> None:
    ready, results = SPAWN.Queue(), SPAWN.Queue()
    go = [SPAWN.Event() for _ in range(ROUNDS)]
    for index in range(4):
        start(processes, trip_worker, redis_url, namespace, index == 0, ready, go, results)
    for _ in processes:
        ready.get(timeout=30)
    latencies = []
    for round_ in range(ROUNDS):
        go[round_].set()
        outcomes = [results.get(timeout=30) for _ in processes]
        assert {result[0] for result in outcomes} == {round_}
        tripped_at = next(at for _, trips, at, _ in outcomes if trips)
        followers = [(at, rejected) for _, trips, at, rejected in outcomes if not trips]
        assert len(followers) == 3
        for opened_at, rejected in followers:
            assert opened_at is not None and rejected  # every worker opened, and rejects
        latencies.append(max(at for at, _ in followers) - tripped_at)
        if latencies[-1] < 0.1:
            break
    assert min(latencies) < 0.1, f"slowest follower per round: {latencies}"


def test_no_more_than_half_open_max_calls_probes_across_workers(redis_url: str, namespace: str,
                                                                processes: list[Any]) -> None:
    ready, go = SPAWN.Queue(), SPAWN.Event()
    lock = SPAWN.Lock()
    current, highest, admitted = SPAWN.Value("i", 0), SPAWN.Value("i", 0), SPAWN.Value("i", 0)
    for _ in range(4):
        start(processes, probe_worker, redis_url, namespace, ready, go, lock, current, highest, admitted)
    for _ in processes:
        ready.get(timeout=30)
    backend, breaker = join_breaker(redis_url, namespace, open_timeout=0.3, half_open_max_calls=2)
    try:
        for _ in range(3):
            with pytest.raises(ConnectionError):
                breaker.call(boom)
        go.set()
        for process in processes:
            process.join(30)
    finally:
        backend.close()
    # Four workers each allowed two probes locally: only the fleet-wide leases keep it at two.
    assert admitted.value > 4
    assert highest.value == 2


def test_a_prober_killed_mid_probe_does_not_wedge_the_breaker(redis_url: str, namespace: str,
                                                              processes: list[Any]) -> None:
    backend, breaker = join_breaker(redis_url, namespace, open_timeout=0.2, half_open_max_calls=1)
    try:
        for _ in range(3):
            with pytest.raises(ConnectionError):
                breaker.call(boom)
        ready = SPAWN.Queue()
        start(processes, stuck_prober, redis_url, namespace, ready)
        assert ready.get(timeout=30) == "half_open"  # it holds the one probe lease
        os.kill(processes[0].pid, signal.SIGKILL)
        processes[0].join(10)
        killed_at = time.monotonic()
        with pytest.raises(CircuitOpenError):
            breaker.acquire()  # the dead prober's lease is still live
        admitted_at = None
        while time.monotonic() < killed_at + 5:
            try:
                breaker.acquire().record_success()
            except CircuitOpenError:
                time.sleep(0.01)
                continue
            admitted_at = time.monotonic()
            break
        assert admitted_at is not None, "the breaker stayed wedged by a dead prober's lease"
        assert admitted_at - killed_at < 0.6 + 0.5
    finally:
        backend.close()


def tripping_child(breaker: CircuitBreaker, done: Any) -> None:
    for _ in range(3):
        try:
            breaker.call(boom)
        except ConnectionError:
            pass
    time.sleep(0.2)  # the child's own worker thread publishes the trip
    done.put(breaker.state.value)


def test_a_worker_forked_after_attach_shares_state_with_its_parent(redis_url: str, namespace: str,
                                                                   processes: list[Any]) -> None:
    """gunicorn --preload: breakers attached in the master, calls made in forked workers."""
    backend, breaker = join_breaker(redis_url, namespace)
    try:
        fork = multiprocessing.get_context("fork")
        done = fork.Queue()
        child = fork.Process(target=tripping_child, args=(breaker, done), daemon=True)
        child.start()
        processes.append(child)
        assert done.get(timeout=30) == "open"
        deadline = time.monotonic() + 3
        while breaker.state is not CircuitState.OPEN and time.monotonic() < deadline:
            time.sleep(0.005)
        assert breaker.state is CircuitState.OPEN
    finally:
        backend.close()


# -- fork safety --------------------------------------------------------------------------


def _busy_redis(breaker: CircuitBreaker, stop: threading.Event) -> None:
    # Round trips on the shared state's pools and its locks, without the breaker's own lock
    # (a reset of a closed breaker changes nothing locally).
    from otel_cb.shared import fleet_action

    while not stop.is_set():
        try:
            fleet_action(breaker, "reset")
        except ConnectionError:
            pass


def _busy_calls(breaker: CircuitBreaker, stop: threading.Event) -> None:
    calls = 0
    while not stop.is_set():
        calls += 1
        try:
            breaker.call(boom if calls % 5 == 0 else lambda: None)
        except (ConnectionError, CircuitOpenError):
            pass


def _child_work(breaker: CircuitBreaker) -> int:
    from otel_cb.shared import fleet_action

    for _ in range(20):  # through the breaker: its lock, the outcome queue, the child's worker thread
        try:
            breaker.call(lambda: None)
        except CircuitOpenError:
            pass
    try:
        for _ in range(3):
            fleet_action(breaker, "reset")  # round trips on the child's own connections
    except ConnectionError:
        return 3
    return 0


def fork_children(breaker: CircuitBreaker, busy: Callable[[CircuitBreaker, threading.Event], None], count: int = 24,
                  forked: Callable[[], None] = lambda: None) -> dict[int, int | None]:
    """Fork ``count`` children while 4 threads run ``busy``, then call ``forked()``; the children's
    exit codes (None: hung for 30 s)."""
    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(breaker, stop), daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    codes: dict[int, int | None] = {}
    try:
        time.sleep(0.2)
        for _ in range(count):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    code = _child_work(breaker)
                finally:
                    os._exit(code)
            codes[pid] = None
            time.sleep(0.01)
        forked()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(code is None for code in codes.values()):
            for pid, code in codes.items():
                if code is None:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        return codes
    finally:
        stop.set()
        for pid, code in codes.items():
            if code is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for thread in threads:
            thread.join(5)


def test_children_forked_during_redis_round_trips_never_hang(redis_url: str, namespace: str) -> None:
    """Issue 13: with busy threads at fork time, children inherited Redis pools whose locks
    were held by threads that exist only in the parent, and hung in redis-py's fork check
    (``ConnectionPool.reset()`` takes the pool's lock). A thread holds both pools' locks across
    every fork here, so that the window a busy thread hits by chance is always open."""
    backend = RedisSharedState(redis_url, namespace=namespace, **SETTINGS)
    try:
        breaker = backend.attach(CircuitBreaker("payments", breaker_config()))
        holding, release = threading.Event(), threading.Event()

        def hold_pool_locks() -> None:
            with backend._slow.connection_pool._lock, backend._fast.connection_pool._lock:
                holding.set()
                release.wait(60)

        holder = threading.Thread(target=hold_pool_locks, daemon=True)
        holder.start()
        assert holding.wait(5)
        try:
            codes = fork_children(breaker, _busy_redis, forked=release.set)
        finally:
            release.set()
            holder.join(5)
        hung = [pid for pid, code in codes.items() if code is None]
        assert not hung, f"{len(hung)} of {len(codes)} children hung"
        assert set(codes.values()) == {0}, codes
    finally:
        backend.close()


# -- fleet-wide operator actions across workers ---------------------------------------------


def fleet_worker(url: str, ns: str, ready: Any, results: Any, stop: Any) -> None:
    backend = RedisSharedState(url, namespace=ns, **SETTINGS)
    breakers = [backend.attach(CircuitBreaker(f"payments-{round_}", breaker_config())) for round_ in range(ROUNDS)]
    seen: set[tuple[int, str]] = set()
    lock = threading.Lock()

    def report(round_: int, state: str, reason: str) -> None:
        with lock:  # once per round and state, however it was learnt
            if (round_, state) in seen:
                return
            seen.add((round_, state))
        results.put((os.getpid(), round_, state, reason, time.monotonic(), _rejects(breakers[round_])))

    def listener(round_: int) -> Callable[[StateChangeEvent], None]:
        return lambda event: report(round_, event.state.value, event.reason.value)

    for round_, breaker in enumerate(breakers):
        breaker.add_listener(listener(round_))
        if breaker.state is not CircuitState.CLOSED:  # adopted before the listener was there
            report(round_, breaker.state.value, "adopted")
    time.sleep(0.3)  # the subscription is in place
    ready.put(os.getpid())
    stop.wait(60)
    backend.close()


def _rejects(breaker: CircuitBreaker) -> bool:
    try:
        breaker.call(lambda: None)
    except CircuitOpenError:
        return True
    return False


@pytest.fixture(params=["redis", "cluster"])
def fleet_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return str(request.getfixturevalue("redis_url"))


def test_fleet_wide_actions_reach_every_worker_within_100ms(fleet_url: str, processes: list[Any]) -> None:
    import uuid

    from otel_cb.shared import fleet_action

    ns = f"test-{uuid.uuid4().hex[:12]}"
    ready, results, stop = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    for _ in range(3):
        start(processes, fleet_worker, fleet_url, ns, ready, results, stop)
    workers = {ready.get(timeout=30) for _ in range(3)}
    backend = RedisSharedState(fleet_url, namespace=ns, **SETTINGS)
    try:
        operator = [backend.attach(CircuitBreaker(f"payments-{round_}", breaker_config())) for round_ in range(ROUNDS)]
        latencies = []
        for round_ in range(ROUNDS):  # a latency bound: a busy machine gets three tries
            started = time.monotonic()
            fleet_action(operator[round_], "force_open")
            outcomes = [results.get(timeout=10) for _ in workers]
            assert {(pid, r, state, reason, rejected) for pid, r, state, reason, _, rejected in outcomes} == {
                (pid, round_, "forced_open", "force_open", True) for pid in workers}
            latencies.append(max(at for *_, at, _ in outcomes) - started)
            if latencies[-1] <= 0.1:
                break
        assert min(latencies) <= 0.1, f"slowest worker per round: {latencies}"
        # A worker that starts meanwhile adopts the manual state.
        start(processes, fleet_worker, fleet_url, ns, ready, results, stop)
        late = ready.get(timeout=30)
        adopted = [results.get(timeout=10) for _ in range(round_ + 1)]
        assert {(pid, state, rejected) for pid, _, state, _, _, rejected in adopted} == {(late, "forced_open", True)}
        workers.add(late)
        fleet_action(operator[0], "reset")
        closed = [results.get(timeout=10) for _ in workers]
        assert {(pid, r, state, reason, rejected) for pid, r, state, reason, _, rejected in closed} == {
            (pid, 0, "closed", "reset", False) for pid in workers}
    finally:
        stop.set()
        backend.close()


def test_children_forked_while_threads_call_through_a_shared_breaker_never_hang(redis_url: str,
                                                                                namespace: str) -> None:
    """Issue 13's case: a RedisSharedState breaker with 4 busy threads at fork time hung 30 of 30 children."""
    rate = breaker_config(failure_threshold=None, failure_rate_threshold=0.9, minimum_calls=1000)
    backend = RedisSharedState(redis_url, namespace=namespace, **SETTINGS)
    try:
        breaker = backend.attach(CircuitBreaker("payments", rate))
        codes = fork_children(breaker, _busy_calls)
        hung = [pid for pid, code in codes.items() if code is None]
        assert not hung, f"{len(hung)} of {len(codes)} children hung"
        assert set(codes.values()) == {0}, codes
    finally:
        backend.close()
