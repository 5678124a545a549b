"""Forking while other threads call through breakers never leaves a child blocked on a lock of ours.

gunicorn ``--preload`` and multiprocessing's ``fork`` start method fork a
process whose other threads may be inside a breaker, the registry or the
observers at that instant. Each lock otel-cb's core owns is renewed in the
child (``os.register_at_fork``); here busy threads hammer those locks while
the main thread forks 24 children, each of which must use every one of them
and exit within a timeout. A child that hangs is killed and the test fails.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerRegistry, _observers, registry

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILDREN = 24
CHILD_TIMEOUT = 10.0  # seconds; a healthy child takes milliseconds


class _Observer:
    def state_changed(self, breaker: object, event: object) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[list[CircuitBreaker]]:
    """Breakers (one flapping between states) and threads that keep their locks busy."""
    config = CircuitBreakerConfig(failure_threshold=1, open_timeout=0.001, max_open_timeout=0.001,
                                  success_threshold=1, half_open_max_calls=1)
    breakers = [CircuitBreaker(f"fork_{i}", config) for i in range(3)]
    own_registry = CircuitBreakerRegistry()
    observer = _Observer()
    stop = threading.Event()

    def hammer(breaker: CircuitBreaker, index: int) -> None:
        calls = 0
        while not stop.is_set():
            calls += 1
            try:
                breaker.call(_flaky, calls % 3 == 0)
            except Exception:
                pass
            breaker.snapshot()
            registry.get_or_create(f"fork_reg_{index}")
            own_registry.get_or_create(f"fork_own_{index}")
            _observers.add_observer(observer)
            _observers.remove_observer(observer)

    threads = [threading.Thread(target=hammer, args=(breakers[i % 3], i), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    try:
        yield breakers
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for i in range(4):
            registry.remove(f"fork_reg_{i}")


def _flaky(fail: bool) -> int:
    if fail:
        raise OSError("down")
    return 1


def _child_work(breakers: list[CircuitBreaker]) -> None:
    """What a child does: take every lock the parent's threads were taking."""
    for breaker in breakers:
        for fail in (True, False, False):
            try:
                breaker.call(_flaky, fail)
            except Exception:
                pass
        breaker.snapshot()
        breaker.reset()
        assert breaker.call(_flaky, False) == 1
    registry.get_or_create("fork_child")
    CircuitBreakerRegistry().get_or_create("fork_child")
    _observers.add_observer(_Observer())


def _wait_or_kill(pid: int, deadline: float) -> int | None:
    """The child's exit status, or None after killing it at ``deadline``."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_children_forked_amid_busy_threads_never_hang(busy: list[CircuitBreaker]) -> None:
    results = []
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                _child_work(busy)
                code = 0
            finally:
                os._exit(code)
        results.append(_wait_or_kill(pid, time.monotonic() + CHILD_TIMEOUT))
    assert results == [0] * CHILDREN, f"children that hung (None) or failed: {results}"


def _mp_child(breakers: list[CircuitBreaker]) -> None:
    _child_work(breakers)


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_multiprocessing_fork_children_amid_busy_threads_never_hang(busy: list[CircuitBreaker]) -> None:
    context = multiprocessing.get_context("fork")
    codes = []
    for _ in range(CHILDREN):
        process = context.Process(target=_mp_child, args=(busy,))
        process.start()
        process.join(CHILD_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
            codes.append(None)
        else:
            codes.append(process.exitcode)
    assert codes == [0] * CHILDREN, f"children that hung (None) or failed: {codes}"


def test_a_lock_held_at_fork_is_free_in_the_child() -> None:
    """Deterministic: the parent holds each lock while forking; the child must still get it."""
    breaker = CircuitBreaker("fork_held")
    own = CircuitBreakerRegistry()
    held = [breaker._lock, registry._lock, own._lock, _observers._lock]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                breaker.snapshot()
                registry.get_or_create("fork_held_child")
                own.get_or_create("fork_held_child")
                _observers.add_observer(_Observer())
                code = 0
            finally:
                os._exit(code)
    finally:
        for lock in held:
            lock.release()
    assert _wait_or_kill(pid, time.monotonic() + CHILD_TIMEOUT) == 0
