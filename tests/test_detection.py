"""Failure detectors of the closed state (`otel_cb._detection`), on seeded outcome streams.

Streams are drawn as the number of successes before each failure (geometric
gaps), which is also how a detector sees them, so a million calls take a
fraction of a second.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest

from otel_cb._detection import AdaptiveDetector, ConsecutiveFailures, new_detector


def gaps(rng: random.Random, rate: float, calls: int) -> Iterator[int]:
    """Successes before each failure of ``calls`` outcomes failing at ``rate``, independently."""
    log_keep = math.log1p(-rate)
    seen = 0
    while True:
        gap = int(math.log(1.0 - rng.random()) / log_keep)
        seen += gap + 1
        if seen > calls:
            return
        yield gap


class Stream:
    """Feeds a detector the way the closed state does: a running success count."""

    def __init__(self, detector: AdaptiveDetector | ConsecutiveFailures) -> None:
        self.detector = detector
        self.successes = 0
        self.trips = 0

    def succeed(self, n: int = 1) -> None:
        self.successes += n

    def fail(self) -> bool:
        tripped = self.detector.failure(self.successes)
        self.trips += tripped
        return tripped

    def noise(self, rng: random.Random, rate: float, calls: int) -> None:
        for gap in gaps(rng, rate, calls):
            self.succeed(gap)
            self.fail()

    def calls_to_trip(self, rng: random.Random, rate: float, limit: int = 10_000) -> int:
        for call in range(1, limit + 1):
            if rng.random() < rate:
                if self.fail():
                    return call
            else:
                self.succeed()
        raise AssertionError(f"no trip in {limit} calls at {rate:.0%} failures")


@pytest.mark.parametrize("rate", [0.05, 0.10])
@pytest.mark.parametrize("seed", [1, 2])
def test_no_false_trip_in_a_million_calls_of_random_noise(rate: float, seed: int) -> None:
    stream = Stream(AdaptiveDetector(5))
    stream.noise(random.Random(seed), rate, 1_000_000)
    assert stream.trips == 0
    assert abs(stream.detector.baseline - rate) < rate / 3  # and it learnt the rate


def test_the_classic_rule_does_trip_on_the_same_noise() -> None:
    # What the adaptive detector is for: the same stream trips the classic rule often.
    stream = Stream(ConsecutiveFailures(5))
    stream.noise(random.Random(1), 0.10, 1_000_000)
    assert stream.trips > 3


@pytest.mark.parametrize("threshold", [3, 5, 10])
def test_a_clean_dependency_that_dies_trips_after_failure_threshold_failures(threshold: int) -> None:
    stream = Stream(AdaptiveDetector(threshold))
    stream.succeed(10_000)
    for call in range(1, threshold + 1):
        tripped = stream.fail()
        assert tripped == (call == threshold), call
    assert stream.detector.limit == threshold


def test_a_new_breaker_is_cautious_and_learns_a_clean_baseline_within_a_few_hundred_calls() -> None:
    detector = AdaptiveDetector(5)
    assert detector.limit > 8
    stream = Stream(detector)
    stream.succeed(300)
    assert not stream.fail()  # the first failure ends the learning of 300 clean calls
    assert detector.limit == 5


@pytest.mark.parametrize("seed", range(100))
def test_a_brownout_of_a_clean_dependency_trips_within_30_calls(seed: int) -> None:
    rng = random.Random(seed)
    stream = Stream(AdaptiveDetector(5))
    stream.noise(rng, 0.001, 20_000)
    stream.succeed(rng.randrange(50))
    assert stream.trips == 0
    assert stream.calls_to_trip(rng, 0.6) <= 30


@pytest.mark.parametrize("seed", range(20))
def test_a_noisy_dependency_still_trips_when_it_dies_or_browns_out(seed: int) -> None:
    rng = random.Random(seed)
    stream = Stream(AdaptiveDetector(5))
    stream.noise(rng, 0.10, 20_000)
    stream.succeed(rng.randrange(20))
    limit = stream.detector.limit
    assert 10 < limit < 15
    assert stream.calls_to_trip(rng, 1.0) <= math.ceil(limit)
    stream.detector.restart(stream.successes)
    assert stream.calls_to_trip(rng, 0.6) <= 120


def test_an_outage_teaches_nothing() -> None:
    stream = Stream(AdaptiveDetector(5))
    stream.noise(random.Random(3), 0.02, 50_000)
    learnt = (stream.detector.baseline, stream.detector.limit)
    stream.calls_to_trip(random.Random(4), 1.0)
    stream.detector.restart(stream.successes)
    assert (stream.detector.baseline, stream.detector.limit) == learnt


def test_restart_forgets_the_score_but_keeps_the_baseline() -> None:
    stream = Stream(AdaptiveDetector(5))
    stream.succeed(5_000)
    stream.fail()
    stream.fail()
    baseline = stream.detector.baseline
    assert stream.detector.score == 2.0
    stream.detector.restart(stream.successes)
    assert stream.detector.score == 0.0 and stream.detector.baseline == baseline
    assert [stream.fail() for _ in range(5)] == [False] * 4 + [True]


def test_successes_counted_in_bulk_score_as_one_at_a_time() -> None:
    # The detector applies the successes between two failures at once: the
    # CUSUM floor at 0 makes that exact. Check against a call-by-call CUSUM
    # with the detector's own step and limit (frozen after a long warm-up).
    rng = random.Random(5)
    stream = Stream(AdaptiveDetector(5))
    stream.noise(rng, 0.05, 200_000)
    detector = stream.detector
    score = detector.score
    for _ in range(20_000):
        step, limit = detector._step, detector.limit
        if rng.random() < 0.05:
            tripped = stream.fail()
            score += 1.0
            assert tripped == (score >= limit)
            if tripped:
                score = 0.0
            assert detector.score == pytest.approx(score)
        else:
            stream.succeed()
            score = max(0.0, score - step)


def test_the_documented_figures() -> None:
    clean = Stream(AdaptiveDetector(5))
    clean.succeed(100_000)
    clean.fail()
    assert clean.detector.limit == 5
    assert 0.1 < clean.detector._step < 0.2
    noisy = Stream(AdaptiveDetector(5))
    noisy.noise(random.Random(6), 0.10, 200_000)
    assert 11 < noisy.detector.limit < 14
    assert 0.4 < noisy.detector._step < 0.5


def test_the_classic_rule() -> None:
    stream = Stream(ConsecutiveFailures(3))
    assert [stream.fail() for _ in range(3)] == [False, False, True]
    assert [stream.fail() for _ in range(2)] == [False, False]
    stream.succeed()
    assert [stream.fail() for _ in range(3)] == [False, False, True]
    stream.fail()
    stream.detector.restart(stream.successes)
    assert [stream.fail() for _ in range(3)] == [False, False, True]


def test_new_detector_picks_by_the_switch() -> None:
    assert isinstance(new_detector(5, adaptive=True), AdaptiveDetector)
    assert isinstance(new_detector(5, adaptive=False), ConsecutiveFailures)
