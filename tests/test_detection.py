"""Adaptive failure detection (`otel_cb._detection`, the closed state's `failure_threshold` rule).

The detector alone runs on seeded outcome streams drawn as the number of
successes before each failure (geometric gaps), which is also how it sees
them, so a million calls take a fraction of a second; breakers run shorter
streams, call by call, on the fake clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState
from otel_cb._detection import WARM_UP, AdaptiveDetector

from .conftest import FakeClock


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

    def __init__(self, detector: AdaptiveDetector) -> None:
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


@pytest.mark.parametrize("threshold", [3, 5, 10])
def test_a_clean_dependency_that_dies_trips_after_failure_threshold_failures(threshold: int) -> None:
    stream = Stream(AdaptiveDetector(threshold))
    stream.succeed(10_000)
    for call in range(1, threshold + 1):
        tripped = stream.fail()
        assert tripped == (call == threshold), call
    assert stream.detector.limit == threshold


def test_a_new_detector_is_the_classic_rule_until_warmed_up() -> None:
    stream = Stream(AdaptiveDetector(5))
    assert stream.detector.limit == 5
    for _ in range(3):  # four failures and a success, again and again: never five in a row
        assert [stream.fail() for _ in range(4)] == [False] * 4
        stream.succeed()
    assert stream.trips == 0 and stream.detector.limit == 5
    stream.succeed(WARM_UP)
    stream.fail()
    assert stream.detector.limit > 8  # warmed up, on what it learnt: 13 failures in about 115 calls


def test_a_success_takes_off_only_r_from_a_run_of_failures() -> None:
    stream = Stream(AdaptiveDetector(5))
    stream.succeed(1_000)
    assert [stream.fail() for _ in range(4)] == [False] * 4
    stream.succeed()
    assert stream.detector.step == pytest.approx(0.177, abs=0.001)
    assert [stream.fail(), stream.fail()] == [False, True]  # six failures in seven


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
    # The first failure learns the successes before it, which may raise the limit a little.
    assert stream.calls_to_trip(rng, 1.0) <= math.ceil(limit) + 1
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
        step, limit = detector.step, detector.limit
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
    assert clean.detector.bound == 0.01 and clean.detector.step == pytest.approx(0.177, abs=0.001)
    noisy = Stream(AdaptiveDetector(5))
    noisy.noise(random.Random(6), 0.10, 200_000)
    assert 11 < noisy.detector.limit < 14
    assert 0.4 < noisy.detector.step < 0.5


# -- through a breaker ---------------------------------------------------------------


def drive(breaker: CircuitBreaker, clock: FakeClock, fails: list[bool]) -> int:
    """One call per outcome, 10 ms apart; returns the trips (closed -> open)."""
    trips = 0

    def call(failing: bool) -> None:
        if failing:
            raise ConnectionError
    for failing in fails:
        clock.advance(0.01)
        before = breaker.state
        try:
            breaker.call(call, failing)
        except (ConnectionError, CircuitOpenError):
            pass
        trips += before is CircuitState.CLOSED and breaker.state is CircuitState.OPEN
    return trips


def noise(seed: int, rate: float, calls: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(calls)]


def test_the_default_breaker_rides_out_noise_the_classic_rule_trips_on(clock: FakeClock) -> None:
    outcomes = noise(7, 0.10, 200_000)
    # No rate rule: the rule under test alone (the window's 50 % never fires at 10 % anyway).
    adaptive = CircuitBreaker("adaptive", CircuitBreakerConfig(failure_rate_threshold=None), clock=clock)
    classic = CircuitBreaker("classic", CircuitBreakerConfig(failure_rate_threshold=None, adaptive=False),
                             clock=clock)
    assert drive(adaptive, clock, outcomes) == 0
    assert drive(classic, clock, outcomes) >= 1


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_dead_dependency_trips_the_breaker_after_failure_threshold_failures(clock: FakeClock,
                                                                              adaptive: bool) -> None:
    breaker = CircuitBreaker("dead", CircuitBreakerConfig(adaptive=adaptive), clock=clock)
    assert drive(breaker, clock, [False] * 5_000) == 0
    assert drive(breaker, clock, [True] * 4) == 0
    assert drive(breaker, clock, [True]) == 1
    assert breaker.snapshot().consecutive_failures == 0  # reads 0 once open


def test_the_baseline_outlives_an_open_stay_and_a_fresh_run_starts_on_close(clock: FakeClock) -> None:
    config = CircuitBreakerConfig(failure_rate_threshold=None, open_timeout=1.0, success_threshold=1)
    breaker = CircuitBreaker("noisy", config, clock=clock)
    drive(breaker, clock, noise(8, 0.10, 20_000))
    detector = breaker._adaptive
    assert detector is not None and detector.limit > 10
    learnt = detector.baseline
    assert drive(breaker, clock, [True] * 20) == 1
    clock.advance(1.0)
    drive(breaker, clock, [False])  # the probe closes it
    assert breaker.state is CircuitState.CLOSED
    assert abs(detector.baseline - learnt) < 0.002 and detector.score == 0.0  # the 20 failures not learnt


def test_failure_threshold_none_switches_the_rule_off(clock: FakeClock) -> None:
    breaker = CircuitBreaker("off", CircuitBreakerConfig(failure_threshold=None, failure_rate_threshold=None),
                             clock=clock)
    assert breaker._adaptive is None
    assert drive(breaker, clock, [True] * 1000) == 0
