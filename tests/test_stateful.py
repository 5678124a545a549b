"""Random call sequences against a small, independent reference model of the breaker's rules.

The model restates the rules of the README (states, the three opening rules
checked after every closed-state outcome, lazy half-open, probe slots,
backoff, no-verdict permits, stale epochs, manual states) in the plainest
form: a list of outcomes, no running totals, no fast paths. After every step
the breaker's transitions (seen by a listener), its state and its snapshot
must match the model's.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, Permit

from .conftest import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
FORCED_OPEN, DISABLED = CircuitState.FORCED_OPEN, CircuitState.DISABLED
SLOW = 2.0  # how long a slow call takes; slow_call_duration is SLOW or None


class Boom(Exception):
    pass


class Ignored(Exception):
    pass


@st.composite
def configs(draw: st.DrawFn) -> CircuitBreakerConfig:
    window_type = draw(st.sampled_from(["time", "count"]))
    open_timeout = draw(st.sampled_from([1.0, 4.0]))
    return CircuitBreakerConfig(
        failure_threshold=draw(st.sampled_from([None, 1, 2, 3, 4])),
        failure_rate_threshold=draw(st.sampled_from([None, 0.25, 0.5, 1.0])),
        slow_call_duration=draw(st.sampled_from([None, SLOW])),
        slow_call_rate_threshold=draw(st.sampled_from([0.5, 1.0])),
        minimum_calls=draw(st.integers(1, 5)),
        window_type=window_type,
        # Time windows of 10 or 20 s have 1 s buckets: every figure stays exact.
        window_size=draw(st.sampled_from([10, 20])) if window_type == "time" else draw(st.integers(1, 6)),
        open_timeout=open_timeout,
        backoff_multiplier=draw(st.sampled_from([1.0, 2.0])),
        max_open_timeout=open_timeout * draw(st.sampled_from([1, 3, 100])),
        half_open_max_calls=draw(st.integers(1, 3)),
        success_threshold=draw(st.integers(1, 3)),
        ignore_exceptions=(Ignored,),
        adaptive=False,  # the model is the classic rule; tests/test_detection.py covers the adaptive one
    )


@dataclass
class Model:
    """The rules, restated. Times are the fake clock's."""

    config: CircuitBreakerConfig
    state: CircuitState = CLOSED
    epoch: int = 0
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    probes: int = 0
    open_until: float = 0.0
    reopenings: int = 0
    outcomes: deque[tuple[int, bool, bool]] = field(default_factory=deque)  # (bucket or 0, failed, slow)
    head: int = -(10**9)
    events: list[tuple[str, str, str, float | None]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0, "ignored": 0, "rejected": 0})
    slow_calls: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})

    # -- the window ---------------------------------------------------------

    def bucket(self, now: float) -> int:
        return math.floor(now / 1.0)  # 1 s buckets (see configs)

    def in_window(self, now: float) -> list[tuple[int, bool, bool]]:
        if self.config.window_type == "count":
            return list(self.outcomes)
        newest = max(self.head, self.bucket(now))
        return [o for o in self.outcomes if o[0] > newest - self.config.window_size]

    def add(self, now: float, failed: bool, slow: bool) -> None:
        if self.config.window_type == "count":
            self.outcomes.append((0, failed, slow))
            while len(self.outcomes) > self.config.window_size:
                self.outcomes.popleft()
        else:
            self.head = max(self.head, self.bucket(now))
            self.outcomes = deque(self.in_window(now))
            self.outcomes.append((self.head, failed, slow))

    # -- transitions --------------------------------------------------------

    def enter(self, state: CircuitState, reason: str, timeout: float | None = None) -> None:
        self.events.append((self.state.value, state.value, reason, timeout))
        self.state = state
        self.epoch += 1
        self.probes = 0
        self.consecutive_successes = 0
        if state is CLOSED:
            self.consecutive_failures = 0
            self.reopenings = 0
            self.outcomes.clear()

    def open(self, reason: str, now: float) -> None:
        self.reopenings = self.reopenings + 1 if self.state is HALF_OPEN else 0
        c = self.config
        timeout = min(c.open_timeout * c.backoff_multiplier ** self.reopenings, c.max_open_timeout)
        self.open_until = now + timeout
        self.enter(OPEN, reason, timeout)

    def admit(self, now: float) -> int | None:
        """The epoch a call is admitted in (-1: disabled), or None when rejected."""
        if self.state is CLOSED:
            return self.epoch
        if self.state is DISABLED:
            return -1
        if self.state is OPEN and now >= self.open_until:
            self.enter(HALF_OPEN, "open_timeout_elapsed")
        if self.state is HALF_OPEN and self.probes < self.config.half_open_max_calls:
            self.probes += 1
            return self.epoch
        self.calls["rejected"] += 1
        return None

    def retry_after(self, now: float) -> float | None:
        if self.state is OPEN:
            return self.open_until - now
        return 0.0 if self.state is HALF_OPEN else None

    def record(self, epoch: int, start: float, now: float, verdict: str) -> None:
        """``verdict``: success, failure, ignored or none (no verdict)."""
        if epoch == -1:
            return
        c = self.config
        slow = c.slow_call_duration is not None and now - start >= c.slow_call_duration
        if verdict in ("success", "failure"):
            self.calls[verdict] += 1
            self.slow_calls[verdict] += slow
        elif verdict == "ignored":
            self.calls["ignored"] += 1
        if epoch != self.epoch:
            return  # stale: the breaker has moved on since this call was admitted
        if self.state is HALF_OPEN:
            self.probes -= 1
            if verdict == "failure" or (verdict == "success" and slow):
                self.open("probe_failure", now)
            elif verdict == "success":
                self.consecutive_successes += 1
                if self.consecutive_successes >= c.success_threshold:
                    self.enter(CLOSED, "probe_success")
            return
        if self.state is not CLOSED or verdict not in ("success", "failure"):
            return
        failed = verdict == "failure"
        self.add(now, failed, slow)
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        window = self.in_window(now)
        total = len(window)
        minimum = min(c.minimum_calls, int(c.window_size)) if c.window_type == "count" else c.minimum_calls
        if failed and c.failure_threshold is not None and self.consecutive_failures >= c.failure_threshold:
            self.open("consecutive_failures", now)
        elif total >= minimum and c.failure_rate_threshold is not None and \
                sum(o[1] for o in window) / total >= c.failure_rate_threshold:
            self.open("failure_rate", now)
        elif total >= minimum and c.slow_call_duration is not None and \
                sum(o[2] for o in window) / total >= c.slow_call_rate_threshold:
            self.open("slow_call_rate", now)


@dataclass
class Held:
    permit: Permit
    epoch: int
    start: float


@settings(max_examples=300, stateful_step_count=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.held: list[Held] = []

    @initialize(config=configs())
    def make(self, config: CircuitBreakerConfig) -> None:
        self.model = Model(config)
        self.cb = CircuitBreaker("model", config, clock=self.clock)
        self.events: list[tuple[str, str, str, float | None]] = []
        self.cb.add_listener(lambda e: self.events.append(
            (e.previous_state.value, e.state.value, e.reason.value, e.open_timeout)))

    def _call(self, outcome: str, slow: bool) -> None:
        """One call through ``cb.call``, checked against the model's admission."""
        start = self.clock.now
        epoch = self.model.admit(start)

        def fn() -> str:
            if slow:
                self.clock.advance(SLOW)
            if outcome == "failure":
                raise Boom
            if outcome == "ignored":
                raise Ignored
            if outcome == "none":
                raise asyncio.CancelledError  # a cancelled call: no verdict
            return "ok"

        try:
            assert self.cb.call(fn) == "ok"
        except CircuitOpenError as exc:
            assert epoch is None, "rejected a call the model admits"
            assert exc.retry_after == self.model.retry_after(start)
            return
        except (Boom, Ignored, asyncio.CancelledError):
            pass
        assert epoch is not None, "admitted a call the model rejects"
        self.model.record(epoch, start, self.clock.now, outcome)

    # Mostly fast calls: a fast success is the breaker's hot path, where it
    # re-checks the rate rules only when the window ages or fills.
    @rule(outcome=st.sampled_from(["success", "success", "failure", "failure", "ignored", "none"]),
          slow=st.sampled_from([False, False, False, True]))
    def call(self, outcome: str, slow: bool) -> None:
        self._call(outcome, slow)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 5.0, 9.5, 30.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def acquire(self) -> None:
        """Take a permit and hold it: concurrent calls and probes."""
        now = self.clock.now
        epoch = self.model.admit(now)
        try:
            permit = self.cb.acquire()
        except CircuitOpenError:
            assert epoch is None, "rejected a permit the model grants"
            return
        assert epoch is not None, "granted a permit the model rejects"
        self.held.append(Held(permit, epoch, now))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), verdict=st.sampled_from(["success", "failure", "ignored", "none"]))
    def finish(self, data: st.DataObject, verdict: str) -> None:
        held = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        report = {"success": held.permit.record_success, "failure": held.permit.record_failure,
                  "ignored": held.permit.record_ignored, "none": held.permit.release}
        report[verdict]()
        self.model.record(held.epoch, held.start, self.clock.now, verdict)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        held = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        epoch, start = held.epoch, held.start
        del held  # the only reference: the permit's finaliser runs now
        self.model.record(epoch, start, self.clock.now, "none")

    @rule(action=st.sampled_from(["force_open", "disable", "reset"]))
    def manual(self, action: str) -> None:
        getattr(self.cb, action)()
        state = {"force_open": FORCED_OPEN, "disable": DISABLED, "reset": CLOSED}[action]
        self.model.enter(state, action)

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        model, snap = self.model, self.cb.snapshot()
        now = self.clock.now
        if model.state is OPEN and now >= model.open_until:
            model.enter(HALF_OPEN, "open_timeout_elapsed")  # reading the breaker moves it (no call needed)
        assert self.events == model.events
        assert self.cb.state is model.state
        assert snap.calls == model.calls
        assert snap.slow_calls == model.slow_calls
        assert snap.half_open_calls == (model.probes if model.state is HALF_OPEN else 0)
        assert snap.consecutive_failures == (model.consecutive_failures if model.state is CLOSED else 0)
        assert snap.buffered_calls == (len(model.in_window(now)) if model.state is CLOSED else 0)
        assert snap.retry_after == (model.open_until - now if model.state is OPEN else None) or \
            (model.state is OPEN and snap.retry_after == 0.0 and model.open_until <= now)


TestBreakerMachine = BreakerMachine.TestCase
