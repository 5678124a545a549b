"""Sliding windows that hold the recent outcomes the rate rules look at.

Both windows keep running totals, so reading a rate is O(1) and recording an
outcome is O(1) amortised. Neither is thread-safe: the breaker calls them under
its lock. Buckets are allocated on the first recorded call, so an idle breaker
costs almost nothing.

``add_success`` is the breaker's hot path (a fast success in the closed
state); it returns True when older outcomes have just left the window, the
one way a success can raise a rate, so the breaker re-checks its rules only
then. Faster still, while ``now < head_end`` the breaker adds a success itself:
``head_calls[head_slot] += 1; total += 1`` (a method call costs as much as the
rest of the hot path). A count window's ``head_end`` is always -inf.
"""

from __future__ import annotations

import math
from typing import ClassVar

__all__ = ["CountWindow", "TimeWindow", "Window"]

_NEVER = -math.inf


class TimeWindow:
    """Outcomes of the last ``size`` seconds, in 10 to 60 buckets.

    An outcome leaves the window when the bucket it fell in is ``n`` buckets
    old: between ``size - size / n`` and ``size`` seconds after it was
    recorded. An outcome that arrives after a newer bucket has started (a
    thread that read the clock earlier but took the lock later) counts in the
    newest bucket.
    """

    __slots__ = ("_n", "_width", "head_calls", "_failures", "_slow", "_head", "head_slot", "head_end",
                 "total", "failures", "slow")

    def __init__(self, size: float) -> None:
        self._n = min(60, max(10, math.ceil(size)))
        self._width = size / self._n
        self.head_calls: list[int] = []
        self._failures: list[int] = []
        self._slow: list[int] = []
        self._head = 0  # index of the newest bucket (clock time // width)
        self.head_slot = 0  # where the newest bucket sits in the lists
        self.head_end = _NEVER  # clock time at which the newest bucket ends
        self.total = 0
        self.failures = 0
        self.slow = 0

    def add_success(self, now: float) -> bool:
        """Add a success that was not slow; True when older outcomes just expired."""
        if now < self.head_end:
            self.head_calls[self.head_slot] += 1
            self.total += 1
            return False
        return self.record(now, False, False)

    def record(self, now: float, failed: bool, slow: bool) -> bool:
        """Add one outcome observed at ``now``; True when older outcomes just expired."""
        aged = self._advance(now) if now >= self.head_end else False
        slot = self.head_slot
        self.head_calls[slot] += 1
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
        if now < self.head_end or not self.head_calls:
            return self.total, self.failures, self.slow
        steps = min(int(now // self._width) - self._head, self._n)
        total, failures, slow = self.total, self.failures, self.slow
        for step in range(1, steps + 1):
            slot = (self.head_slot + step) % self._n
            total -= self.head_calls[slot]
            failures -= self._failures[slot]
            slow -= self._slow[slot]
        return total, failures, slow

    def _advance(self, now: float) -> bool:
        """Make the bucket of ``now`` the newest; True if outcomes expired."""
        n = self._n
        idx = int(now // self._width)
        if not self.head_calls:
            self.head_calls, self._failures, self._slow = [0] * n, [0] * n, [0] * n
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
                calls, failures, slow = self.head_calls, self._failures, self._slow
                for step in range(1, steps + 1):
                    slot = (self.head_slot + step) % n
                    self.total -= calls[slot]
                    self.failures -= failures[slot]
                    self.slow -= slow[slot]
                    calls[slot] = failures[slot] = slow[slot] = 0
            aged = self.total < before
        self._head = idx
        self.head_slot = idx % n
        self.head_end = (idx + 1) * self._width
        return aged

    def _clear(self) -> None:
        for buckets in (self.head_calls, self._failures, self._slow):
            for i in range(len(buckets)):
                buckets[i] = 0
        self.total = self.failures = self.slow = 0

    def reset(self) -> None:
        """Forget every outcome."""
        self._clear()
        self.head_end = _NEVER


class CountWindow:
    """Outcomes of the last ``size`` calls, in a ring of one byte per call."""

    __slots__ = ("_size", "_ring", "_pos", "total", "failures", "slow")

    head_end: ClassVar[float] = _NEVER  # never the breaker's inline fast lane
    head_calls: ClassVar[list[int]] = []
    head_slot: ClassVar[int] = 0

    def __init__(self, size: int) -> None:
        self._size = int(size)
        self._ring = bytearray()
        self._pos = 0
        self.total = 0
        self.failures = 0
        self.slow = 0

    def add_success(self, now: float) -> bool:
        """Add a success that was not slow. Always False: a count window never
        ages, and a success pushing out the oldest call cannot raise a rate."""
        self.record(now, False, False)
        return False

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
