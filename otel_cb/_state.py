"""Breaker states, transition reasons and the transition event handed to listeners."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = ["CircuitState", "FallbackOutcome", "Reason", "StateChangeEvent", "Verdict"]

Verdict = Literal["success", "failure", "ignored"]
"""How one call's outcome counts: the one vocabulary of the core, the kit and the hooks.

``ignored`` counts as neither success nor failure; "no verdict" (cancellation, a
call abandoned) is ``None`` wherever a verdict is optional.
"""

FallbackOutcome = Literal["success", "failure", "refused"]
"""How a served fallback ended: ``refused`` is a fail-closed answer (served, but
not a successful substitute)."""


class CircuitState(str, enum.Enum):
    """The state of a circuit breaker.

    A string enum, so ``CircuitState.OPEN == "open"`` and the value is what
    telemetry, logs and configuration use.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


class Reason(str, enum.Enum):
    """Why a transition happened: a fixed set, so metric labels stay bounded."""

    CONSECUTIVE_FAILURES = "consecutive_failures"
    FAILURE_RATE = "failure_rate"
    SLOW_CALL_RATE = "slow_call_rate"
    OPEN_TIMEOUT_ELAPSED = "open_timeout_elapsed"
    HEALTH_CHECK_PASSED = "health_check_passed"
    PROBE_FAILURE = "probe_failure"
    PROBE_SUCCESS = "probe_success"
    FORCE_OPEN = "force_open"
    DISABLE = "disable"
    RESET = "reset"
    SHARED_STATE = "shared_state"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class StateChangeEvent:
    """One transition of one breaker, as handed to listeners.

    Attributes:
        name: The breaker's name.
        previous_state: The state left.
        state: The state entered.
        reason: Which rule or action caused the transition.
        timestamp: The breaker clock's reading at the transition (monotonic seconds).
        open_timeout: For a transition into ``open``, how long the breaker stays
            open before it admits a probe; otherwise None.
    """

    name: str
    previous_state: CircuitState
    state: CircuitState
    reason: Reason
    timestamp: float
    open_timeout: float | None = None
