"""Shared breaker state across processes and hosts, on Redis.

Usage::

    from otel_cb import CircuitBreaker
    from otel_cb.shared import RedisSharedState

    shared = RedisSharedState("redis://127.0.0.1:6379/0", namespace="checkout")
    payments = shared.attach(CircuitBreaker("payments"))

or, in a configuration file, per breaker or under ``circuit_breakers.defaults``::

    shared_state: {backend: redis, url: "redis://127.0.0.1:6379/0", namespace: checkout}

which the configuration loader checks with ``validate_settings(name, section)``
(no connection made) and turns into ``from_config(section).attach(breaker)``.

Semantics: every process that attaches a breaker with the same name to the
same Redis and namespace sees one state. A trip in one process (any rule)
opens the breaker everywhere, through pub/sub, and a versioned state read
every ``sync_interval`` catches a lost message. Closed-state outcomes are
batched in the background and counted fleet-wide in time buckets (or the
last N calls) by an atomic script, which applies the failure-rate and
slow-call-rate rules to the fleet's window; consecutive failures stay a
per-process rule. Half-open probes are limited to ``half_open_max_calls``
across the fleet by leases that expire after ``probe_lease``. Every timing
decision uses the Redis server's clock. ``force_open()`` and ``disable()``
stay local to one process; leaving them rejoins the fleet's state.
``reset()`` of an open breaker closes it fleet-wide.

Cost: no Redis round trip on the call path while closed or open; one,
bounded by ``timeout``, to take a probe lease while half-open.

Faults: Redis down, slow or flushed never raises into a call. The breakers
fall back to their local state with one warning per outage, and resynchronise
when Redis answers again. ``running_locally(breaker)`` (and
``RedisSharedState.running_locally``) tells which breakers run on local
state; observers get ``shared_state_changed(breaker, running_locally)``.

Importing this module does not import redis; constructing a backend does.
"""

from __future__ import annotations

from ._backends import from_config
from ._config import validate_settings
from ._redis import RedisSharedState, running_locally

__all__ = ["RedisSharedState", "from_config", "running_locally", "validate_settings"]
