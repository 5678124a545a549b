"""The one place where otel-cb calls code it does not own: listeners and observers.

Every call out goes through here, which logs and swallows ``Exception`` (never
``BaseException``), so observing a breaker can never change a call's outcome.
Each failing callee is logged once with its traceback, then at DEBUG, so a
broken listener cannot flood the host's logs.

Observers are process-wide (telemetry, the plugin manager, shared state) and
see every breaker; listeners belong to one breaker (``CircuitBreaker.add_listener``).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._errors import CircuitOpenError
    from ._state import StateChangeEvent

__all__ = ["Observer", "add_observer", "remove_observer", "observers", "call_safely", "live_breakers"]

logger = logging.getLogger("otel_cb")


class Observer(Protocol):
    """What a process-wide observer implements; every method is optional."""

    def breaker_created(self, breaker: CircuitBreaker) -> None: ...
    def state_changed(self, breaker: CircuitBreaker, event: StateChangeEvent) -> None: ...
    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None: ...
    # outcome: 'success', 'failure' or 'refused' (CircuitBreaker.count_fallback).
    def fallback_served(self, breaker: CircuitBreaker, outcome: str) -> None: ...
    # otel_cb.shared: True when the breaker falls back to local state (Redis unreachable), False when back.
    def shared_state_changed(self, breaker: CircuitBreaker, running_locally: bool) -> None: ...
    # One health check ran (CircuitBreaker.check_health, or the background monitor): passed or not.
    def health_checked(self, breaker: CircuitBreaker, passed: bool) -> None: ...


# Every live breaker, so an observer registered late (telemetry) still finds
# breakers made before it; weak, so it never keeps one alive.
live_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

# A tuple, replaced whole on change, so the call path reads it without a lock.
observers: tuple[Any, ...] = ()
_lock = threading.Lock()
_already_logged: set[tuple[int, str]] = set()


def _renew_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at the fork


os.register_at_fork(after_in_child=_renew_lock_in_child)


def add_observer(observer: object) -> None:
    """Register a process-wide observer (idempotent)."""
    global observers
    with _lock:
        if observer not in observers:
            observers = (*observers, observer)


def remove_observer(observer: object) -> None:
    """Unregister an observer; unknown ones are ignored."""
    global observers
    with _lock:
        observers = tuple(o for o in observers if o is not observer)


def call_safely(target: Callable[..., Any], what: str, *args: Any, default: Any = None) -> Any:
    """Return ``target(*args)``; log an ``Exception`` once per target and return ``default`` instead."""
    try:
        return target(*args)
    except Exception:
        key = (id(target.__self__) if hasattr(target, "__self__") else id(target), what)
        if key in _already_logged:
            logger.debug("%s raised again", what, exc_info=True)
        else:
            _already_logged.add(key)
            logger.error("%s raised; otel-cb ignores it and the call goes on", what, exc_info=True)
        return default


def notify(hook: str, *args: Any) -> None:
    """Call ``hook`` on every observer that has it."""
    for observer in observers:
        method = getattr(observer, hook, None)
        if method is not None:
            call_safely(method, f"observer {type(observer).__name__}.{hook}", *args)
