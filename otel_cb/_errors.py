"""Exceptions raised by breakers themselves.

A protected call that fails re-raises the caller's own exception unchanged;
only a call the breaker refuses raises one of these.
"""

from __future__ import annotations

from ._state import CircuitState

__all__ = ["CircuitBreakerError", "CircuitOpenError"]


class CircuitBreakerError(Exception):
    """Base class of every error raised by otel-cb itself."""


class CircuitOpenError(CircuitBreakerError):
    """A call was rejected because its breaker does not admit calls.

    Attributes:
        name: The breaker that rejected the call.
        state: Its state at rejection (``open``, ``half_open`` with every probe
            slot taken, or ``forced_open``).
        retry_after: Seconds until the breaker admits a probe; 0.0 while
            half-open probes are all in flight, None when forced open (only
            ``reset()`` ends that).
    """

    def __init__(self, name: str, state: CircuitState, retry_after: float | None) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        super().__init__(name, state, retry_after)

    def __str__(self) -> str:
        if self.retry_after is None:
            return f"circuit breaker {self.name!r} is {self.state.value}: call rejected until reset()"
        return (
            f"circuit breaker {self.name!r} is {self.state.value}: call rejected, "
            f"retry after {self.retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, CircuitState, float | None]]:
        return (type(self), (self.name, self.state, self.retry_after))
