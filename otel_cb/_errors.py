"""Exceptions raised by breakers themselves.

A protected call that fails re-raises the caller's own exception unchanged;
only a call the breaker refuses raises one of these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._state import CircuitState

__all__ = ["CircuitBreakerError", "CircuitOpenError"]


class CircuitBreakerError(Exception):
    """Base class of every error raised by otel-cb itself."""


class _Arg:
    """Reads one positional argument of an exception.

    A non-data descriptor: an instance attribute of the same name wins, so a
    subclass whose other base takes different arguments can set the
    attributes itself. Reading ``args`` instead of running a Python
    ``__init__`` keeps a rejection, the hot path while open, cheap.
    """

    __slots__ = ("_index",)

    def __init__(self, index: int) -> None:
        self._index = index

    def __get__(self, instance: BaseException | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance.args[self._index]


class CircuitOpenError(CircuitBreakerError):
    """A call was rejected because its breaker does not admit calls.

    Built as ``CircuitOpenError(name, state, retry_after)`` (positional).

    Attributes:
        name: The breaker that rejected the call.
        state: Its state at rejection (``open``, ``half_open`` with every probe
            slot taken, or ``forced_open``).
        retry_after: Seconds until the breaker admits a probe; 0.0 while
            half-open probes are all in flight, None when forced open (only
            ``reset()`` ends that).
    """

    if TYPE_CHECKING:
        name: str
        state: CircuitState
        retry_after: float | None

        def __init__(self, name: str, state: CircuitState, retry_after: float | None) -> None: ...
    else:
        name = _Arg(0)
        state = _Arg(1)
        retry_after = _Arg(2)

    def __str__(self) -> str:
        state = self.state
        label = state.value if isinstance(state, CircuitState) else str(state)
        if self.retry_after is None:
            return f"circuit breaker {self.name!r} is {label}: call rejected until reset()"
        return f"circuit breaker {self.name!r} is {label}: call rejected, retry after {self.retry_after:.3f}s"
