"""otel-cb: circuit breakers for Python services, observable through OpenTelemetry.

The public API is what this module exports; every other module is private.
Importing ``otel_cb`` imports no client library and no OpenTelemetry SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _telemetry_default
from ._breaker import BreakerSnapshot, CircuitBreaker, Permit
from ._config import CircuitBreakerConfig
from ._errors import CircuitBreakerError, CircuitOpenError
from ._protected import CircuitProtected
from ._registry import CircuitBreakerRegistry, registry
from ._state import CircuitState, StateChangeEvent
from ._version import __version__

# Telemetry is on by default; this loads no OpenTelemetry until a breaker exists.
_telemetry_default.install()

if TYPE_CHECKING:
    from ._instrument import instrument, uninstrument
    from ._settings import ConfigError
    from .plugin import hookimpl

__all__ = [
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerError",
    "CircuitBreakerRegistry",
    "CircuitOpenError",
    "CircuitProtected",
    "CircuitState",
    "ConfigError",
    "Permit",
    "StateChangeEvent",
    "__version__",
    "hookimpl",
    "instrument",
    "registry",
    "uninstrument",
]

# Resolved on first use, so that `import otel_cb` imports neither pluggy nor wrapt.
_LAZY = {
    "ConfigError": "._settings",
    "hookimpl": ".plugin",
    "instrument": "._instrument",
    "uninstrument": "._instrument",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_cb' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
