"""Integrations of otel-cb with client libraries: ``httpx``, ``grpc``, ``asyncpg``.

Each integration is a module of this package and a plugin of the ``otel_cb``
entry-point group; its docstring is its user guide. Importing this package
imports no client library: import the integration you use, e.g.
``from otel_cb.integrations.httpx import CircuitBreakerTransport``.
"""

from __future__ import annotations

__all__: list[str] = []
