"""The one place where otel-cb calls code it does not own: listeners and observers.

Every call out goes through here, which logs and swallows ``Exception`` (never
``BaseException``), so observing a breaker can never change a call's outcome.
Each failing callee is logged once with its traceback, then at DEBUG, so a
broken listener cannot flood the host's logs.

Observers are process-wide (telemetry, the plugin manager, shared state) and
see every breaker; listeners belong to one breaker (``CircuitBreaker.add_listener``).

Telemetry is on by default: ``default_telemetry`` stands in for it until the
first breaker is made, then loads ``otel_cb.telemetry`` (OpenTelemetry's API,
never the SDK) and steps aside, so importing otel-cb alone loads no
OpenTelemetry. The lock and the set of live breakers are made anew in a child
process after ``fork``, so a parent thread that held them cannot block it.
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

__all__ = ["Observer", "add_observer", "call_safely", "default_telemetry", "live_breakers", "notify", "observers",
           "refresh", "remove_observer"]

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


# Every live breaker, so an observer registered late (telemetry) still finds
# breakers made before it; weak, so it never keeps one alive.
live_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

_HOOKS = ("breaker_created", "state_changed", "call_rejected", "fallback_served", "shared_state_changed")


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


default_telemetry = _DefaultTelemetry()

# A tuple, replaced whole on change, so the call path reads it without a lock.
observers: tuple[Any, ...] = (default_telemetry,)
# hook -> (observer, bound method) for every observer that has it now: notify()
# reads one entry instead of asking each observer (a rejection is a hot path).
_hooks: dict[str, tuple[tuple[Any, Callable[..., Any]], ...]] = {}
_lock = threading.Lock()
_already_logged: set[tuple[int, str]] = set()


def _after_fork_in_child() -> None:
    global _lock, live_breakers
    _lock = threading.Lock()
    # A WeakSet being iterated at fork stays "iterating" in the child forever
    # (removals would pile up); a copy starts clean.
    live_breakers = weakref.WeakSet(list(live_breakers))


os.register_at_fork(after_in_child=_after_fork_in_child)


def add_observer(observer: object) -> None:
    """Register a process-wide observer (idempotent)."""
    global observers
    with _lock:
        if observer not in observers:
            observers = (*observers, observer)
        _refresh()


def remove_observer(observer: object) -> None:
    """Unregister an observer; unknown ones are ignored."""
    global observers
    with _lock:
        observers = tuple(o for o in observers if o is not observer)
        _refresh()


def refresh() -> None:
    """Read the observers' hooks again: an observer that gained or dropped one calls this."""
    with _lock:
        _refresh()


def _refresh() -> None:
    global _hooks
    found: dict[str, list[tuple[Any, Callable[..., Any]]]] = {}
    for observer in observers:
        for hook in _HOOKS:
            method = getattr(observer, hook, None)
            if method is not None:
                found.setdefault(hook, []).append((observer, method))
    _hooks = {hook: tuple(methods) for hook, methods in found.items()}


def call_safely(target: Callable[..., Any], what: str, *args: Any, default: Any = None) -> Any:
    """Return ``target(*args)``; log an ``Exception`` once per target and return ``default`` instead."""
    try:
        return target(*args)
    except Exception:
        _log_failure(target, what)
        return default


def _log_failure(target: Callable[..., Any], what: str) -> None:
    """Log the exception being handled: with its traceback the first time per callee, then at DEBUG."""
    key = (id(target.__self__) if hasattr(target, "__self__") else id(target), what)
    if key in _already_logged:
        logger.debug("%s raised again", what, exc_info=True)
    else:
        _already_logged.add(key)
        logger.error("%s raised; otel-cb ignores it and the call goes on", what, exc_info=True)


def notify(hook: str, *args: Any) -> None:
    """Call ``hook`` on every observer that has it (as ``call_safely``, the name made only on failure)."""
    for observer, method in _hooks.get(hook, ()):
        try:
            method(*args)
        except Exception:
            _log_failure(method, f"observer {type(observer).__name__}.{hook}")


_refresh()
