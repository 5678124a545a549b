"""otel-cb: circuit breakers for Python services, observable through OpenTelemetry.

The public API is what this module exports; every other module is private.
Importing ``otel_cb`` imports no client library and no OpenTelemetry SDK.
"""

from __future__ import annotations

from ._breaker import BreakerSnapshot, CircuitBreaker, Permit
from ._config import CircuitBreakerConfig
from ._errors import CircuitBreakerError, CircuitOpenError
from ._protected import CircuitProtected
from ._registry import CircuitBreakerRegistry, registry
from ._state import CircuitState, StateChangeEvent
from ._version import __version__

__all__ = [
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerError",
    "CircuitBreakerRegistry",
    "CircuitOpenError",
    "CircuitProtected",
    "CircuitState",
    "Permit",
    "StateChangeEvent",
    "__version__",
    "registry",
]
