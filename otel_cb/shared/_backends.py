"""One shared-state backend per ``shared_state:`` setting: the door the configuration-file loader uses.

``from_config`` hands out one ``RedisSharedState`` per distinct setting, so
every breaker configured with the same Redis and namespace shares one
connection pool and one pair of threads. Validation is ``_config``'s; this
module only builds (importing ``_redis``, never the other way round).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from ._config import _parse
from ._redis import RedisSharedState

__all__ = ["from_config"]

_instances: dict[tuple[Any, ...], RedisSharedState] = {}
_instances_lock = threading.Lock()


def from_config(mapping: Mapping[str, Any]) -> RedisSharedState:
    """Validate a ``shared_state:`` section and return the backend for it.

    The section is ``{backend: redis, url: redis://host:6379/0, namespace: name}``
    plus, optionally, ``timeout``, ``flush_interval``, ``sync_interval``,
    ``probe_lease`` and ``retry_interval`` (seconds, or strings such as
    ``"50ms"``), and ``cluster`` (true: a Redis Cluster). Equal sections return the same ``RedisSharedState``; call
    ``attach(breaker)`` on it for each breaker the section applies to.

    Raises:
        ValueError: naming the field, the value and what is allowed.
    """
    url, namespace, durations = _parse(mapping)
    cluster = bool(mapping.get("cluster", False))
    key = (url, namespace, cluster, *sorted(durations.items()))
    with _instances_lock:
        instance = _instances.get(key)
        if instance is None or instance._closed:
            instance = _instances[key] = RedisSharedState(url, namespace=namespace, client=None, cluster=cluster,
                                                          **durations)
        return instance


def _after_fork_in_child() -> None:
    global _instances_lock
    _instances_lock = threading.Lock()  # a thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)
