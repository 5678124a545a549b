"""`Permit`: the admission of one call, and the one way its outcome reaches the state machine.

Every calling style (``call``, decorators, ``with``, streams, fallbacks, the
integrations) admits through ``State.admit`` and reports to the stay it was
admitted in; a permit is that pair made into an object for code that cannot
wrap a callable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._state import CircuitState, Verdict

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._states import State

__all__ = ["Permit", "ProbePermit"]


class Permit:
    """Admission of one call, and the way to report its outcome.

    Obtained from ``CircuitBreaker.acquire()``. The first report counts; later
    ones are ignored, so a ``finally: permit.release()`` is always safe.

    Each report tests ``_done`` itself rather than through a shared helper:
    integrations report through a permit on every request, and the helper's
    frame was a tenth of a permit's cost.
    """

    __slots__ = ("breaker", "state", "_stay", "_start", "_done")

    def __init__(self, breaker: CircuitBreaker, stay: State, start: float) -> None:
        self.breaker = breaker
        #: The state the call was admitted in (closed, half-open or disabled):
        #: what an integration puts on the call's span, whatever the breaker
        #: has moved to since.
        self.state: CircuitState = stay.kind
        self._stay = stay  # the state object the call was admitted in
        self._start = start
        self._done = False

    @property
    def done(self) -> bool:
        """True once an outcome (or a release) has been reported."""
        return self._done

    def record_success(self) -> None:
        """The call succeeded."""
        if not self._done:
            self._done = True
            self._stay.on_success(self.breaker, self._start, self.breaker._clock())

    def record_failure(self, *, retry_after: float | None = None) -> None:
        """The call failed. ``retry_after``: the server's hint, in seconds, which
        lengthens the open timeout if this failure opens the breaker."""
        if not self._done:
            self._done = True
            self._stay.on_outcome(self.breaker, self._start, self.breaker._clock(), True, retry_after)

    def record_ignored(self) -> None:
        """The call ended in a way that says nothing about the dependency."""
        if not self._done:
            self._done = True
            self._stay.on_ignored(self.breaker, self._start, self.breaker._clock())

    def record_exception(self, exc: BaseException) -> Verdict | None:
        """Classify ``exc`` with the breaker's rules and record it; returns the verdict
        (None: no verdict, or the permit was already reported)."""
        if self._done:
            return None
        self._done = True
        return self._stay.on_exception(self.breaker, self._start, self.breaker._clock(), exc)

    def record_result(self, result: object) -> None:
        """Record a returned value, applying ``is_failure_result``."""
        if not self._done:
            self._done = True
            self._stay.on_result(self.breaker, self._start, self.breaker._clock(), result)

    def record(self, verdict: Verdict | None, *, retry_after: float | None = None) -> None:
        """Record a verdict reached elsewhere (a classifier, a hook); None releases.

        ``retry_after`` applies to a failure, as in ``record_failure``.
        """
        if verdict == "success":  # record_success, without its frame: the usual report
            if not self._done:
                self._done = True
                self._stay.on_success(self.breaker, self._start, self.breaker._clock())
        elif verdict == "failure":
            self.record_failure(retry_after=retry_after)
        elif verdict == "ignored":
            self.record_ignored()
        elif verdict is None:
            self.release()
        else:
            self.release()
            raise ValueError(f"verdict: {verdict!r} is not allowed; use 'success', 'failure', 'ignored' or None")

    def release(self) -> None:
        """No verdict: hand a half-open probe slot back without judging the call."""
        if not self._done:
            self._done = True
            self._stay.release(self.breaker)


class ProbePermit(Permit):
    """A permit admitted half-open: dropped unreported, it hands its probe slot back.

    Only a probe needs a finaliser (every other stay's ``drop`` does nothing),
    and a finaliser costs every permit that has one a call at deallocation.
    """

    __slots__ = ()

    def __del__(self) -> None:
        # A finaliser can run inside any allocation, even one made while this
        # thread holds the breaker's lock, so the stay only leaves a note.
        if not self._done:
            self._done = True
            self._stay.drop(self.breaker)
