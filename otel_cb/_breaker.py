"""`CircuitBreaker`: one breaker's state, settings and public face.

What a breaker does is split by what each part holds:

- ``_states``: the state machine, one class per state (admit, record, leave),
  the README's transition table in its docstring; half-open lives in
  ``_states.HalfOpen``;
- ``_calling``: the calling styles (``call``, ``call_async``, decorators,
  ``with``, streams, fallbacks, ``acquire``), all over one admission mechanism;
- ``_permit``: ``Permit``, one admitted call and its report;
- ``_stats``: call counters and duration histograms;
- ``_listeners``: who hears of a transition; ``_shared_link``: the shared-state
  backend's protocol.

This module holds the breaker's fields and what reads or sets them from
outside: state properties, manual transitions, listeners, ``snapshot()``, the
seams for shared state and telemetry, and fork safety.

The breaker is I/O-free: all time comes from the injected clock, and every
call out to code it does not own (listeners, observers, predicates, shared
state) goes through ``_observers.call_safely``. One non-reentrant lock guards
the state; it is never held while the protected call runs, and never while
listeners run. A forked child gets a new lock (``os.register_at_fork``), so a
thread of the parent that held it at the fork cannot block the child.
"""

from __future__ import annotations

import contextvars
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import _health, _listeners, _observers, _states
from ._calling import CallingStyles, FirstCall
from ._config import CircuitBreakerConfig
from ._detection import AdaptiveDetector
from ._permit import Permit
from ._shared_link import SharedStateSync
from ._state import CircuitState, Reason, StateChangeEvent, Verdict
from ._stats import CallCounters, DurationHistogram, HistogramData

__all__ = ["BreakerSnapshot", "CircuitBreaker", "Permit", "SharedStateSync"]

Clock = Callable[[], float]

_STATE_INDEX = {state: index for index, state in enumerate(CircuitState)}
_DEFAULT_CONFIG = CircuitBreakerConfig()
_UNDECIDED = object()  # a predicate that raised: fall back to the rule it replaces


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent picture of one breaker at one moment.

    Attributes:
        name: The breaker's name.
        state: Its current state.
        failure_rate: Failed share of the calls in the window (0.0 when empty).
        slow_call_rate: Slow share of the calls in the window (0.0 when empty).
        buffered_calls: Calls the window holds now (closed state; 0 otherwise).
        consecutive_failures: Failures since the last success (closed state).
        half_open_calls: Probes in flight (half-open state).
        retry_after: Seconds until a probe is admitted while open, else None.
        time_in_state: Seconds spent in each state since the breaker was made,
            the current stay included.
        calls: Calls since the breaker was made, by outcome
            (``success``, ``failure``, ``ignored``, ``rejected``).
        slow_calls: Slow calls by outcome (``success``, ``failure``).
        fallbacks: Fallbacks served, by outcome (``success``, ``failure``,
            ``refused``: a fail-closed answer, served but not a substitute).
        durations: Call-duration histograms by outcome, when enabled (telemetry).
        health_checks: Health checks run since the breaker was made, by
            outcome (``passed``, ``failed``).
    """

    name: str
    state: CircuitState
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    consecutive_failures: int
    half_open_calls: int
    retry_after: float | None
    time_in_state: dict[CircuitState, float]
    calls: dict[str, int]
    slow_calls: dict[str, int]
    fallbacks: dict[str, int]
    durations: dict[str, HistogramData]
    health_checks: dict[str, int]


class CircuitBreaker(CallingStyles):
    """A circuit breaker guarding calls to one dependency.

    Args:
        name: Identifies the breaker in telemetry, logs and the registry.
        config: Its settings; the default preset when None.
        clock: Zero-argument callable returning monotonic seconds
            (``time.monotonic`` when None); inject a fake one in tests.
        health_check: A callable or coroutine function taking no arguments
            that says whether the dependency is healthy (a falsy value or an
            exception: unhealthy). While the breaker is open it replaces user
            calls as probes: see ``check_health()``.

    A breaker is used by calling through it (``call``, ``call_async``,
    ``call_with_fallback``), decorating a function, guarding a block
    (``with breaker:``), protecting a stream, or taking a ``Permit`` by hand.
    """

    __slots__ = (
        "name", "_config", "_clock", "_lock", "_current", "_state", "_epoch", "_window", "_detector",
        "_since", "_state_time", "_listeners", "_slow_at", "_min_calls", "_failure_rate_at", "_slow_rate_at",
        "_failed_result", "_counters", "_histogram", "_stack", "_shared",
        "_adapts", "_adaptive", "_health_check", "_check_trusted", "_checks_passed", "_checks_failed",
        "_check_expiry_logged", "__weakref__",
    )

    def __init__(self, name: str, config: CircuitBreakerConfig | None = None, *, clock: Clock | None = None,
                 health_check: _health.HealthCheck | None = None) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"name: {name!r} is not allowed; use a non-empty string of at most 200 characters")
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise ValueError(f"config: {config!r} is not allowed; use a CircuitBreakerConfig or None")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock: {clock!r} is not allowed; use a zero-argument callable returning seconds")
        _check_health_check(health_check)
        config = config if config is not None else _DEFAULT_CONFIG
        self.name = name
        self._config = config
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        # The rules, flattened once so the call path reads one attribute each;
        # a rule that is off gets a bound no value reaches.
        self._slow_at = config.slow_call_duration if config.slow_call_duration is not None else math.inf
        minimum = config.minimum_calls
        if config.window_type == "count":
            # A count window never holds more than window_size calls (as in resilience4j).
            minimum = min(minimum, int(config.window_size))
        self._min_calls = minimum
        self._failure_rate_at = config.failure_rate_threshold if config.failure_rate_threshold is not None else math.inf
        self._slow_rate_at = config.slow_call_rate_threshold if config.slow_call_duration is not None else math.inf
        self._failed_result = config.is_failure_result
        self._counters = CallCounters()
        self._histogram: DurationHistogram | None = None
        self._stack: contextvars.ContextVar[tuple[Permit, ...]] | None = None
        self._shared: SharedStateSync | None = None
        self._detector: _states.FailureDetector | None = None
        self._adapts = config.adaptive and config.failure_threshold is not None
        self._adaptive: AdaptiveDetector | None = None  # made at the first failure: idle breakers stay small
        self._health_check = health_check
        self._check_trusted = True  # the check's passes alone may end an open stay (see _states.Open)
        self._checks_passed = self._checks_failed = 0
        self._check_expiry_logged = False
        self._listeners: tuple[_listeners.Listener, ...] = ()
        FirstCall.install(self)
        self._window = _states.new_window(self)
        self._epoch = 0  # transitions so far (the shared-state backend matches probe leases by it)
        self._current: _states.State = _states.Closed(self)
        self._state = CircuitState.CLOSED  # the current stay's kind, for readers
        self._since = self._clock()
        self._state_time: list[float] | None = None
        _observers.live_breakers.add(self)
        if _observers.observers:
            _observers.notify("breaker_created", self)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's settings (read-only: the call path caches them)."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The breaker's time source (monotonic seconds); integrations age their
        own state (a stale cache) on it so that a fake clock drives both."""
        return self._clock

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state. An open breaker that may admit a probe (its
        timeout elapsed) reads, and becomes, ``half_open``, without a call."""
        stay = self._current
        if isinstance(stay, _states.Open) and stay.may_probe(self._clock()):
            self._half_open_if_due()
        return self._state

    @property
    def is_closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    @property
    def is_open(self) -> bool:
        """True when open or forced open: calls are being rejected."""
        state = self.state
        return state is CircuitState.OPEN or state is CircuitState.FORCED_OPEN

    @property
    def is_half_open(self) -> bool:
        return self.state is CircuitState.HALF_OPEN

    def _half_open_if_due(self) -> None:
        with self._lock:
            event = _states.half_open_if_due(self, self._clock())
        if event is not None:
            self._announce(event)

    def force_open(self) -> None:
        """Reject every call until ``reset()``; a recorded transition."""
        self._manual(CircuitState.FORCED_OPEN, Reason.FORCE_OPEN)

    def disable(self) -> None:
        """Admit every call and record nothing until ``reset()``; a recorded transition."""
        self._manual(CircuitState.DISABLED, Reason.DISABLE)

    def reset(self) -> None:
        """Close the breaker and forget its window and backoff; a recorded transition."""
        self._manual(CircuitState.CLOSED, Reason.RESET)

    def _manual(self, state: CircuitState, reason: Reason) -> None:
        with self._lock:
            now = self._clock()
            event = _states.enter(self, self._stay_of(state, now), reason, now)
        self._announce(event)

    def _stay_of(self, state: CircuitState, now: float, open_remaining: float | None = None) -> _states.State:
        """A new stay in ``state`` (entered by hand or by the fleet). Lock held."""
        reopenings = self._current.reopenings
        if state is CircuitState.CLOSED:
            return _states.Closed(self)
        if state is CircuitState.OPEN:
            remaining = open_remaining if open_remaining is not None else self._config.open_timeout
            return self._open_stay(now, now + remaining, remaining, reopenings)
        if state is CircuitState.HALF_OPEN:
            return _states.HalfOpen(reopenings)
        if state is CircuitState.FORCED_OPEN:
            return _states.ForcedOpen(reopenings)
        return _states.Disabled(reopenings)

    def _new_adaptive(self) -> AdaptiveDetector:
        """The adaptive detector, made at the first closed-state failure. Lock held.

        Every success so far came before any failure: it starts by learning them all."""
        assert self._config.failure_threshold is not None
        detector = self._adaptive = AdaptiveDetector(self._config.failure_threshold)
        return detector

    def _open_stay(self, now: float, until: float, timeout: float, reopenings: int) -> _states.Open:
        """A new open stay, with the health check's terms if one is attached. Lock held."""
        if self._health_check is None:
            return _states.Open(until, timeout, reopenings)
        return _states.Open(until, timeout, reopenings, checked_until=now + self._config.max_open_timeout,
                            trusted=self._check_trusted)

    def _time_in_state(self, left: CircuitState, now: float) -> None:
        """Add the stay in ``left`` that ends at ``now`` to the time in state. Lock held."""
        if self._state_time is None:
            self._state_time = [0.0] * len(_STATE_INDEX)
        self._state_time[_STATE_INDEX[left]] += max(0.0, now - self._since)
        self._since = now

    # -- listeners ---------------------------------------------------------------

    def add_listener(self, listener: _listeners.Listener) -> _listeners.Listener:
        """Call ``listener(event)`` after every transition; returns it (usable as a decorator).

        A listener runs outside the breaker's lock, in the thread that caused
        the transition. One that raises is logged and never breaks a call.
        """
        with self._lock:
            self._listeners = _listeners.with_listener(self._listeners, listener)
        return listener

    def remove_listener(self, listener: _listeners.Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._listeners = _listeners.without_listener(self._listeners, listener)

    def _announce(self, event: StateChangeEvent) -> None:
        if event.state is CircuitState.OPEN:
            self._watch_health()
        _listeners.announce(self, event)

    # -- reading ------------------------------------------------------------------

    def snapshot(self) -> BreakerSnapshot:
        """Return state, window rates, counters and time in state, read under the lock.

        An open breaker that may admit a probe moves to half-open first (see ``state``).
        """
        self.state  # noqa: B018  (the open -> half-open move, if due)
        with self._lock:
            now = self._clock()
            stay = self._current
            state = stay.kind
            total, failures, slow, consecutive, probes, retry_after = stay.gauges(self, now)
            time_in_state = {s: (self._state_time[index] if self._state_time else 0.0)
                             for s, index in _STATE_INDEX.items()}
            time_in_state[state] += max(0.0, now - self._since)
            counters = self._counters
            # (gauges took the closed stay's lock-free tally in.)
            successes = counters.success + (stay.fast_successes if isinstance(stay, _states.Closed) else 0)
            return BreakerSnapshot(
                name=self.name,
                state=state,
                failure_rate=failures / total if total else 0.0,
                slow_call_rate=slow / total if total else 0.0,
                buffered_calls=total,
                consecutive_failures=consecutive,
                half_open_calls=probes,
                retry_after=retry_after,
                time_in_state=time_in_state,
                calls={"success": successes, "failure": counters.failure,
                       "ignored": counters.ignored, "rejected": counters.rejected()},
                slow_calls={"success": counters.slow_success, "failure": counters.slow_failure},
                fallbacks=counters.fallbacks(),
                durations=self._histogram.data() if self._histogram is not None else {},
                health_checks={"passed": self._checks_passed, "failed": self._checks_failed},
            )

    def activity(self) -> tuple[int, CircuitState, float, int, int, int]:
        """A cheap reading for collections: ``(activity, state, seconds, buffered, failures, slow)``.

        ``activity`` grows with every outcome counted, rejection, fallback,
        health check and transition, and stays the same otherwise: while it
        does, every count ``snapshot()`` reports (calls, slow calls, fallbacks,
        durations, health checks, the time spent in earlier stays) stays the
        same. What an idle breaker still changes is the rest: ``seconds`` spent
        in its current ``state`` since it was made (``snapshot().time_in_state``
        for that state), and the window as it ages (``buffered`` calls,
        ``failures`` and ``slow`` among them). Telemetry reads this for every
        breaker at every collection and a ``snapshot()`` only when it changed.
        Like ``snapshot()``, it moves an open breaker whose timeout elapsed to
        half-open first.
        """
        self.state  # noqa: B018  (the open -> half-open move, if due)
        with self._lock:
            now = self._clock()
            stay = self._current
            total, failures, slow = stay.gauges(self, now)[:3]
            activity = self._epoch + self._counters.total() + self._checks_passed + self._checks_failed
            if isinstance(stay, _states.Closed):
                activity += stay.fast_successes  # added to the counters when the stay ends, with a transition
            state = stay.kind
            seconds = self._state_time[_STATE_INDEX[state]] if self._state_time else 0.0
            return activity, state, seconds + max(0.0, now - self._since), total, failures, slow

    def classify(self, exc: BaseException) -> Verdict | None:
        """How this breaker judges an exception: ``failure``, ``ignored`` or None.

        None (no verdict) is for what is not an ``Exception`` at all:
        cancellation, ``GeneratorExit``, ``KeyboardInterrupt``, ``SystemExit``.
        An ``is_failure`` predicate that raises is logged once and the
        ``record_exceptions`` rule decides instead.
        """
        if not isinstance(exc, Exception):
            return None
        config = self._config
        if config.ignore_exceptions and isinstance(exc, config.ignore_exceptions):
            return "ignored"
        if config.is_failure is not None:
            decided = _observers.call_safely(
                config.is_failure, f"is_failure of circuit breaker {self.name!r}", exc, default=_UNDECIDED)
            if decided is not _UNDECIDED:
                return "failure" if decided else "ignored"
        return "failure" if isinstance(exc, config.record_exceptions) else "ignored"

    # -- seams for shared state, telemetry and detectors ------------------------------

    @property
    def shared_state(self) -> SharedStateSync | None:
        """The shared-state backend link attached to this breaker, if any."""
        return self._shared

    def attach_shared_state(self, sync: SharedStateSync | None) -> None:
        """Attach a shared-state link (``otel_cb.shared`` does); None detaches."""
        with self._lock:
            self._shared = sync

    def apply_shared_state(self, state: CircuitState, open_remaining: float | None = None) -> None:
        """Enter a state the fleet decided on (from a shared-state backend); a recorded transition."""
        with self._lock:
            if state is self._state:
                return
            now = self._clock()
            stay = self._stay_of(state, now, open_remaining)
            timeout = stay.timeout if isinstance(stay, _states.Open) else None
            event = _states.enter(self, stay, Reason.SHARED_STATE, now, timeout)
        self._announce(event)

    def enable_duration_histogram(self) -> None:
        """Start keeping call durations per outcome (telemetry turns this on)."""
        with self._lock:
            if self._histogram is None:
                self._histogram = DurationHistogram()
                stay = self._current
                if isinstance(stay, _states.Closed):
                    stay.settle(self)  # lock-free successes from now on append their durations

    def attach_failure_detector(self, detector: _states.FailureDetector | None) -> None:
        """Consult ``detector`` on every closed-state outcome (see ``_states.FailureDetector``);
        None detaches. The built-in rules still apply first."""
        with self._lock:
            self._detector = detector
            stay = self._current
            if isinstance(stay, _states.Closed):
                stay.use_detector(self, detector)

    # -- health checks ------------------------------------------------------------

    @property
    def health_check(self) -> _health.HealthCheck | None:
        """The attached health check, if any."""
        return self._health_check

    def attach_health_check(self, check: _health.HealthCheck | None) -> None:
        """Attach a health check (integrations do, for breakers they create); None detaches.

        Raises:
            ValueError: when ``check`` is neither callable nor None.
        """
        _check_health_check(check)
        with self._lock:
            self._health_check = check
            stay = self._current
            if isinstance(stay, _states.Open):  # the current stay takes the new terms at once
                now = self._clock()
                stay.take_terms(None if check is None else now + self._config.max_open_timeout, self._check_trusted)
        self._watch_health()

    def check_health(self) -> bool:
        """Run the health check once now and apply its result; True when it passed.

        While open, ``healthy_threshold`` consecutive passes move the breaker to
        half-open at once (reason ``health_check_passed``), where user calls
        confirm as usual; while the check fails no user call is sent as a
        probe. A coroutine check runs on the health monitor's event loop;
        from a coroutine, prefer ``await check_health_async()``. A check that
        raises or runs past ``health_check_timeout`` has failed.

        Raises:
            ValueError: when no health check is attached.
        """
        passed = _health.run_check(self._need_health_check(), self._config.health_check_timeout, name=self.name)
        self._apply_health(passed)
        return passed

    async def check_health_async(self) -> bool:
        """``check_health()`` for coroutines: a coroutine check is awaited on this
        loop, a plain one runs in a thread of its own."""
        check = self._need_health_check()
        passed = await _health.run_check_async(check, self._config.health_check_timeout, name=self.name)
        self._apply_health(passed)
        return passed

    def _need_health_check(self) -> _health.HealthCheck:
        check = self._health_check
        if check is None:
            raise ValueError(f"circuit breaker {self.name!r} has no health check; "
                             "pass health_check= or call attach_health_check()")
        return check

    def _apply_health(self, passed: bool) -> None:
        with self._lock:
            if passed:
                self._checks_passed += 1
            else:
                self._checks_failed += 1
            stay = self._current
            event = None
            expired = False
            if isinstance(stay, _states.Open):
                now = self._clock()
                event = stay.health_result(self, passed, now)
                expired = not passed and stay.checked_until is not None and now >= stay.checked_until
        if expired and not self._check_expiry_logged:
            self._check_expiry_logged = True
            _observers.logger.warning(
                "circuit breaker %r: its health check has failed for max_open_timeout (%gs); "
                "user calls are sent as probes again", self.name, self._config.max_open_timeout)
        if event is not None:
            self._announce(event)
        if _observers.observers:
            _observers.notify("health_checked", self, passed)

    def _wants_health_checks(self) -> float | None:
        """Seconds between background checks while open with a check attached, else None (the monitor asks)."""
        if self._health_check is None or not isinstance(self._current, _states.Open):
            return None
        return self._config.health_check_interval

    def _watch_health(self) -> None:
        interval = self._wants_health_checks()
        if interval is not None:
            _health.monitor.watch(self, interval)

    def _after_fork_in_child(self) -> None:
        # The parent's lock may have been held by a thread that does not exist here.
        self._lock = threading.Lock()


def _check_health_check(check: object) -> None:
    if check is not None and not callable(check):
        raise ValueError(f"health_check: {check!r} is not allowed; use a callable or coroutine function, or None")


def _renew_locks_in_child() -> None:
    for breaker in list(_observers.live_breakers):
        breaker._after_fork_in_child()


os.register_at_fork(after_in_child=_renew_locks_in_child)
