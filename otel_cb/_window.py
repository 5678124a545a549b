"""Sliding windows that hold the recent outcomes the rate rules look at.

Both windows keep running totals, so reading a rate is O(1) and recording an
outcome is O(1) amortised. Neither is thread-safe: the breaker calls them under
its lock. Buckets are allocated on the first recorded call, so an idle breaker
costs almost nothing.

``add_success`` records a success that was not slow; it returns True when
the rate rules must be looked at again: older outcomes have just left the
window (the one way a success can raise a rate), or the window has just reached
``check_at`` calls (the closed state's ``minimum_calls``), so the breaker
re-checks its rules only then.

``steady_until`` says until when neither can happen: a success ending before
then changes nothing the rules could act on. The closed state counts such
successes without the lock and hands them over in bulk (``add_successes``)
before anything reads or records under the lock.
"""

from __future__ import annotations

import math

__all__ = ["CountWindow", "TimeWindow", "Window"]

_NEVER = -math.inf
_UNALLOCATED: list[int] = []


class TimeWindow:
    """Outcomes of the last ``size`` seconds, in 10 to 60 buckets.

    An outcome leaves the window when the bucket it fell in is ``n`` buckets
    old: between ``size - size / n`` and ``size`` seconds after it was
    recorded. An outcome that arrives after a newer bucket has started (a
    thread that read the clock earlier but took the lock later) counts in the
    newest bucket.
    """

    __slots__ = ("_n", "_width", "_calls", "_failures", "_slow", "_head", "_head_slot", "_head_end",
                 "_check_at", "total", "failures", "slow")

    def __init__(self, size: float, check_at: int = 0) -> None:
        self._n = min(60, max(10, math.ceil(size)))
        self._width = size / self._n
        # One shared empty list until the first call: never mutated, replaced whole by ``_advance``.
        self._calls: list[int] = _UNALLOCATED
        self._failures: list[int] = _UNALLOCATED
        self._slow: list[int] = _UNALLOCATED
        self._head = 0  # index of the newest bucket (clock time // width)
        self._head_slot = 0  # where the newest bucket sits in the lists
        self._head_end = _NEVER  # clock time at which the newest bucket ends
        self._check_at = check_at
        self.total = 0
        self.failures = 0
        self.slow = 0

    def add_success(self, now: float) -> bool:
        """Add a success that was not slow; True when the rate rules must be checked again
        (older outcomes just expired, or the window just reached ``check_at`` calls)."""
        if now < self._head_end:
            # Same bucket as the last call: nothing ages.
            self._calls[self._head_slot] += 1
            total = self.total = self.total + 1
            return total == self._check_at
        return self.record(now, False, False) or self.total == self._check_at

    def steady_until(self) -> float:
        """Until when a success ages nothing and brings the window to no threshold:
        the end of the newest bucket once the window holds ``check_at`` calls, else -inf."""
        return self._head_end if self.total >= self._check_at else _NEVER

    def add_successes(self, count: int) -> None:
        """Add ``count`` successes that were not slow, all in the newest bucket
        (successes that ended before ``steady_until()``, or arrived late)."""
        self._calls[self._head_slot] += count
        self.total += count

    def record(self, now: float, failed: bool, slow: bool) -> bool:
        """Add one outcome observed at ``now``; True when older outcomes just expired."""
        aged = self._advance(now) if now >= self._head_end else False
        slot = self._head_slot
        self._calls[slot] += 1
        self.total += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1
        if slow:
            self._slow[slot] += 1
            self.slow += 1
        return aged

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(total, failures, slow)`` as seen at ``now``, without changing the window."""
        if now < self._head_end or not self._calls:
            return self.total, self.failures, self.slow
        steps = min(int(now // self._width) - self._head, self._n)
        total, failures, slow = self.total, self.failures, self.slow
        for step in range(1, steps + 1):
            slot = (self._head_slot + step) % self._n
            total -= self._calls[slot]
            failures -= self._failures[slot]
            slow -= self._slow[slot]
        return total, failures, slow

    def _advance(self, now: float) -> bool:
        """Make the bucket of ``now`` the newest; True if outcomes expired."""
        n = self._n
        idx = int(now // self._width)
        if not self._calls:
            self._calls, self._failures, self._slow = [0] * n, [0] * n, [0] * n
            aged = False
        else:
            steps = idx - self._head
            if steps <= 0:
                # ``now`` sits on a bucket edge that float rounding put on either side.
                return False
            before = self.total
            if steps >= n:
                self._clear()
            else:
                calls, failures, slow = self._calls, self._failures, self._slow
                for step in range(1, steps + 1):
                    slot = (self._head_slot + step) % n
                    self.total -= calls[slot]
                    self.failures -= failures[slot]
                    self.slow -= slow[slot]
                    calls[slot] = failures[slot] = slow[slot] = 0
            aged = self.total < before
        self._head = idx
        self._head_slot = idx % n
        self._head_end = (idx + 1) * self._width
        return aged

    def _clear(self) -> None:
        for buckets in (self._calls, self._failures, self._slow):
            for i in range(len(buckets)):
                buckets[i] = 0
        self.total = self.failures = self.slow = 0

    def reset(self) -> None:
        """Forget every outcome."""
        self._clear()
        self._head_end = _NEVER


class CountWindow:
    """Outcomes of the last ``size`` calls, in a ring of one byte per call."""

    __slots__ = ("_size", "_ring", "_pos", "_check_at", "total", "failures", "slow")

    def __init__(self, size: int, check_at: int = 0) -> None:
        self._size = int(size)
        self._check_at = check_at
        self._ring = bytearray()
        self._pos = 0
        self.total = 0
        self.failures = 0
        self.slow = 0

    def add_success(self, now: float) -> bool:
        """Add a success that was not slow; True when the window just reached
        ``check_at`` calls (a count window never ages, and a success pushing
        out the oldest call cannot raise a rate)."""
        self.record(now, False, False)
        return self.total == self._check_at

    def steady_until(self) -> float:
        """Forever once the window holds ``check_at`` calls (it never ages), else -inf."""
        return math.inf if self.total >= self._check_at else _NEVER

    def add_successes(self, count: int) -> None:
        """Add ``count`` successes that were not slow, as ``count`` calls to ``record``
        would (the oldest calls fall out), in at most two slice operations."""
        size = self._size
        ring = self._ring
        if not ring:
            ring = self._ring = bytearray(size)
        count = min(count, size)
        pos = self._pos
        end = pos + count
        # The calls pushed out: a slice of the ring, wrapping round at most once.
        # Free slots (the window not yet full) hold zeros and push out nothing.
        pushed = ring[pos:end] + ring[:max(0, end - size)]
        both = pushed.count(3)  # failed and slow (see record)
        self.failures -= pushed.count(1) + both
        self.slow -= pushed.count(2) + both
        if end <= size:
            ring[pos:end] = bytes(count)
        else:
            ring[pos:] = bytes(size - pos)
            ring[:end - size] = bytes(end - size)
        self.total = min(size, self.total + count)
        self._pos = end % size

    def record(self, now: float, failed: bool, slow: bool) -> bool:
        """Add one outcome; the oldest falls out once the ring is full. Returns False."""
        ring = self._ring
        if not ring:
            ring = self._ring = bytearray(self._size)
        pos = self._pos
        if self.total == self._size:
            old = ring[pos]
            if old:
                self.failures -= old & 1
                self.slow -= old >> 1
        else:
            self.total += 1
        ring[pos] = failed | (slow << 1)
        self.failures += failed
        self.slow += slow
        pos += 1
        self._pos = 0 if pos == self._size else pos
        return False

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(total, failures, slow)``; count windows do not age."""
        return self.total, self.failures, self.slow

    def reset(self) -> None:
        """Forget every outcome."""
        self._ring = bytearray()
        self._pos = 0
        self.total = self.failures = self.slow = 0


Window = TimeWindow | CountWindow
