"""Plain, lock-protected statistics a breaker keeps for telemetry to read at collection time.

Recording an OpenTelemetry instrument on every call would cost more than the
breaker itself, so the call path only bumps integers here; the telemetry
module turns them into metrics when a reader collects.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = ["DEFAULT_BOUNDARIES", "DurationHistogram", "HistogramData", "OUTCOMES"]

# OpenTelemetry's recommended boundaries for client-call durations, in seconds.
DEFAULT_BOUNDARIES: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
OUTCOMES = ("success", "failure", "ignored")


@dataclass(frozen=True, slots=True)
class HistogramData:
    """Cumulative histogram of one outcome's durations since the breaker was made."""

    boundaries: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    count: int
    sum: float


class DurationHistogram:
    """Bucketed call durations per outcome; the caller holds the breaker's lock.

    The breaker's closed-state success path bumps ``counts`` and ``sums``
    inline, because a method call would cost more than the bucketing itself;
    for the same reason no min or max is kept (both are optional in OTLP).
    """

    __slots__ = ("boundaries", "counts", "sums")

    def __init__(self, boundaries: tuple[float, ...] = DEFAULT_BOUNDARIES) -> None:
        self.boundaries = boundaries
        self.counts = [[0] * (len(boundaries) + 1) for _ in OUTCOMES]
        self.sums = [0.0] * len(OUTCOMES)

    def record(self, outcome: int, seconds: float) -> None:
        """Add one duration; ``outcome`` indexes ``OUTCOMES``. A value on a
        boundary falls in the bucket it bounds, as in OpenTelemetry."""
        self.counts[outcome][bisect.bisect_left(self.boundaries, seconds)] += 1
        self.sums[outcome] += seconds

    def data(self) -> dict[str, HistogramData]:
        """A copy per outcome that has at least one recorded call."""
        result = {}
        for index, outcome in enumerate(OUTCOMES):
            counts = self.counts[index]
            total = sum(counts)
            if total:
                result[outcome] = HistogramData(self.boundaries, tuple(counts), total, self.sums[index])
        return result
