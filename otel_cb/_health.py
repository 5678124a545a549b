"""Health checks of open breakers: running one check, and the background monitor.

A health check is a callable or a coroutine function taking no arguments;
a falsy return value, an exception or running past its timeout means
unhealthy. This module runs checks and schedules them; what a result does to
a breaker (half-open after enough passes, no user probe while checks fail)
is the breaker's business, behind ``check_health()`` / ``check_health_async()``.

- ``run_check(check, timeout)`` runs one check from synchronous code and
  ``run_check_async(check, timeout)`` from a coroutine. A plain callable runs
  in a daemon thread of its own, so a check that hangs costs its timeout and
  one idle thread, never the caller's thread, the event loop or the exit of
  the process. A coroutine check runs on the caller's loop when awaited, and
  on the monitor's loop when called from synchronous code: checks should not
  rely on resources bound to the application's loop (open a fresh
  connection, as the integrations' default checks do).
- ``monitor`` (a ``HealthMonitor``) is the one background thread of the
  process, with its own event loop, that checks every breaker that asks for
  it (``watch(breaker)``, when a breaker with a health check and a
  ``health_check_interval`` opens). The thread starts on the first
  ``watch()``. Each breaker is checked every ``interval`` seconds, jittered
  by up to ``JITTER`` either way so that a fleet does not check in lockstep,
  never twice at once, until it no longer asks (it closed or went
  half-open). The thread is a daemon and is never joined: stopping it at exit
  (``atexit``) only asks it to stop. A forked child drops the parent's
  thread and loop (it has neither) and starts a thread of its own if it
  inherited breakers still waiting for checks.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

__all__ = ["HealthCheck", "HealthMonitor", "Monitored", "is_async_check", "monitor", "run_check",
           "run_check_async"]

logger = logging.getLogger("otel_cb")

HealthCheck = Callable[[], Any]
T = TypeVar("T")
JITTER = 0.1  # each interval is drawn from [interval * 0.9, interval * 1.1]


def is_async_check(check: HealthCheck) -> bool:
    """True for a coroutine function (or a callable object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(type(check).__call__)


def _verdict(value: object) -> bool:
    return bool(value)


def _in_daemon_thread(check: HealthCheck, done: Callable[[bool], None], name: str) -> None:
    """Run ``check()`` in a new daemon thread and hand its verdict to ``done`` there."""

    def run() -> None:
        try:
            passed = _verdict(check())
        except BaseException:  # a check that raises anything is unhealthy; it must not kill the thread silently
            logger.debug("health check %s raised", name, exc_info=True)
            passed = False
        done(passed)

    threading.Thread(target=run, name=f"otel-cb health check {name}", daemon=True).start()


def run_check(check: HealthCheck, timeout: float, *, name: str = "") -> bool:
    """Run one check from synchronous code, waiting at most ``timeout`` seconds.

    Returns:
        True when it returned a truthy value in time.
    """
    if is_async_check(check):
        try:
            return monitor.run_blocking(lambda: run_check_async(check, timeout, name=name), timeout)
        except Exception:  # no monitor loop to run it on (the process is exiting)
            logger.debug("health check %s could not run", name, exc_info=True)
            return False
    result: list[bool] = []
    finished = threading.Event()

    def done(passed: bool) -> None:
        result.append(passed)
        finished.set()

    _in_daemon_thread(check, done, name)
    return finished.wait(timeout) and result[0]


async def run_check_async(check: HealthCheck, timeout: float, *, name: str = "") -> bool:
    """Run one check from a coroutine, waiting at most ``timeout`` seconds.

    Cancellation of the caller propagates; it is no verdict.

    Returns:
        True when it returned a truthy value in time.
    """
    if is_async_check(check):
        try:
            return _verdict(await asyncio.wait_for(check(), timeout))
        except asyncio.CancelledError:
            raise
        except Exception:  # a timeout included
            logger.debug("health check %s raised", name, exc_info=True)
            return False
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()

    def done(passed: bool) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, passed)
        except RuntimeError:  # the loop closed while the check ran
            pass

    _in_daemon_thread(check, done, name)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        return False


def _settle(future: asyncio.Future[bool], passed: bool) -> None:
    if not future.done():
        future.set_result(passed)


class Monitored(Protocol):
    """What the monitor asks of a breaker it watches."""

    @property
    def name(self) -> str: ...

    def _wants_health_checks(self) -> float | None:
        """Seconds between background checks while the breaker wants them, else None."""

    def check_health_async(self) -> Awaitable[bool]:
        """Run one check and apply its result."""


class _Entry:
    __slots__ = ("ref", "due", "running")

    def __init__(self, ref: weakref.ref[Monitored], due: float) -> None:
        self.ref = ref
        self.due = due
        self.running = False


class HealthMonitor:
    """The background thread that checks watched breakers (see the module docstring).

    Args:
        clock: Monotonic seconds, for the schedule (``time.monotonic``).
        rand: A uniform draw in [0, 1), for the jitter (``random.random``).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self._rand = rand
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stopping = False
        self.generation = 0  # bumped in a forked child: breakers can tell their watch is gone

    # -- what breakers call ---------------------------------------------------

    def watch(self, breaker: Monitored, interval: float) -> None:
        """Check ``breaker`` every ``interval`` seconds (jittered) until it stops
        asking, starting the thread if need be.

        Idempotent: a breaker already watched keeps its schedule.
        """
        with self._lock:
            if self._add_locked(breaker, interval):
                self._start_locked()
        self._poke()

    def add(self, breaker: Monitored, interval: float) -> None:
        """Put ``breaker`` on the schedule without starting the thread (tests drive ``due``)."""
        with self._lock:
            self._add_locked(breaker, interval)

    def watching(self, breaker: Monitored) -> bool:
        """True while ``breaker`` is on the schedule."""
        with self._lock:
            entry = self._entries.get(id(breaker))
            return entry is not None and entry.ref() is breaker

    def run_blocking(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Run the coroutine ``make()`` on the monitor's loop and wait for it.

        Raises:
            TimeoutError: when it has not finished after ``timeout`` seconds
                and a margin; it is cancelled then.
        """
        with self._lock:
            self._start_locked()
            thread = self._thread
        if thread is None or threading.current_thread() is thread or not self._ready.wait(timeout):
            raise RuntimeError("the health monitor cannot run this check")
        loop = self._loop
        assert loop is not None

        async def wrapped() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(wrapped(), loop)
        try:
            return future.result(timeout + 1.0)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Ask the thread to stop; never waits for it (the process may be exiting)."""
        with self._lock:
            self._stopping = True
            self._entries.clear()
        self._poke()

    @property
    def running(self) -> bool:
        """True while the monitor's thread is alive in this process."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- the schedule (pure; the thread below drives it) ------------------------

    def _add_locked(self, breaker: Monitored, interval: float) -> bool:
        if self._stopping:
            return False
        entry = self._entries.get(id(breaker))
        if entry is None or entry.ref() is not breaker:
            self._entries[id(breaker)] = _Entry(weakref.ref(breaker), self._next_due(self._clock(), interval))
        return True

    def _next_due(self, now: float, interval: float) -> float:
        return now + interval * (1.0 + JITTER * (2.0 * self._rand() - 1.0))

    def due(self, now: float) -> tuple[list[Monitored], float | None]:
        """Take the breakers whose check is due at ``now`` (marking them running)
        and return them with the earliest later deadline (None: nothing scheduled).

        A breaker that no longer wants checks, or is gone, leaves the schedule.
        """
        ready: list[Monitored] = []
        later: float | None = None
        with self._lock:
            for key, entry in list(self._entries.items()):
                breaker = entry.ref()
                if breaker is None:
                    del self._entries[key]
                    continue
                if entry.running:
                    continue
                if entry.due <= now:
                    ready.append(breaker)
                    entry.running = True
                elif later is None or entry.due < later:
                    later = entry.due
        return ready, later

    def finished(self, breaker: Monitored, now: float) -> None:
        """A check of ``breaker`` ended: schedule the next one, or drop it if it no longer asks."""
        from . import _observers

        interval = _observers.call_safely(breaker._wants_health_checks, "health check schedule")
        with self._lock:
            entry = self._entries.get(id(breaker))
            if entry is None or entry.ref() is not breaker:
                return
            if interval is None:
                del self._entries[id(breaker)]
            else:
                entry.running = False
                entry.due = self._next_due(now, interval)

    # -- the thread -----------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is not None or self._stopping:
            return
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="otel-cb health monitor", daemon=True)
        self._thread.start()

    def _poke(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            try:
                loop.call_soon_threadsafe(wakeup.set)
            except RuntimeError:  # closed: the thread has stopped
                pass

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        except Exception:
            logger.error("the otel-cb health monitor stopped; open breakers fall back to timed probes",
                         exc_info=True)
        finally:
            try:
                loop.close()
            except Exception:
                pass

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        wakeup = asyncio.Event()
        self._wakeup = wakeup
        self._loop = loop
        self._ready.set()
        checks: set[asyncio.Task[None]] = set()
        while not self._stopping:
            # Cleared before reading the schedule: a watch() from now on sets it
            # again (its callback runs on this loop, only while we wait).
            wakeup.clear()
            ready, later = self.due(self._clock())
            for breaker in ready:
                task = loop.create_task(self._check(breaker))
                checks.add(task)
                task.add_done_callback(checks.discard)
            delay = None if later is None else max(0.0, later - self._clock())
            try:
                await asyncio.wait_for(wakeup.wait(), delay)
            except asyncio.TimeoutError:
                pass
        for task in checks:
            task.cancel()
        await asyncio.sleep(0)  # let them see it; never wait for a check to finish

    async def _check(self, breaker: Monitored) -> None:
        from . import _observers

        try:
            await breaker.check_health_async()
        except Exception as exc:
            _observers.call_safely(_reraise, f"health check of circuit breaker {breaker.name!r}", exc)
        finally:
            self.finished(breaker, self._clock())
            self._poke()

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here, and its loop and lock may be
        # mid-use: start from new ones, keeping the breakers still waiting.
        self._lock = threading.Lock()
        self._thread = None
        self._loop = None
        self._wakeup = None
        self._ready = threading.Event()
        self.generation += 1
        for entry in self._entries.values():
            entry.running = False
        if self._entries and not self._stopping:
            self._start_locked()


def _reraise(exc: Exception) -> None:
    raise exc  # for call_safely, which logs it once per breaker


monitor = HealthMonitor()
atexit.register(monitor.stop)
os.register_at_fork(after_in_child=monitor._after_fork_in_child)
