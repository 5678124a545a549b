"""The breaker's state machine: one class per state, one interface for all.

| state | calls | leaves when |
|---|---|---|
| `closed` | admitted and recorded | `failure_threshold` consecutive failures (adapted to the dependency's normal error rate: [Adaptive failure detection](#adaptive-failure-detection)), or, once the window holds `minimum_calls`, the failure rate reaches `failure_rate_threshold` or the slow-call rate reaches `slow_call_rate_threshold`: to `open` |
| `open` | rejected with `CircuitOpenError` | the open timeout elapses (reading `state` or `snapshot()` shows it at once, without a call) and the next call becomes a probe; with a [health check](#health-checks) only passed checks end it (`healthy_threshold` in a row): to `half_open` |
| `half_open` | up to `half_open_max_calls` probes at once; the rest rejected | `success_threshold` consecutive probe successes: to `closed` (window and backoff reset); any probe failure, or a slow probe: back to `open` |
| `forced_open` | rejected | `reset()` |
| `disabled` | admitted, nothing recorded | `reset()` |

(The README's "States and rules" table; ``reset()``, ``force_open()``,
``disable()`` and a shared-state backend's ``apply_shared_state`` move any state
to any other.)

A state object is one *stay* in a state: every transition (``enter``) builds a
new object and swaps it in whole as ``breaker._current``; nothing tests a state
enum to decide what a call does. Every state answers the same questions:

- ``admit(breaker)``: may a call go? Returns the stay the call is admitted in
  (its outcome is reported back to that object), or raises ``CircuitOpenError``. ``Closed`` and ``Disabled`` admit without the lock; ``Open`` and
  ``ForcedOpen`` reject without it; ``HalfOpen`` takes it.
- ``on_success``, ``on_result``, ``on_exception``, ``on_outcome``,
  ``on_ignored``, ``release``, ``drop``: the outcome of a call admitted in this
  stay. A stay that is no longer current still counts the outcome in the
  statistics but moves nothing: a slow call admitted while closed cannot close
  a breaker that has since opened and gone half-open (stale outcomes). The
  object's identity is the epoch; ``breaker._epoch`` counts transitions for
  the shared-state backend.
- ``judge``: the state's rules for an outcome of the current stay (lock held);
  returns the transition's event, if any.
- ``leave(breaker)``: the stay ends (lock held).

Where things live:

- ``Closed``: the window, the consecutive-failure streak, the rate rules, the
  breaker's adaptive detector (``_detection.AdaptiveDetector``: the
  ``failure_threshold`` rule when ``adaptive`` is on) and an optional
  ``FailureDetector`` (an extension point: ``CircuitBreaker.attach_failure_detector``),
  consulted after the built-in rules. Its ``on_success`` is the hot path: no
  lock and no allocation while the window is steady (``free_until``: no
  bucket to age, ``minimum_calls`` reached), one ``next`` on a tally that
  whoever next holds the lock adds to the stay in bulk (with a duration
  histogram, ``timed_until`` and one append of the duration as well);
  otherwise one lock round trip (the adaptive detector reads the successes from
  ``fast_successes`` when the next failure comes).
- ``Open``: the deadline, the health-check results of the stay, and
  ``may_probe(now)``, the one decision "may a probe go now?" (worked out
  ahead as ``probe_at`` by ``reckon`` whenever the stay's terms change): the open timeout
  has elapsed; with a trusted health check attached, only its passes open the
  way (``health_result``: ``healthy_threshold`` passes move to half-open at
  once); after a failed health-check confirmation the check only vetoes;
  ``max_open_timeout`` after opening, timed probing resumes whatever the check says.
- ``HalfOpen``: everything about probes: slots, the shared-state probe lease,
  probe outcomes, and permits dropped unreported (``drop`` leaves a note, the
  next admission or snapshot hands the slot back). A stay entered on a health
  check's word remembers the open deadline it pre-empted: if its probes fail,
  the check loses its authority and the reopening keeps the timed schedule.
- ``trip``: opening with backoff, jitter and a server's Retry-After.

Locking: one non-reentrant lock per breaker (``breaker._lock``) guards every
stay's fields. It is never held while the protected call, a listener or an
observer runs (``enter`` returns the event; the caller announces it after
releasing the lock).
"""  # noqa: E501  (the table's rows are the README's, unwrapped)

from __future__ import annotations

import asyncio
import itertools
import math
import random
from typing import TYPE_CHECKING, NoReturn, Protocol

from . import _observers
from ._errors import CircuitOpenError
from ._permit import Permit, ProbePermit
from ._state import CircuitState, Reason, StateChangeEvent, Verdict
from ._window import CountWindow, TimeWindow, Window

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = [
    "Closed", "Disabled", "FailureDetector", "ForcedOpen", "HalfOpen", "Open", "State",
    "NO_RESULT", "admit_under_lock", "enter", "half_open_if_due", "new_window", "trip",
]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_NEVER = -math.inf
NO_RESULT: object = object()  # ``on_success`` without a returned value to judge


class FailureDetector(Protocol):
    """An extra rule of the closed state (an adaptive failure detector, say).

    Attach one with ``CircuitBreaker.attach_failure_detector``. Its methods run
    with the breaker's lock held: they must be quick, do no I/O and never call
    back into the breaker. One that raises is logged once and counts as
    "no opinion".
    """

    def record(self, now: float, duration: float, failed: bool, slow: bool) -> Reason | None:
        """One outcome of the current closed stay, after the built-in rules let it pass.

        Returns a ``Reason`` to open the breaker with it, or None.
        """

    def reset(self) -> None:
        """The breaker (re)entered closed: forget what the last stay saw."""


class State:
    """One stay in a state. Subclasses override what their state does differently."""

    __slots__ = ("kind", "reopenings")

    # What ``acquire()`` hands out for a call admitted in this state.
    permit_type: type[Permit] = Permit

    def __init__(self, kind: CircuitState, reopenings: int = 0) -> None:
        self.kind = kind
        # Consecutive reopenings from half-open (backoff); carried through a
        # stay in any state but closed, which starts again from 0.
        self.reopenings = reopenings

    # -- admission ---------------------------------------------------------------

    def admit(self, breaker: CircuitBreaker) -> State:
        """Admit one call: the stay it is admitted in.

        Raises:
            CircuitOpenError: when the call is rejected (counted, and told to the observers).
        """
        return self

    def admit_locked(self, breaker: CircuitBreaker, now: float) -> State | CircuitOpenError:
        """``admit`` for a caller that holds the lock (see ``admit_under_lock``):
        returns the rejection instead of raising it."""
        return self

    # -- outcomes ----------------------------------------------------------------

    def on_success(self, breaker: CircuitBreaker, start: float, end: float, result: object = NO_RESULT) -> None:
        """The call returned ``result`` (``NO_RESULT``: a success, nothing to judge)."""
        if result is not NO_RESULT and breaker._failed_result is not None:
            self.on_result(breaker, start, end, result)
        else:
            self.on_outcome(breaker, start, end, False)

    def on_result(self, breaker: CircuitBreaker, start: float, end: float, result: object) -> None:
        """The call returned ``result``: a success unless ``is_failure_result`` says otherwise.
        A raising predicate is logged once and the call counts as a success."""
        failed_result = breaker._failed_result
        if failed_result is None:
            self.on_success(breaker, start, end)  # the closed state's fast path
            return
        failed = _observers.call_safely(
            failed_result, f"is_failure_result of circuit breaker {breaker.name!r}", result, default=False)
        # Judged results always take the full rules (the fast path has nothing to judge with).
        self.on_outcome(breaker, start, end, bool(failed))

    def on_exception(self, breaker: CircuitBreaker, start: float, end: float, exc: BaseException) -> Verdict | None:
        """The call raised ``exc``: classify it and record the verdict, which is returned."""
        if breaker._config.call_timeout is not None and _is_call_timeout(exc):
            verdict: Verdict | None = "failure"  # ours: a failure whatever the exception rules say
        else:
            verdict = breaker.classify(exc)
        if verdict == "failure":
            self.on_outcome(breaker, start, end, True)
        elif verdict == "ignored":
            self.on_ignored(breaker, start, end)
        else:
            self.release(breaker)
        return verdict

    def on_outcome(self, breaker: CircuitBreaker, start: float, end: float, failed: bool,
                   retry_after: float | None = None) -> None:
        """A success or a failure: counted, then judged by the state's rules if this stay is current."""
        duration = end - start
        slow = duration >= breaker._slow_at
        event = None
        judged = False
        lock = breaker._lock
        lock.acquire()
        try:
            breaker._counters.count(failed, slow)
            if breaker._histogram is not None:
                breaker._histogram.record(1 if failed else 0, duration)
            if self is breaker._current:
                judged = True
                event = self.judge(breaker, end, duration, failed, slow, retry_after)
        finally:
            lock.release()
        if event is not None:
            breaker._announce(event)
        elif judged and self.kind is _CLOSED and breaker._shared is not None:
            _observers.call_safely(breaker._shared.on_outcome, "shared state", failed, slow)

    def judge(self, breaker: CircuitBreaker, now: float, duration: float, failed: bool, slow: bool,
              retry_after: float | None) -> StateChangeEvent | None:
        """This state's rules for one outcome of the current stay. Lock held."""
        return None

    def on_ignored(self, breaker: CircuitBreaker, start: float, end: float) -> None:
        """The call ended in a way that says nothing about the dependency."""
        lock = breaker._lock
        lock.acquire()
        try:
            breaker._counters.ignored += 1
            if breaker._histogram is not None:
                breaker._histogram.record(2, end - start)
            if self is breaker._current:
                self.without_verdict(breaker)
        finally:
            lock.release()

    def release(self, breaker: CircuitBreaker) -> None:
        """No verdict at all (cancelled, abandoned, released by hand)."""

    def without_verdict(self, breaker: CircuitBreaker) -> None:
        """A call of the current stay ended without success or failure. Lock held."""

    def drop(self, breaker: CircuitBreaker) -> None:
        """A permit of this stay was dropped unreported. Called from a finaliser,
        which may run while this thread holds the lock: must not take it."""

    # -- the stay ----------------------------------------------------------------

    def leave(self, breaker: CircuitBreaker) -> None:
        """The stay ends. Lock held."""

    def gauges(self, breaker: CircuitBreaker, now: float) -> tuple[int, int, int, int, int, float | None]:
        """``(buffered, failures, slow, consecutive_failures, probes, retry_after)`` for ``snapshot``. Lock held."""
        return 0, 0, 0, 0, 0, None


class Closed(State):
    """Calls are admitted and recorded; the rules (and a detector) decide when to open."""

    __slots__ = ("window", "streak", "streak_mark", "fast_successes", "fast_below", "free_until", "timed_until",
                 "tally", "tallied", "detector")

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(_CLOSED)
        window = breaker._window
        window.reset()
        self.window = window
        # Successes of the fast path, added to the breaker's counters when the
        # stay ends. They also end the failure streak: ``streak`` counts only
        # while ``fast_successes`` still equals ``streak_mark`` (its value at
        # the streak's last failure), so a fast success bumps one integer.
        self.fast_successes = 0
        self.streak = 0
        self.streak_mark = 0
        # Fast successes ending before ``free_until`` take no lock: each takes
        # one value of ``tally`` (``next`` on an ``itertools.count`` is one
        # atomic step for the interpreter), and the stay adds them to
        # ``fast_successes`` and the window in bulk (``take_tally``) before it
        # records or reads anything under the lock (settle says when a call
        # under the lock need not). ``tallied``: the values taken so far, by
        # successes already added and by the takes themselves.
        self.tally = itertools.count()
        self.tallied = 0
        self.free_until = _NEVER  # see settle
        # The same bound while a duration histogram records: such a success
        # also appends its duration for the histogram to fold (``_stats``).
        # A bound of its own keeps the test off the path without one.
        self.timed_until = _NEVER
        self.detector: FailureDetector | None = None
        self.fast_below = breaker._slow_at
        self.use_detector(breaker, breaker._detector)
        if breaker._adaptive is not None:
            breaker._adaptive.restart(breaker._counters.success)

    def use_detector(self, breaker: CircuitBreaker, detector: FailureDetector | None) -> None:
        """Consult ``detector`` from now on (None: the built-in rules only). Lock held."""
        self.detector = detector
        # With a detector, or results to judge, every outcome takes the full
        # rules: no duration is below -inf. The hot path tests nothing more
        # (``leave`` sets the same bound).
        fast = detector is None and breaker._failed_result is None
        self.fast_below = breaker._slow_at if fast else -math.inf
        if detector is not None:
            _observers.call_safely(detector.reset, f"failure detector of circuit breaker {breaker.name!r}")

    def on_success(self, breaker: CircuitBreaker, start: float, end: float, result: object = NO_RESULT) -> None:
        """The hot path: a fast success of the current stay. Anything else takes the full rules.

        A fast success (not slow, nothing to judge it with: ``use_detector``)
        that ends before ``free_until`` takes no lock (see ``__init__``); the
        others take it, and may age the window or bring it to ``minimum_calls``.
        """
        duration = end - start
        if end < self.free_until and duration < self.fast_below:
            counted = next(self.tally)  # ends the failure streak too, once taken (see __init__)
            # The bound fell while this one was counted: it may have come too late for the take that followed.
            if end >= self.free_until and self.counted_too_late(breaker, counted, start, end):
                return
        elif end < self.timed_until and duration < self.fast_below:
            counted = next(self.tally)
            if end >= self.timed_until and self.counted_too_late(breaker, counted, start, end):
                return  # counted as a stale outcome, duration included
            histogram = breaker._histogram  # set: a breaker keeps its histogram once it has one
            successes = histogram.successes  # type: ignore[union-attr]
            successes.append(duration)
            if len(successes) >= histogram.FOLD_AT:  # type: ignore[union-attr]
                with breaker._lock:
                    histogram.fold()  # type: ignore[union-attr]
        else:
            lock = breaker._lock
            lock.acquire()
            if duration >= self.fast_below:  # -inf once the stay has ended (see leave)
                lock.release()
                State.on_success(self, breaker, start, end, result)
                return
            try:
                if self.free_until != _NEVER or self.timed_until != _NEVER:
                    self.take_tally()  # successes counted without the lock may wait (see settle)
                self.fast_successes += 1
                histogram = breaker._histogram
                if histogram is not None:
                    histogram.record(0, duration)
                aged = self.window.add_success(end)
                self.settle(breaker)
                event = self.check_rates(breaker, end, None) if aged else None
            finally:
                lock.release()
            if event is not None:
                breaker._announce(event)
                return
        if breaker._shared is not None:
            _observers.call_safely(breaker._shared.on_outcome, "shared state", False, False)

    def counted_too_late(self, breaker: CircuitBreaker, counted: int, start: float, end: float) -> bool:
        """A lock-free success that took value ``counted`` of the tally as the
        bound fell, and so perhaps after the take that followed (see settle).
        If the stay has ended since, it is a stale outcome, counted now: returns
        True. Otherwise the stay takes it in now."""
        lock = breaker._lock
        lock.acquire()
        try:
            if self is breaker._current:
                self.take_tally()
                return False
            # An ended stay took its tally for the last time in ``leave``.
            stale = counted >= self.tallied
        finally:
            lock.release()
        if stale:
            State.on_outcome(self, breaker, start, end, False)  # counted; moves nothing
        return stale

    def take_tally(self) -> None:
        """Add the successes counted without the lock since the last take to the stay. Lock held."""
        value = next(self.tally)  # the take's own value: see __init__
        counted = value - self.tallied
        self.tallied = value + 1
        if counted:
            self.fast_successes += counted
            self.window.add_successes(counted)

    def settle(self, breaker: CircuitBreaker) -> None:
        """Work out ``free_until`` once the window has changed. Lock held.

        A success ending before the window's ``steady_until`` can neither age
        it nor bring it to ``minimum_calls``, so the rules have nothing to
        check. With a duration histogram the bound is ``timed_until`` instead of
        ``free_until`` (the other stays down). When a bound falls (here and in
        ``leave`` only), the tally is taken right after, so that while it is down no success waits to be taken but those
        still being counted, which find it fallen and see to themselves
        (``counted_too_late``): a call under the lock then need not take it.
        """
        bound = self.window.steady_until()
        free, timed = (bound, _NEVER) if breaker._histogram is None else (_NEVER, bound)
        fell = (free == _NEVER and self.free_until != _NEVER) or (timed == _NEVER and self.timed_until != _NEVER)
        self.free_until = free
        self.timed_until = timed
        if fell:
            self.take_tally()

    def judge(self, breaker: CircuitBreaker, now: float, duration: float, failed: bool, slow: bool,
              retry_after: float | None) -> StateChangeEvent | None:
        self.take_tally()  # first: the streak and the window see those successes in their place
        self.window.record(now, failed, slow)
        self.settle(breaker)
        if failed:
            streak = self.consecutive_failures() + 1
            self.streak = streak
            self.streak_mark = self.fast_successes
            threshold = breaker._config.failure_threshold
            if breaker._adapts:
                adaptive = breaker._adaptive or breaker._new_adaptive()
                # Every success so far: the detector takes those since the last failure in bulk.
                if adaptive.failure(breaker._counters.success + self.fast_successes):
                    return trip(breaker, Reason.CONSECUTIVE_FAILURES, now, retry_after)
            elif threshold is not None and streak >= threshold:
                return trip(breaker, Reason.CONSECUTIVE_FAILURES, now, retry_after)
        else:
            self.streak = 0
        event = self.check_rates(breaker, now, retry_after)
        if event is None and self.detector is not None:
            reason = _observers.call_safely(
                self.detector.record, f"failure detector of circuit breaker {breaker.name!r}",
                now, duration, failed, slow)
            if isinstance(reason, Reason):
                return trip(breaker, reason, now, retry_after)
        return event

    def consecutive_failures(self) -> int:
        """Failures since the last success of this stay. Lock held."""
        return self.streak if self.fast_successes == self.streak_mark else 0

    def check_rates(self, breaker: CircuitBreaker, now: float, retry_after: float | None) -> StateChangeEvent | None:
        """Open if a rate rule fires on the window as it stands. Lock held."""
        window = self.window
        total = window.total
        if total < breaker._min_calls:
            return None
        if window.failures / total >= breaker._failure_rate_at:
            return trip(breaker, Reason.FAILURE_RATE, now, retry_after)
        if window.slow / total >= breaker._slow_rate_at:
            return trip(breaker, Reason.SLOW_CALL_RATE, now, retry_after)
        return None

    def leave(self, breaker: CircuitBreaker) -> None:
        # An ended stay's outcomes are stale: they take the full path, which
        # counts them and moves nothing. The hot path tests only these bounds;
        # the lock-free one falls before the last take of the tally, so a
        # success counted after that take finds it fallen (see settle).
        self.free_until = self.timed_until = _NEVER
        self.fast_below = -math.inf
        value = next(self.tally)  # the last take, into the counters: the window may be the next stay's already
        breaker._counters.success += self.fast_successes + value - self.tallied
        self.tallied = value + 1
        self.fast_successes = 0

    def gauges(self, breaker: CircuitBreaker, now: float) -> tuple[int, int, int, int, int, float | None]:
        self.take_tally()  # snapshot() and activity() read fast_successes after this
        # Read without aging the window: aging is the record path's job, which
        # re-checks the rate rules when it happens.
        total, failures, slow = self.window.counts(now)
        return total, failures, slow, self.consecutive_failures(), 0, None


class Open(State):
    """Calls are rejected until ``may_probe`` says a probe may go; then half-open.

    ``checked_until`` is None without a health check; with one, the time at
    which timed probing resumes whatever the check says (``max_open_timeout``
    after opening). ``trusted``: the check's passes alone open the way (it
    has not failed a confirmation since the last close). ``probe_at``: the
    time from which a probe may go, worked out from those (``reckon``)
    whenever one of them changes, so that rejecting reads one field.
    """

    __slots__ = ("until", "timeout", "checked_until", "trusted", "passes", "failing", "probe_at")

    def __init__(self, until: float, timeout: float, reopenings: int, *,
                 checked_until: float | None = None, trusted: bool = True) -> None:
        super().__init__(_OPEN, reopenings)
        self.until = until
        self.timeout = timeout
        self.passes = 0  # consecutive passed health checks
        self.failing = False  # the last health check failed
        self.take_terms(checked_until, trusted)

    def take_terms(self, checked_until: float | None, trusted: bool) -> None:
        """A health check's terms for this stay (None: no check). Lock held, or not yet shared."""
        self.checked_until = checked_until
        self.trusted = trusted
        self.reckon()

    def reckon(self) -> None:
        """Work out ``probe_at``, the one place "may a probe go?" is decided: the
        open timeout elapsed; with a trusted health check, or one whose last
        check failed, only ``max_open_timeout`` after opening (the check's
        passes end the stay sooner: ``health_result``). Lock held."""
        checked_until = self.checked_until
        if checked_until is None:
            self.probe_at = self.until
        elif self.trusted or self.failing:
            self.probe_at = checked_until  # until then the check's word holds
        else:
            self.probe_at = min(self.until, checked_until)

    def may_probe(self, now: float) -> bool:
        """May a probe go at ``now``? Read without the lock: ``probe_at`` is
        written whole, and a stale read only delays or advances one probe by one check."""
        return now >= self.probe_at

    def health_result(self, breaker: CircuitBreaker, passed: bool, now: float) -> StateChangeEvent | None:
        """One health check's result; half-open at once after ``healthy_threshold``
        passes of a trusted check. Lock held."""
        if not passed:
            self.passes = 0
            self.failing = True
            self.reckon()
            return None
        self.passes += 1
        self.failing = False
        self.reckon()
        if self.checked_until is not None and self.trusted and self.passes >= breaker._config.healthy_threshold:
            return enter(breaker, HalfOpen(self.reopenings, pre_empted=self.until), Reason.HEALTH_CHECK_PASSED, now)
        return None

    def admit(self, breaker: CircuitBreaker) -> State:
        now = breaker._clock()
        # Before ``probe_at`` the answer is no without asking ``may_probe`` (one
        # frame fewer on the hot path while open); from then on ``may_probe``
        # has the word (a yes, unless a subclass or a test says otherwise).
        if now < self.probe_at or not self.may_probe(now):
            # Rejecting while open takes no lock.
            next(breaker._counters.rejections)
            retry = self.until - now
            if retry < 0.0:  # a trusted health check holds the breaker open past its timeout
                retry = 0.0
            if _observers.rejections_observed:  # not observers at all: see _observers
                _raise_observed(breaker, CircuitOpenError(breaker.name, _OPEN, retry))
            # Raised unnamed: no error -> traceback -> frame -> error cycle, so it is freed at once.
            raise CircuitOpenError(breaker.name, _OPEN, retry)
        return admit_under_lock(breaker)

    def admit_locked(self, breaker: CircuitBreaker, now: float) -> State | CircuitOpenError:
        # Opened again by another thread since the caller looked.
        return CircuitOpenError(breaker.name, _OPEN, max(0.0, self.until - now))

    def gauges(self, breaker: CircuitBreaker, now: float) -> tuple[int, int, int, int, int, float | None]:
        return 0, 0, 0, 0, 0, max(0.0, self.until - now)


class HalfOpen(State):
    """Up to ``half_open_max_calls`` probes at once; their outcomes close or reopen the breaker.

    A probe holds a slot from admission to its report. A probe that never
    reports a verdict (released, cancelled, ignored, or its permit dropped)
    hands the slot back, so a breaker is never stuck half-open. With a
    shared-state backend, a probe also needs a fleet-wide lease
    (``SharedStateSync.acquire_probe``), handed back with the slot.
    """

    __slots__ = ("probes", "successes", "orphans", "pre_empted")

    permit_type = ProbePermit  # a dropped probe permit hands its slot back (``drop``)

    def __init__(self, reopenings: int, *, pre_empted: float | None = None) -> None:
        super().__init__(_HALF_OPEN, reopenings)
        # Entered on a health check's word: the open deadline it pre-empted.
        self.pre_empted = pre_empted
        self.probes = 0
        self.successes = 0  # consecutive probe successes
        # One entry per probe permit dropped unreported, adopted at the next
        # admission or snapshot: a finaliser may run while this thread holds the lock.
        self.orphans: list[None] = []

    def admit(self, breaker: CircuitBreaker) -> State:
        return admit_under_lock(breaker)

    def admit_locked(self, breaker: CircuitBreaker, now: float) -> State | CircuitOpenError:
        self.adopt_orphans(breaker)
        shared = breaker._shared
        if self.probes < breaker._config.half_open_max_calls and (
            shared is None or _observers.call_safely(shared.acquire_probe, "shared state", default=True)
        ):
            self.probes += 1
            return self
        return CircuitOpenError(breaker.name, _HALF_OPEN, 0.0)

    def judge(self, breaker: CircuitBreaker, now: float, duration: float, failed: bool, slow: bool,
              retry_after: float | None) -> StateChangeEvent | None:
        self.end_probe(breaker)
        if failed or slow:
            # A slow probe says the dependency is not back yet.
            if self.pre_empted is not None:
                # The check said healthy and real calls disagree: until a
                # confirmation succeeds it only vetoes, and this early probe
                # spends the timed probe it pre-empted.
                breaker._check_trusted = False
            return trip(breaker, Reason.PROBE_FAILURE, now, retry_after, not_before=self.pre_empted)
        self.successes += 1
        if self.successes >= breaker._config.success_threshold:
            breaker._check_trusted = True
            return enter(breaker, Closed(breaker), Reason.PROBE_SUCCESS, now)
        return None

    def release(self, breaker: CircuitBreaker) -> None:
        lock = breaker._lock
        lock.acquire()
        try:
            if self is breaker._current:
                self.end_probe(breaker)
        finally:
            lock.release()

    def without_verdict(self, breaker: CircuitBreaker) -> None:
        self.end_probe(breaker)

    def drop(self, breaker: CircuitBreaker) -> None:
        if self is breaker._current:
            self.orphans.append(None)  # atomic; see __init__

    def adopt_orphans(self, breaker: CircuitBreaker) -> None:
        """Hand back the slots of probe permits dropped unreported. Lock held."""
        orphans = self.orphans
        while orphans:
            orphans.pop()
            self.end_probe(breaker)

    def end_probe(self, breaker: CircuitBreaker) -> None:
        """A probe ended: its slot and its shared-state lease go back. Lock held."""
        self.probes -= 1
        if breaker._shared is not None:
            _observers.call_safely(breaker._shared.release_probe, "shared state")

    def gauges(self, breaker: CircuitBreaker, now: float) -> tuple[int, int, int, int, int, float | None]:
        self.adopt_orphans(breaker)
        return 0, 0, 0, 0, self.probes, None


class ForcedOpen(State):
    """Every call rejected until ``reset()``."""

    __slots__ = ()

    def __init__(self, reopenings: int) -> None:
        super().__init__(_FORCED_OPEN, reopenings)

    def admit(self, breaker: CircuitBreaker) -> State:
        next(breaker._counters.rejections)
        if _observers.rejections_observed:
            _raise_observed(breaker, CircuitOpenError(breaker.name, _FORCED_OPEN, None))
        raise CircuitOpenError(breaker.name, _FORCED_OPEN, None)  # unnamed: see Open.admit

    def admit_locked(self, breaker: CircuitBreaker, now: float) -> State | CircuitOpenError:
        return CircuitOpenError(breaker.name, _FORCED_OPEN, None)


class Disabled(State):
    """Every call admitted, nothing recorded, until ``reset()``."""

    __slots__ = ()

    def __init__(self, reopenings: int) -> None:
        super().__init__(_DISABLED, reopenings)

    def on_success(self, breaker: CircuitBreaker, start: float, end: float, result: object = NO_RESULT) -> None:
        if result is not NO_RESULT and breaker._failed_result is not None:
            self.on_result(breaker, start, end, result)  # the predicate runs, as for any call

    def on_outcome(self, breaker: CircuitBreaker, start: float, end: float, failed: bool,
                   retry_after: float | None = None) -> None:
        pass

    def on_ignored(self, breaker: CircuitBreaker, start: float, end: float) -> None:
        pass


def admit_under_lock(breaker: CircuitBreaker) -> State:
    """Admission that needs the lock: open -> half-open once a probe may go, probe slots.

    The transition and the first probe's admission happen under one lock, so
    the call that moves the breaker to half-open is its first probe.

    Raises:
        CircuitOpenError: when the call is rejected.
    """
    now = breaker._clock()
    lock = breaker._lock
    lock.acquire()
    try:
        event = half_open_if_due(breaker, now)
        admitted = breaker._current.admit_locked(breaker, now)
    finally:
        lock.release()
    if event is not None:
        breaker._announce(event)
    if isinstance(admitted, CircuitOpenError):
        next(breaker._counters.rejections)
        _raise_observed(breaker, admitted)
    return admitted


def _raise_observed(breaker: CircuitBreaker, refused: CircuitOpenError) -> NoReturn:
    """Tell the observers of a rejection (telemetry counts them), then raise it."""
    if _observers.observers:
        _observers.notify("call_rejected", breaker, refused)
    try:
        raise refused
    finally:
        del refused  # no error -> traceback -> frame -> error cycle: freed at once


def half_open_if_due(breaker: CircuitBreaker, now: float) -> StateChangeEvent | None:
    """Open -> half-open when a probe may go at ``now`` (calls, ``state`` and
    ``snapshot()`` all see it). Lock held; returns the event to announce."""
    current = breaker._current
    if isinstance(current, Open) and current.may_probe(now):
        return enter(breaker, HalfOpen(current.reopenings), Reason.OPEN_TIMEOUT_ELAPSED, now)
    return None


def enter(breaker: CircuitBreaker, state: State, reason: Reason, now: float,
          open_timeout: float | None = None) -> StateChangeEvent:
    """Swap ``state`` in as the current stay. Lock held; returns the event to announce after releasing it."""
    previous = breaker._current
    previous.leave(breaker)
    breaker._time_in_state(previous.kind, now)
    breaker._epoch += 1
    breaker._current = state
    breaker._state = state.kind
    return StateChangeEvent(breaker.name, previous.kind, state.kind, reason, now, open_timeout)


def trip(breaker: CircuitBreaker, reason: Reason, now: float, retry_after: float | None = None, *,
         not_before: float | None = None) -> StateChangeEvent:
    """Open (or reopen) with backoff, jitter and a server's Retry-After hint. Lock held.

    ``not_before``: an open deadline a health check pre-empted; the new one is
    at least a timeout after it, as if the probe had gone then.
    """
    config = breaker._config
    previous = breaker._current
    reopenings = previous.reopenings + 1 if previous.kind is _HALF_OPEN else 0
    try:
        timeout = config.open_timeout * config.backoff_multiplier ** reopenings
    except OverflowError:  # a dependency down for a thousand reopenings
        timeout = config.max_open_timeout
    timeout = min(timeout, config.max_open_timeout)
    if retry_after is not None and retry_after > timeout:
        timeout = min(retry_after, config.max_open_timeout)
    if config.jitter:
        timeout += random.random() * config.jitter * timeout
    until = now + timeout if not_before is None else max(now, not_before) + timeout
    return enter(breaker, breaker._open_stay(now, until, until - now, reopenings), reason, now, until - now)


def new_window(breaker: CircuitBreaker) -> Window:
    """The closed state's window, as configured; its buckets are allocated on the first call."""
    config = breaker._config
    if config.window_type == "count":
        return CountWindow(int(config.window_size), breaker._min_calls)
    return TimeWindow(config.window_size, breaker._min_calls)


def _is_call_timeout(exc: BaseException) -> bool:
    """True for the TimeoutError that ``asyncio.wait_for`` raises when our ``call_timeout`` expires."""
    return isinstance(exc, asyncio.TimeoutError) and isinstance(exc.__cause__, asyncio.CancelledError)
