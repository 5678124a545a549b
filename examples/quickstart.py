"""A breaker tripping on a failing dependency and recovering, in a few lines."""

from __future__ import annotations

import time

from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError

healthy = False


def dependency() -> str:
    if not healthy:
        raise ConnectionError("dependency down")
    return "ok"


breaker = CircuitBreaker("dependency", CircuitBreakerConfig(failure_threshold=3, open_timeout=0.2, success_threshold=1))
breaker.add_listener(lambda event: print(f"  {event.previous_state} -> {event.state} ({event.reason})"))

for attempt in range(6):
    try:
        breaker.call(dependency)
    except ConnectionError:
        print(f"call {attempt}: failed")
    except CircuitOpenError as exc:
        print(f"call {attempt}: rejected, retry after {exc.retry_after:.2f}s")

healthy = True
time.sleep(0.25)
print(f"probe: {breaker.call(dependency)}; breaker is {breaker.state}")
