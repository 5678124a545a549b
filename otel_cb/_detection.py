"""Adaptive failure detection for the closed state: do these failures say the dependency is down?

``AdaptiveDetector`` is the ``failure_threshold`` rule when
``CircuitBreakerConfig.adaptive`` is on (the default); with it off the closed
state keeps the classic rule itself (``failure_threshold`` failures with no
success in between). The detector is pure (no clock, no I/O, no lock: the
closed state calls it under the breaker's lock) and sees only failures. A
success costs it nothing: the breaker keeps a running count of successes
anyway and passes it with each failure, and the detector reads how many
successes came in between from the difference. Each failure is O(1) and
allocates no container.

It learns the failure rate the dependency shows while healthy (its baseline)
and trips on evidence that the current rate is far above it. It is a
Bernoulli CUSUM (Page's cumulative-sum test) against that baseline:

- ``p0`` is a cautious upper bound of the baseline failure rate and
  ``p1 = (1 + p0) / 2`` the rate of a dependency that is failing: halfway
  between its normal rate and failing every call.
- Each outcome adds its log-likelihood ratio to a score ``S``, floored at 0:
  a failure adds ``A = ln(p1 / p0)``, a success subtracts
  ``B = ln((1 - p0) / (1 - p1))``.
- Counted in failures (``s = S / A``), a failure adds 1, a success subtracts
  ``r = B / A``, and the breaker trips at ``s >= K = max(failure_threshold, h / A)``.
- ``h`` is the evidence that ``failure_threshold`` failures in a row give
  against a clean baseline (``p0 = CLEAN_RATE``, 1 %):
  ``h = failure_threshold * ln(p1 / p0)``, 19.6 for the default threshold of 5.
  By Lorden's bound the mean run of calls before a false trip is at least
  ``e**h`` when the failure rate really is ``p0`` (3e8 calls for ``h = 19.6``;
  measured, about five times that, because every failure overshoots the
  threshold), and ``p0`` is an upper bound of the real rate, so a false trip
  is rarer still: none in 20 M calls at 5 %, 10 % or 20 % random failures.
  ``failure_threshold`` is thus still the knob: a lower one trips on less
  evidence, a higher one asks for more.
- ``p0`` is floored at ``CLEAN_RATE``: every dependency at most that noisy
  is clean, with ``K = failure_threshold``: five failures in a row trip, as
  with the classic rule, and a success in between takes away only
  ``r = 0.177``, so six failures in seven trip too. For a dependency that
  always fails 10 % of calls ``p0`` is about 0.12, ``K`` about 12.5 and ``r``
  about 0.43: noise never reaches the threshold, while a dead dependency
  trips in 13 calls and a 60 % brownout, whose score climbs by
  0.6 - 0.4 r = 0.43 per call, in about 30. The score drifts upwards, and so
  eventually trips, whenever the failure rate exceeds ``r / (1 + r)``: 15 %
  for a clean dependency, 30 % for a 10 % one. A rate below that is learnt
  as the new normal within a few ``MEMORY`` calls.

The baseline is an exponentially discounted count of failures ``F`` among
``N`` outcomes with a memory of ``MEMORY`` outcomes (each outcome's weight
shrinks by ``1 - 1/MEMORY`` per later outcome; calls, not seconds):
``p = F / N`` and ``p0 = p + Z * sqrt(p (1 - p) / N)``, floored at
``CLEAN_RATE``. It starts from ``PRIOR_CALLS`` clean-looking outcomes
(``PRIOR_RATE``), which age out like real ones. Until it has learnt
``WARM_UP`` outcomes it applies the classic rule (``K = failure_threshold``,
and a success ends a run of failures: ``r`` is infinite), so a new breaker
behaves exactly as it always did; from then on ``K`` and ``r`` follow the
baseline, learnt from the first outcome on.

Only outcomes that turned out normal are learnt: the outcomes of an excursion
(the score rising above 0 until it falls back to 0) are held back, learnt
when it ends at 0 and dropped when it trips, so an outage or a brownout never
teaches the detector that failing is normal.
"""

from __future__ import annotations

import math

__all__ = ["AdaptiveDetector"]

CLEAN_RATE = 0.01
MEMORY = 1000.0
PRIOR_RATE = 0.0015
PRIOR_CALLS = 150.0
WARM_UP = 50
Z = 2.0

_KEEP = math.log1p(-1.0 / MEMORY)  # log of the weight one outcome keeps per later outcome


class AdaptiveDetector:
    """A CUSUM against a learnt baseline failure rate (see the module docstring).

    Attributes read by snapshots and tests: ``baseline`` (the learnt rate
    ``p``), ``bound`` (``p0``), ``limit`` (``K``), ``step`` (``r``) and
    ``score`` (``s``).
    """

    __slots__ = ("_threshold", "_evidence", "_seen", "score", "_held_failures", "_held_calls",
                 "_failures", "_calls", "_learnt", "baseline", "bound", "limit", "step")

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        # h: what `threshold` failures in a row weigh against a clean baseline.
        self._evidence = threshold * math.log((1.0 + CLEAN_RATE) / 2.0 / CLEAN_RATE)
        self._seen = 0
        self.score = 0.0
        self._held_failures = 0
        self._held_calls = 0
        self._failures = PRIOR_RATE * PRIOR_CALLS
        self._calls = PRIOR_CALLS
        self._learnt = 0  # outcomes learnt so far (not discounted), for the warm-up
        self.baseline = PRIOR_RATE
        self.bound = PRIOR_RATE
        self.limit = float(threshold)
        self.step = math.inf
        self._derive()

    def restart(self, successes: int) -> None:
        """The breaker (re)enters closed: a new score, the baseline kept.
        ``successes`` is the caller's running success count now."""
        self._seen = successes
        self.score = 0.0
        self._held_failures = self._held_calls = 0

    def failure(self, successes: int) -> bool:
        """One failure, after the successes counted up to ``successes`` (the
        caller's running total); True when the breaker should open."""
        between = successes - self._seen
        self._seen = successes
        score = self.score
        if score > 0.0:
            if between:
                score -= between * self.step
            if score > 0.0:  # the excursion goes on: hold its outcomes back
                self._held_failures += 1
                self._held_calls += between + 1
                score += 1.0
                if score >= self.limit:
                    self.restart(successes)
                    return True
                self.score = score
                return False
            # It ended among these successes: it was noise, learn it.
            self._learn(self._held_failures, self._held_calls + between)
        elif between:
            self._learn(0, between)
        self._held_failures = 1
        self._held_calls = 1
        if self.limit <= 1.0:
            self.restart(successes)
            return True
        self.score = 1.0
        return False

    def _learn(self, failures: int, calls: int) -> None:
        """Fold ``calls`` normal outcomes, ``failures`` of them failed, into the baseline."""
        keep = math.exp(_KEEP * calls)
        added = (1.0 - keep) * MEMORY  # the weight the new outcomes carry, together
        self._calls = self._calls * keep + added
        if failures:
            self._failures = self._failures * keep + failures * added / calls
        else:
            self._failures *= keep
        self._learnt += calls
        self._derive()

    def _derive(self) -> None:
        weight = self._calls
        rate = self._failures / weight
        self.baseline = rate
        p0 = min(0.99, max(CLEAN_RATE, rate + Z * math.sqrt(rate * (1.0 - rate) / weight)))
        self.bound = p0
        if self._learnt < WARM_UP:  # the classic rule until then: see the module docstring
            return
        p1 = (1.0 + p0) / 2.0
        up = math.log(p1 / p0)
        self.step = math.log((1.0 - p0) / (1.0 - p1)) / up
        self.limit = max(float(self._threshold), self._evidence / up)
