"""The ``db`` plugin: the incident database (PostgreSQL) behind ``database_pool``.

Routing: every asyncpg call to the database of ``DATABASE_URL``
(``host:port/dbname``, credentials dropped; read when a destination is first
seen), or the ``match: {db: [...]}`` rules of the ``database_pool`` section.

Settings: the ``database`` preset (10 consecutive failures, 3 probe
successes, 10 s open, 5 probes, 20 minimum calls). While open, no query is
sent and no connection is taken from the pool. Health check: the asyncpg
integration's default, ``SELECT 1`` on a fresh connection to the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_cb.plugin import Call, hookimpl

from ._routing import env_db_target

__all__ = ["BREAKER", "DEFAULTS", "otel_cb_breaker_defaults", "otel_cb_select_breaker"]

BREAKER = "database_pool"
DEFAULTS: Mapping[str, Any] = {"preset": "database"}


@hookimpl
def otel_cb_breaker_defaults() -> Mapping[str, Mapping[str, Any]]:
    return {BREAKER: DEFAULTS}


@hookimpl
def otel_cb_select_breaker(call: Call) -> str | None:
    if call.kind == "db" and call.target == env_db_target("DATABASE_URL"):
        return BREAKER
    return None
