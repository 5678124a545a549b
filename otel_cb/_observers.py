"""The one place where otel-cb calls code it does not own: listeners and observers.

Every call out goes through here, which logs and swallows ``Exception`` (never
``BaseException``), so observing a breaker can never change a call's outcome.
Each failing callee is logged once with its traceback, then at DEBUG, so a
broken listener cannot flood the host's logs.

Observers are process-wide (telemetry, the plugin manager, shared state) and
see every breaker; listeners belong to one breaker (``CircuitBreaker.add_listener``).

The lock and the set of live breakers are made anew in a child process after
``fork``, so a parent thread that held them cannot block it; and no logging
handler our records reach is mid-write at the fork (see ``_hold_log_handlers``).
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

__all__ = ["Observer", "add_observer", "call_safely", "live_breakers", "notify", "observers",
           "refresh", "rejections_observed", "remove_observer"]

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

_HOOKS = ("breaker_created", "state_changed", "call_rejected", "fallback_served", "shared_state_changed",
          "health_checked")



# A tuple, replaced whole on change, so the call path reads it without a lock.
observers: tuple[Any, ...] = ()
# hook -> (observer, bound method) for every observer that has it now: notify()
# reads one entry instead of asking each observer (a rejection is a hot path).
_hooks: dict[str, tuple[tuple[Any, Callable[..., Any]], ...]] = {}
# Some observer has a ``call_rejected`` hook now. Rejecting reads this one
# name, not ``observers``: telemetry, on by default, stays registered but
# drops that hook while nothing could take a rejection (no tracer or logger
# provider), and a rejection nobody hears skips the observer path.
rejections_observed = False
_lock = threading.Lock()
_already_logged: set[tuple[int, str]] = set()


def _after_fork_in_child() -> None:
    global _lock, live_breakers
    _lock = threading.Lock()
    # A WeakSet being iterated at fork stays "iterating" in the child forever
    # (removals would pile up); a copy starts clean.
    live_breakers = weakref.WeakSet(list(live_breakers))


# Handlers whose locks the forking thread holds across a fork (see below).
_held_handlers: list[logging.Handler] = []


def _hold_log_handlers() -> None:
    """Before a fork: take the lock of every handler that otel-cb's records reach.

    A handler writes under its lock, and the stream behind it (a buffered file)
    has a lock of its own that Python does not renew in the child. A parent
    thread logging a transition at the fork would leave that stream lock taken
    forever in the child, whose first log line then hangs. Holding the handler
    locks while forking means no such write is under way; a handler that stays
    busy longer than a moment is skipped, so a fork never waits on us.
    """
    handlers: dict[int, logging.Handler] = {}
    manager = logging.Logger.manager
    loggers = [logger, *(item for name, item in list(manager.loggerDict.items())
                         if name.startswith("otel_cb.") and isinstance(item, logging.Logger))]
    for current in loggers:
        node: logging.Logger | None = current
        while node is not None:
            for handler in node.handlers:
                handlers[id(handler)] = handler
            node = node.parent if node.propagate else None
    if logging.lastResort is not None:
        handlers[id(logging.lastResort)] = logging.lastResort
    for handler in handlers.values():
        lock = handler.lock
        if lock is not None and lock.acquire(timeout=0.05):
            _held_handlers.append(handler)


def _release_log_handlers() -> None:
    held = list(_held_handlers)
    _held_handlers.clear()
    for handler in held:
        if handler.lock is not None:
            handler.lock.release()


def _forget_log_handlers() -> None:
    # logging renews every handler's lock in the child by itself (its own fork hook runs before ours).
    _held_handlers.clear()


os.register_at_fork(before=_hold_log_handlers, after_in_parent=_release_log_handlers,
                    after_in_child=_forget_log_handlers)
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
    global _hooks, rejections_observed
    found: dict[str, list[tuple[Any, Callable[..., Any]]]] = {}
    for observer in observers:
        for hook in _HOOKS:
            method = getattr(observer, hook, None)
            if method is not None:
                found.setdefault(hook, []).append((observer, method))
    _hooks = {hook: tuple(methods) for hook, methods in found.items()}
    rejections_observed = "call_rejected" in _hooks


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
