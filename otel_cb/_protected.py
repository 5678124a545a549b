"""`CircuitProtected`: what a client says about the breaker that guards it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._state import CircuitState

__all__ = ["CircuitProtected"]


@runtime_checkable
class CircuitProtected(Protocol):
    """A client whose dependency is guarded by a circuit breaker.

    Lets a caller ask any client how its dependency is doing without knowing
    how the client is protected.
    """

    @property
    def circuit_breaker(self) -> CircuitBreaker:
        """The breaker guarding this client's calls."""
        ...

    @property
    def circuit_state(self) -> CircuitState:
        """That breaker's current state."""
        ...

    @property
    def is_healthy(self) -> bool:
        """True when calls are being admitted normally (the breaker is closed)."""
        ...
