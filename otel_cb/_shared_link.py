"""`SharedStateSync`: what a shared-state backend (``otel_cb.shared``) plugs into a breaker.

Only the protocol lives here; the breaker calls it from the closed state
(outcomes), the half-open state (probe leases) and ``_listeners`` (transitions).
"""

from __future__ import annotations

from typing import Protocol

from ._state import StateChangeEvent

__all__ = ["SharedStateSync"]


class SharedStateSync(Protocol):
    """What a shared-state backend (``otel_cb.shared``) plugs into a breaker.

    The breaker calls these; none may block for long. ``acquire_probe`` and
    ``release_probe`` are called with the breaker's lock held. A method that
    raises anyway is logged once and the breaker goes on with local state.
    """

    def on_outcome(self, failed: bool, slow: bool) -> None:
        """One recorded closed-state outcome, to be aggregated fleet-wide."""

    def on_transition(self, event: StateChangeEvent) -> None:
        """A local transition, to be published to the fleet."""

    def acquire_probe(self) -> bool:
        """Take a fleet-wide half-open probe lease; False rejects the probe."""

    def release_probe(self) -> None:
        """Hand a probe lease back."""
