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

Operators act on the whole fleet with ``fleet_action(breaker, "force_open")``
(or ``"disable"``, ``"reset"``; the admin endpoint's ``{"fleet": true}``):
one round trip stores the manual state on Redis and publishes it, every
process of the namespace enters it within a message's delivery, and a
process that starts later adopts it. Each process records the transition with
the operator's reason (``force_open``, ``disable``, ``reset``). A fleet-wide
manual state lasts until a fleet-wide reset; a per-process ``reset()`` of it
is undone at the next read. A fleet-wide reset resets every process, also
those in a per-process manual state.

Redis Cluster: ``shared_state: {url: "redis+cluster://host:port"}`` (or
``cluster: true``, or ``RedisSharedState(url, cluster=True)``) talks to a
cluster through any one of its nodes; each breaker's keys share one hash
tag, so its scripts stay atomic on one node, and a failover is an outage of
the affected breakers until the client has learnt the new primary.

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

from typing import Literal

from .._breaker import CircuitBreaker
from ._backends import from_config
from ._config import validate_settings
from ._redis import RedisSharedState, running_locally

__all__ = ["RedisSharedState", "fleet_action", "from_config", "running_locally", "validate_settings"]


def fleet_action(breaker: CircuitBreaker, action: Literal["force_open", "disable", "reset"]) -> None:
    """Force open, disable or reset ``breaker`` in every process sharing its state.

    Raises:
        ValueError: ``breaker`` has no shared state that acts fleet-wide, or
            ``action`` is not one of the three.
        ConnectionError: the shared store did not answer; nothing changed.
    """
    if action not in ("force_open", "disable", "reset"):
        raise ValueError(f"action: {str(action)[:30]!r} is not allowed; use force_open, disable or reset")
    act = getattr(breaker.shared_state, "fleet_action", None)
    if act is None:
        raise ValueError(f"circuit breaker {breaker.name!r} has no shared state; fleet-wide actions need one "
                         "(shared_state: on Redis)")
    act(action)
