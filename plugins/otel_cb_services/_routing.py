"""Destinations of the services, read from their environment variables when routing asks.

Read lazily (routing asks once per destination) so that a process may set
the variables after otel-cb was instrumented, as the demo does.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

__all__ = ["env_db_target", "env_http_origin", "env_target", "http_origin"]


def http_origin(url: str) -> str:
    """``scheme://host:port`` of a URL: the HTTP destination breakers are routed by."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def env_http_origin(variable: str) -> str | None:
    """``scheme://host:port`` of the URL in ``variable``, or None when unset."""
    url = os.environ.get(variable)
    return http_origin(url) if url else None


def env_target(variable: str) -> str | None:
    """The gRPC ``host:port`` in ``variable``, or None when unset."""
    return os.environ.get(variable) or None


def env_db_target(variable: str) -> str | None:
    """``host:port/dbname`` of the DSN in ``variable``, or None when unset."""
    dsn = os.environ.get(variable)
    if not dsn:
        return None
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or 'postgres'}"
