"""The health-check runner and monitor (`otel_cb._health`), driven through stand-in breakers.

The schedule is tested with a fake clock and no thread; the thread itself with
short real intervals, waiting on events (never sleeping for a duration).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otel_cb._health import HealthMonitor, is_async_check, monitor, run_check, run_check_async

from .conftest import FakeClock

ROOT = Path(__file__).resolve().parent.parent


class StandIn:
    """What the monitor sees of a breaker: asks for ``checks`` checks, every ``interval`` seconds."""

    def __init__(self, name: str = "stand-in", *, checks: int = 3, interval: float = 0.01,
                 hang: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.wanted = checks
        self.hang = hang
        self.checked = 0
        self.threads: set[str] = set()
        self.done = threading.Event()

    def _wants_health_checks(self) -> float | None:
        return self.interval if self.checked < self.wanted else None

    async def check_health_async(self) -> bool:
        self.threads.add(threading.current_thread().name)
        if self.hang:
            await asyncio.Event().wait()
        self.checked += 1
        if self.checked >= self.wanted:
            self.done.set()
        return True


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otel-cb health monitor"]


# -- the schedule ------------------------------------------------------------------


def test_a_watched_breaker_is_due_after_a_jittered_interval(clock: FakeClock) -> None:
    draws = iter([0.0, 1.0, 0.5])
    scheduler = HealthMonitor(clock=clock, rand=lambda: next(draws))
    breaker = StandIn(checks=10, interval=10.0)
    scheduler.add(breaker, 10.0)
    clock.advance(8.99)
    assert scheduler.due(clock()) == ([], clock.now + 0.01)  # first interval: 10 * 0.9
    clock.advance(0.01)
    assert scheduler.due(clock()) == ([breaker], None)
    assert scheduler.due(clock()) == ([], None)  # running: never twice at once
    scheduler.finished(breaker, clock())
    assert scheduler.due(clock() + 10.99)[0] == []  # next interval: 10 * 1.1
    assert scheduler.due(clock() + 11.0)[0] == [breaker]


def test_watching_twice_keeps_the_schedule(clock: FakeClock) -> None:
    scheduler = HealthMonitor(clock=clock, rand=lambda: 0.5)
    breaker = StandIn(interval=1.0)
    scheduler.add(breaker, 1.0)
    clock.advance(0.5)
    scheduler.add(breaker, 1.0)
    assert scheduler.due(clock.now + 0.5)[0] == [breaker]


def test_a_breaker_that_stops_asking_or_is_gone_leaves_the_schedule(clock: FakeClock) -> None:
    scheduler = HealthMonitor(clock=clock, rand=lambda: 0.5)
    done, gone = StandIn("done", checks=0), StandIn("gone")
    scheduler.add(done, 1.0)
    scheduler.add(gone, 1.0)
    del gone
    gc.collect()
    ready, _ = scheduler.due(clock.now + 1.0)
    assert ready == [done]
    scheduler.finished(done, clock.now + 1.0)
    assert not scheduler.watching(done)
    assert scheduler.due(clock.now + 100.0) == ([], None)


def test_a_breaker_whose_schedule_raises_is_dropped_and_logged(clock: FakeClock,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    class Broken(StandIn):
        def _wants_health_checks(self) -> float | None:
            raise RuntimeError("broken")

    scheduler = HealthMonitor(clock=clock, rand=lambda: 0.5)
    broken = Broken()
    scheduler.add(broken, 1.0)
    scheduler.due(clock.now + 1.0)
    scheduler.finished(broken, clock.now + 1.0)
    assert not scheduler.watching(broken)
    assert "health check schedule" in caplog.text


# -- running one check -------------------------------------------------------------


def test_what_a_check_result_means() -> None:
    def raises() -> bool:
        raise ConnectionError

    assert run_check(lambda: True, 1.0) is True
    assert run_check(lambda: "ok", 1.0) is True
    assert run_check(lambda: 0, 1.0) is False
    assert run_check(lambda: None, 1.0) is False
    assert run_check(raises, 1.0) is False


def test_a_hanging_check_costs_its_timeout_not_the_caller() -> None:
    release = threading.Event()
    assert run_check(release.wait, 0.05) is False  # returns although the check still runs
    release.set()


def test_coroutine_checks_from_sync_code_run_on_the_monitor_loop() -> None:
    threads: list[str] = []

    async def healthy() -> bool:
        threads.append(threading.current_thread().name)
        return True

    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    async def raises() -> bool:
        raise ConnectionError

    assert is_async_check(healthy) and not is_async_check(lambda: True)
    assert run_check(healthy, 1.0) is True
    assert threads == ["otel-cb health monitor"]
    assert run_check(raises, 1.0) is False
    assert run_check(hangs, 0.05) is False


def test_checks_from_a_coroutine() -> None:
    class Check:  # a callable object with an async __call__ is a coroutine check too
        async def __call__(self) -> bool:
            await asyncio.sleep(0)
            return True

    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    async def main() -> list[bool]:
        blocked = threading.Event()
        return [
            await run_check_async(Check(), 1.0),
            await run_check_async(lambda: True, 1.0),
            await run_check_async(lambda: False, 1.0),
            await run_check_async(hangs, 0.05),
            await run_check_async(blocked.wait, 0.05),  # a sync check never blocks the loop
        ]

    assert is_async_check(Check())
    assert asyncio.run(main()) == [True, True, False, False, False]


# -- the thread --------------------------------------------------------------------


def test_one_thread_checks_every_watched_breaker_until_it_stops_asking() -> None:
    first, second = StandIn("first"), StandIn("second", checks=5)
    monitor.watch(first, first.interval)
    monitor.watch(second, second.interval)
    assert first.done.wait(10) and second.done.wait(10)
    assert first.threads == second.threads == {"otel-cb health monitor"}
    assert len(monitor_threads()) == 1
    deadline = time.monotonic() + 10
    while (monitor.watching(first) or monitor.watching(second)) and time.monotonic() < deadline:
        second.done.wait(0.01)
    assert not monitor.watching(first) and not monitor.watching(second)
    assert (first.checked, second.checked) == (3, 5)


def test_a_hanging_check_never_delays_the_others() -> None:
    stuck, fine = StandIn("stuck", hang=True), StandIn("fine")
    monitor.watch(stuck, stuck.interval)
    monitor.watch(fine, fine.interval)
    assert fine.done.wait(10)
    stuck.wanted = 0  # leave the schedule once its check is cancelled at exit


def test_a_check_that_raises_is_logged_once_and_the_breaker_stays_watched(
        caplog: pytest.LogCaptureFixture) -> None:
    class Raising(StandIn):
        async def check_health_async(self) -> bool:
            self.checked += 1
            if self.checked >= self.wanted:
                self.done.set()
            raise RuntimeError("our bug")

    raising = Raising("raising")
    monitor.watch(raising, raising.interval)
    assert raising.done.wait(10)
    assert caplog.text.count("health check of circuit breaker 'raising'") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_has_a_monitor_thread_of_its_own() -> None:
    parent = StandIn("forked", checks=10**9)
    monitor.watch(parent, parent.interval)
    assert monitor.running
    generation = monitor.generation
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            parent.checked = 0
            parent.wanted = 3
            parent.done.clear()
            ok = monitor.generation == generation + 1 and parent.done.wait(10)
            ok = ok and len(monitor_threads()) == 1  # the parent's thread is not here
            code = 0 if ok and parent.checked >= 3 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    parent.wanted = 0
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_with_nothing_to_check_starts_no_thread() -> None:
    script = (
        "import os, sys, threading\n"
        "from otel_cb._health import monitor\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if not monitor.running and monitor.generation == 1 else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60).returncode == 0


def test_the_process_exits_at_once_with_checks_hanging() -> None:
    script = (
        "import asyncio, threading\n"
        "from otel_cb._health import monitor, run_check\n"
        "class Stuck:\n"
        "    name = 'stuck'\n"
        "    def _wants_health_checks(self): return 0.001\n"
        "    async def check_health_async(self):\n"
        "        started.set()\n"
        "        await asyncio.Event().wait()\n"
        "started = threading.Event()\n"
        "stuck = Stuck()\n"
        "monitor.watch(stuck, 0.001)\n"
        "assert started.wait(10)\n"
        "hung = threading.Event()\n"
        "assert run_check(hung.wait, 0.01) is False\n"  # a sync check left hanging in its thread too
        "print('exiting')\n"
    )
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "exiting\n", result.stderr
    assert "Task was destroyed" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - start < 30  # a hang guard, not a timing assertion


def test_the_monitor_starts_only_when_asked() -> None:
    script = (
        "import threading, otel_cb, otel_cb._health\n"
        "quiet = otel_cb.CircuitBreaker('quiet')\n"
        "quiet.call(lambda: 1)\n"
        "assert not otel_cb._health.monitor.running\n"
        "assert not [t for t in threading.enumerate() if t.name == 'otel-cb health monitor']\n"
    )
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60).returncode == 0


def test_after_stop_nothing_is_watched_and_sync_code_gets_no_loop() -> None:
    stopped = HealthMonitor()
    stopped.stop()
    stopped.watch(StandIn(), 0.01)
    assert not stopped.running
    with pytest.raises(RuntimeError):
        stopped.run_blocking(lambda: asyncio.sleep(0), 0.1)
