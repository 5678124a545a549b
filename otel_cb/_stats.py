"""Plain, lock-protected statistics a breaker keeps for telemetry to read at collection time.

Recording an OpenTelemetry instrument on every call would cost more than the
breaker itself, so the call path only bumps integers here; the telemetry
module turns them into metrics when a reader collects. ``CallCounters`` holds
the call counts of ``snapshot().calls``, ``slow_calls`` and ``fallbacks``;
``DurationHistogram`` the optional duration buckets. The state machine
(``_states``) decides what happened; this module only counts it.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

__all__ = ["CallCounters", "DEFAULT_BOUNDARIES", "DurationHistogram", "FALLBACK_OUTCOMES", "HistogramData", "OUTCOMES"]

# OpenTelemetry's recommended boundaries for client-call durations, in seconds.
DEFAULT_BOUNDARIES: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
OUTCOMES = ("success", "failure", "ignored")
FALLBACK_OUTCOMES = ("success", "failure", "refused")
_FALLBACK_INDEX = {outcome: index for index, outcome in enumerate(FALLBACK_OUTCOMES)}


@dataclass(frozen=True, slots=True)
class HistogramData:
    """Cumulative histogram of one outcome's durations since the breaker was made."""

    boundaries: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    count: int
    sum: float


class CallCounters:
    """Calls since the breaker was made, by outcome; the caller holds the breaker's lock.

    Successes of the current closed stay's fast path are counted by that stay
    (``_states.Closed``) and added here when it ends, so ``success`` alone is
    not the total: read it through ``snapshot()``.

    Rejections are counted without the lock (rejecting while open takes none):
    ``next(counters.rejections)`` on an ``itertools.count`` is one atomic step
    for the interpreter. ``rejected()`` reads it by taking one more value and
    subtracting the values earlier reads took.
    """

    __slots__ = ("success", "failure", "ignored", "slow_success", "slow_failure", "_fallbacks",
                 "rejections", "_reads")

    def __init__(self) -> None:
        self.success = self.failure = self.ignored = 0
        self.slow_success = self.slow_failure = 0
        self._fallbacks = [0] * len(FALLBACK_OUTCOMES)
        self.rejections = itertools.count()
        self._reads = 0

    def count(self, failed: bool, slow: bool) -> None:
        """One success or failure, slow or not."""
        if failed:
            self.failure += 1
            self.slow_failure += slow
        else:
            self.success += 1
            self.slow_success += slow

    def count_fallback(self, outcome: str) -> None:
        """One fallback served.

        Raises:
            ValueError: for an outcome not in ``FALLBACK_OUTCOMES``.
        """
        try:
            self._fallbacks[_FALLBACK_INDEX[outcome]] += 1
        except KeyError:
            raise ValueError(f"outcome: {outcome!r} is not allowed; use 'success', 'failure' or 'refused'") from None

    def fallbacks(self) -> dict[str, int]:
        """Fallbacks served, by outcome."""
        return dict(zip(FALLBACK_OUTCOMES, self._fallbacks, strict=True))

    def total(self) -> int:
        """Every count here added up, rejections included: it grows with each one and
        stays the same otherwise (the breaker's lock held; see ``rejected``)."""
        return self.success + self.failure + self.ignored + sum(self._fallbacks) + self.rejected()

    def rejected(self) -> int:
        """Rejections so far (the breaker's lock held: reads must not interleave)."""
        taken = next(self.rejections) - self._reads
        self._reads += 1
        return taken


class DurationHistogram:
    """Bucketed call durations per outcome; the caller holds the breaker's lock,
    except to append to ``successes``.

    No min or max is kept (both are optional in OTLP). The closed state's
    lock-free successes (``_states.Closed``) only append their duration to
    ``successes`` (one atomic step for the interpreter); ``fold`` buckets them
    in bulk under the lock, before every read and whenever ``FOLD_AT`` are
    waiting, so the list stays bounded. Sorting a batch and bisecting it once
    per boundary costs far less per call than a bisect and two additions.
    """

    __slots__ = ("boundaries", "counts", "sums", "successes")

    FOLD_AT = 1024

    def __init__(self, boundaries: tuple[float, ...] = DEFAULT_BOUNDARIES) -> None:
        self.boundaries = boundaries
        self.counts = [[0] * (len(boundaries) + 1) for _ in OUTCOMES]
        self.sums = [0.0] * len(OUTCOMES)
        self.successes: list[float] = []

    def record(self, outcome: int, seconds: float) -> None:
        """Add one duration; ``outcome`` indexes ``OUTCOMES``. A value on a
        boundary falls in the bucket it bounds, as in OpenTelemetry."""
        self.counts[outcome][bisect.bisect_left(self.boundaries, seconds)] += 1
        self.sums[outcome] += seconds

    def fold(self) -> None:
        """Bucket the successes appended without the lock. Lock held."""
        pending = self.successes
        taken = len(pending)
        if not taken:
            return
        # Copy, then delete what was copied: appends made meanwhile land after
        # it and wait for the next fold (swapping the list instead could lose
        # an append made to the old one).
        batch = pending[:taken]
        del pending[:taken]
        batch.sort()
        counts = self.counts[0]
        below = 0
        for index, boundary in enumerate(self.boundaries):
            upto = bisect.bisect_right(batch, boundary)  # a value on a boundary is in the bucket it bounds
            counts[index] += upto - below
            below = upto
        counts[-1] += taken - below
        self.sums[0] += sum(batch)

    def data(self) -> dict[str, HistogramData]:
        """A copy per outcome that has at least one recorded call. Lock held."""
        self.fold()
        result = {}
        for index, outcome in enumerate(OUTCOMES):
            counts = self.counts[index]
            total = sum(counts)
            if total:
                result[outcome] = HistogramData(self.boundaries, tuple(counts), total, self.sums[index])
        return result
