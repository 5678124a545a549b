"""Telemetry on by default, without loading OpenTelemetry when otel-cb is imported.

An observer stands in for ``otel_cb.telemetry`` until the first breaker is
made; then it loads it (OpenTelemetry's API, never the SDK), lets it decide
(``disable()``, ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``) and steps aside.
The package registers it on import; nothing in the core imports this module,
so the core never depends on telemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _observers
from ._observers import logger, remove_observer

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["install"]


class _DefaultTelemetry:
    """Turns telemetry on when the first breaker is made (unless the application opted out)."""

    def breaker_created(self, breaker: CircuitBreaker) -> None:
        remove_observer(self)
        try:
            from .telemetry import _core
        except ImportError:  # OpenTelemetry's API is not installed: no telemetry
            logger.debug("otel-cb: no telemetry (OpenTelemetry API not importable)", exc_info=True)
            return
        _core.enable_by_default()
        if _core.telemetry.enabled:
            # Registered after this breaker's creation was announced.
            _core.telemetry.breaker_created(breaker)


def install() -> None:
    """Register the stand-in (idempotent: ``add_observer`` ignores a second one)."""
    _observers.add_observer(_STAND_IN)


_STAND_IN = _DefaultTelemetry()
