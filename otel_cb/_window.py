"""Sliding windows that hold the recent outcomes the rate rules look at.

Both windows keep running totals, so reading a rate is O(1) and recording an
outcome is O(1) amortised. Neither is thread-safe: the breaker calls them under
its lock. Buckets are allocated on the first recorded call, so an idle breaker
costs almost nothing.
"""

from __future__ import annotations

import math

__all__ = ["CountWindow", "TimeWindow", "Window"]


class TimeWindow:
    """Outcomes of the last ``size`` seconds, in 10 to 60 buckets."""

    __slots__ = ("_width", "_n", "_calls", "_failures", "_slow", "_head", "total", "failures", "slow")

    def __init__(self, size: float) -> None:
        self._n = min(60, max(10, math.ceil(size)))
        self._width = size / self._n
        self._calls: list[int] | None = None
        self._failures: list[int] = []
        self._slow: list[int] = []
        self._head = 0
        self.total = 0
        self.failures = 0
        self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one outcome observed at ``now``."""
        idx = int(now / self._width)
        calls = self._calls
        if calls is None:
            calls = self._calls = [0] * self._n
            self._failures = [0] * self._n
            self._slow = [0] * self._n
            self._head = idx
        elif idx > self._head:
            self._advance(idx)
        slot = idx % self._n
        calls[slot] += 1
        self.total += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1
        if slow:
            self._slow[slot] += 1
            self.slow += 1

    def expire(self, now: float) -> None:
        """Drop outcomes older than the window, as seen at ``now``."""
        idx = int(now / self._width)
        if self._calls is not None and idx > self._head:
            self._advance(idx)

    def _advance(self, idx: int) -> None:
        calls = self._calls
        assert calls is not None
        if idx - self._head >= self._n:
            self.reset()
            self._calls = calls
            for i in range(self._n):
                calls[i] = 0
            self._head = idx
            return
        failures, slow = self._failures, self._slow
        for bucket in range(self._head + 1, idx + 1):
            slot = bucket % self._n
            self.total -= calls[slot]
            self.failures -= failures[slot]
            self.slow -= slow[slot]
            calls[slot] = failures[slot] = slow[slot] = 0
        self._head = idx

    def reset(self) -> None:
        """Forget every outcome."""
        if self._calls is not None:
            n = self._n
            self._calls = [0] * n
            self._failures = [0] * n
            self._slow = [0] * n
        self.total = self.failures = self.slow = 0


class CountWindow:
    """Outcomes of the last ``size`` calls, in a ring of one byte per call."""

    __slots__ = ("_size", "_ring", "_pos", "_filled", "total", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = int(size)
        self._ring: bytearray | None = None
        self._pos = 0
        self._filled = 0
        self.total = 0
        self.failures = 0
        self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one outcome; the oldest falls out once the ring is full."""
        ring = self._ring
        if ring is None:
            ring = self._ring = bytearray(self._size)
        pos = self._pos
        if self._filled == self._size:
            old = ring[pos]
            self.failures -= old & 1
            self.slow -= old >> 1
        else:
            self._filled += 1
            self.total += 1
        ring[pos] = failed | (slow << 1)
        self.failures += failed
        self.slow += slow
        self._pos = (pos + 1) % self._size

    def expire(self, now: float) -> None:
        """Count windows do not age."""

    def reset(self) -> None:
        """Forget every outcome."""
        self._ring = None
        self._pos = self._filled = 0
        self.total = self.failures = self.slow = 0


Window = TimeWindow | CountWindow
