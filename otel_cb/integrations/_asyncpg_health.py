"""The asyncpg integration's default health check: ``SELECT 1`` on a fresh connection.

When the asyncpg integration first routes a connect (``asyncpg.connect``, a
pool starting, ``ResilientPool.create``) to a breaker without a health check,
it attaches one that opens a new connection with the same DSN and connect
arguments, runs ``SELECT 1``, and closes it, all within the breaker's
``health_check_timeout``. The connection does not come from the
application's pool and does not go through our patches (so it is neither a
user call nor refused while the breaker is open). Connect arguments are kept
in the check only, never logged or shown.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..plugin import attach_default_health_check

if TYPE_CHECKING:
    from .. import CircuitBreaker

__all__ = ["connect_arguments", "offer_health_check", "select_one"]


def connect_arguments(instance: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
                      ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The connect arguments of a patched ``connect`` (``instance`` None) or of a starting pool."""
    if instance is None:
        return tuple(args), dict(kwargs)
    return tuple(instance._connect_args), dict(instance._connect_kwargs)


def offer_health_check(breaker: CircuitBreaker, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Give ``breaker`` a ``SELECT 1`` check connecting with ``args``/``kwargs``, unless it has a check."""
    attach_default_health_check(breaker, lambda: select_one(args, dict(kwargs), breaker.config.health_check_timeout))


def select_one(args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Callable[[], Awaitable[bool]]:
    """A coroutine check: connect fresh (unpatched), ``SELECT 1``, close; True when it answered 1."""
    connect_kwargs = {**kwargs, "timeout": timeout}

    async def check() -> bool:
        import asyncpg
        import asyncpg.connection

        connect: Any = inspect.unwrap(asyncpg.connection.connect)
        fetchval: Any = inspect.unwrap(asyncpg.connection.Connection.fetchval)
        connection = await connect(*args, **connect_kwargs)
        try:
            answer = await fetchval(connection, "SELECT 1", timeout=timeout)
        except BaseException:
            connection.terminate()  # never wait on a sick server to say goodbye
            raise
        await connection.close(timeout=timeout)
        return bool(answer == 1)

    return check
