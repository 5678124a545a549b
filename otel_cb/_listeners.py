"""Who hears of a breaker's transition: its listeners, its shared-state link, the observers.

A listener belongs to one breaker (``CircuitBreaker.add_listener``); observers
are process-wide (``_observers``). Everything here runs after the breaker's
lock is released, and every callee goes through ``_observers.call_safely``, so
a listener can neither break a call nor deadlock its breaker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _observers
from ._state import Reason, StateChangeEvent

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["Listener", "announce", "with_listener", "without_listener"]

Listener = Callable[[StateChangeEvent], Any]


def with_listener(listeners: tuple[Listener, ...], listener: Listener) -> tuple[Listener, ...]:
    """``listeners`` plus one (a new tuple: the call path reads it without the lock)."""
    return (*listeners, listener)


def without_listener(listeners: tuple[Listener, ...], listener: Listener) -> tuple[Listener, ...]:
    """``listeners`` less every entry equal to ``listener``."""
    return tuple(item for item in listeners if item != listener)


def announce(breaker: CircuitBreaker, event: StateChangeEvent) -> None:
    """Tell everyone of ``event``; the breaker's lock is not held."""
    for listener in breaker._listeners:
        _observers.call_safely(listener, f"listener of circuit breaker {breaker.name!r}", event)
    shared = breaker._shared
    if shared is not None and event.reason is not Reason.SHARED_STATE:
        _observers.call_safely(shared.on_transition, "shared state", event)
    if _observers.observers:
        _observers.notify("state_changed", breaker, event)
