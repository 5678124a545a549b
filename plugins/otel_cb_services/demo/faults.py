"""The fault script: which phase the simulated services are in, and what each phase does."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PHASES", "FaultScript", "Phase"]

PHASES = ("healthy", "outage", "slow", "flapping", "recovery")


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the script: a behaviour held for some seconds.

    Behaviours: ``healthy`` and ``recovery`` answer normally; ``outage``
    fails every request; ``slow`` answers after ``slow_seconds`` (longer than
    the clients' timeouts); ``flapping`` fails every other request. Health
    checks pass in ``healthy`` and ``recovery`` only.
    """

    name: str
    seconds: float


class FaultScript:
    """A clock-driven sequence of phases, read by every simulated server."""

    def __init__(self, phases: Sequence[Phase], *, slow_seconds: float = 1.0, seed: int = 7) -> None:
        for phase in phases:
            if phase.name not in PHASES:
                raise ValueError(f"phase: {phase.name!r} is not a phase; use one of {', '.join(PHASES)}")
            if phase.seconds <= 0:
                raise ValueError(f"phase {phase.name}: seconds {phase.seconds!r} must be positive")
        self.phases = tuple(phases)
        self.slow_seconds = slow_seconds
        self._start = time.monotonic()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._flap = 0
        self._held: str | None = None

    @classmethod
    def parse(cls, text: str, *, slow_seconds: float = 1.0) -> FaultScript:
        """Parse ``"healthy:5,outage:8,recovery:10"``."""
        phases = []
        for item in text.split(","):
            name, _, seconds = item.strip().partition(":")
            try:
                phases.append(Phase(name, float(seconds)))
            except ValueError:
                raise ValueError(f"fault script: {item!r} is not NAME:SECONDS") from None
        return cls(phases, slow_seconds=slow_seconds)

    @property
    def total_seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases)

    def restart(self) -> None:
        self._start = time.monotonic()

    def hold(self, phase: str | None) -> None:
        """Stay in ``phase`` until told otherwise (None: follow the script again); for tests."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase: {phase!r} is not a phase; use one of {', '.join(PHASES)}")
        self._held = phase

    def current(self) -> str:
        """The phase now; the last phase holds once the script has run out."""
        return self.position()[0]

    def position(self) -> tuple[str, float, float]:
        """The phase now, the seconds left in it and the seconds left in the whole script."""
        elapsed = time.monotonic() - self._start
        left = max(0.0, self.total_seconds - elapsed)
        if self._held is not None:
            return self._held, left, left
        for phase in self.phases:
            if elapsed < phase.seconds:
                return phase.name, phase.seconds - elapsed, left
            elapsed -= phase.seconds
        return self.phases[-1].name, 0.0, 0.0

    def healthy(self) -> bool:
        """What the servers' health checks answer now: healthy in ``healthy`` and ``recovery`` only
        (a flapping service is not healthy, though every other request succeeds)."""
        return self.current() in ("healthy", "recovery")

    def finished(self) -> bool:
        return time.monotonic() - self._start >= self.total_seconds

    def verdict(self) -> tuple[bool, float]:
        """For one request now: (fail it?, seconds to delay it)."""
        phase = self.current()
        if phase == "outage":
            return True, 0.0
        if phase == "slow":
            return False, self.slow_seconds
        if phase == "flapping":
            with self._lock:
                self._flap += 1
                return self._flap % 2 == 0, 0.0
        return False, 0.002 + self._random.random() * 0.008
