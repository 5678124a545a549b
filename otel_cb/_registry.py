"""`CircuitBreakerRegistry`: breakers by name, so one name always means one breaker.

Every registry's lock is renewed in a forked child (``os.register_at_fork``):
a parent thread holding it at the fork cannot block the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator

from ._breaker import CircuitBreaker
from ._config import CircuitBreakerConfig

__all__ = ["CircuitBreakerRegistry", "registry"]


class CircuitBreakerRegistry:
    """A thread-safe mapping of names to breakers.

    Args:
        clock: Clock handed to every breaker this registry creates (None:
            ``time.monotonic``).
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        # Reentrant: a new breaker tells the observers while this lock is held,
        # and an observer may well look at the registry.
        self._lock = threading.RLock()
        self._breakers: dict[str, CircuitBreaker] = {}
        # Told after a breaker leaves: routing memoises breakers by destination
        # (``_plugins.activate`` watches the registry it routes into).
        self._on_removal: Callable[[], None] | None = None
        _live_registries.add(self)

    def get_or_create(self, name: str, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        """Return the breaker called ``name``, creating it with ``config`` if new.

        Raises:
            ValueError: if the breaker exists with a different config than the
                one given: one name never silently means two settings.
        """
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, config, clock=self._clock)
                self._breakers[name] = breaker
            elif config is not None and config != breaker.config:
                raise ValueError(
                    f"name: circuit breaker {name!r} already exists with a different config; "
                    "remove() it first or pass config=None to share it"
                )
            return breaker

    def add(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Register a breaker made by hand.

        Raises:
            ValueError: if another breaker already has its name.
        """
        with self._lock:
            existing = self._breakers.get(breaker.name)
            if existing is not None and existing is not breaker:
                raise ValueError(f"name: a circuit breaker called {breaker.name!r} is already registered")
            self._breakers[breaker.name] = breaker
            return breaker

    def get(self, name: str) -> CircuitBreaker | None:
        """Return the breaker called ``name``, or None."""
        return self._breakers.get(name)

    def remove(self, name: str) -> CircuitBreaker | None:
        """Forget the breaker called ``name`` and return it (None if unknown).

        While instrumented, calls that routing sent to it make or find the
        breaker of that name afresh from their next call on.
        """
        with self._lock:
            breaker = self._breakers.pop(name, None)
        if breaker is not None:
            self._removed()
        return breaker

    def clear(self) -> None:
        """Forget every breaker (for tests and ``uninstrument()``)."""
        with self._lock:
            self._breakers.clear()
        self._removed()

    def _removed(self) -> None:
        on_removal = self._on_removal
        if on_removal is not None:
            on_removal()

    def __iter__(self) -> Iterator[CircuitBreaker]:
        with self._lock:
            return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers


_live_registries: weakref.WeakSet[CircuitBreakerRegistry] = weakref.WeakSet()


def _renew_locks_in_child() -> None:
    for live in list(_live_registries):
        live._lock = threading.RLock()


os.register_at_fork(after_in_child=_renew_locks_in_child)

registry = CircuitBreakerRegistry()
"""The process-wide registry that the instrumentation and plugins use."""
