"""gRPC policy of the grpc integration, free of grpc itself.

Owns the per-breaker ``failure_codes`` setting (status code names, checked
and parsed without importing grpc, so ``otel-cb config check`` rejects
``failure_codes: [NOPE]`` where grpc is not installed), the default failure
codes, channel targets as breakers see them, and the server's
``grpc-retry-pushback-ms`` hint. :mod:`otel_cb.integrations.grpc` applies it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from ..plugin import parse_items

__all__ = [
    "DEFAULT_FAILURE_CODE_NAMES",
    "STATUS_CODE_NAMES",
    "clean_target",
    "parse_code_names",
    "pushback",
    "validate_settings",
]

STATUS_CODE_NAMES = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})
"""The names of ``grpc.StatusCode`` (the gRPC specification's status codes)."""

DEFAULT_FAILURE_CODE_NAMES = frozenset({
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "DATA_LOSS",
})
"""Status codes that count as failures unless a breaker's ``failure_codes`` says otherwise."""

_ALLOWED = f"a list of gRPC status code names ({', '.join(sorted(STATUS_CODE_NAMES))})"
_PUSHBACK = "grpc-retry-pushback-ms"


def parse_code_names(where: str, value: object) -> frozenset[str]:
    """Parse a ``failure_codes`` value: a list of status code names, or ``grpc.StatusCode`` members.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    return parse_items(where, value, _code_name, _ALLOWED)


def _code_name(item: object) -> tuple[str] | None:
    # A grpc.StatusCode member (hand-wired interceptors) is known by its name.
    name = item.strip().upper() if isinstance(item, str) else item.name if isinstance(item, enum.Enum) else None
    return (name,) if name in STATUS_CODE_NAMES else None


def validate_settings(name: str, section: Mapping[str, Any]) -> None:
    """Check the gRPC keys (``failure_codes``) of breaker ``name``'s config section, without importing grpc.

    Other keys are left alone.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    if section.get("failure_codes") is not None:
        parse_code_names(f"circuit_breakers.{name}.failure_codes", section["failure_codes"])


def clean_target(target: str | bytes) -> str:
    """A channel target as breakers and routing see it: no scheme, credentials, path or query.

    ``dns:///shield:50051`` and ``shield:50051`` are both ``shield:50051``;
    ``unix:`` targets are kept whole (the socket path is the destination).
    """
    text = target.decode("utf-8", "replace") if isinstance(target, bytes) else str(target)
    if text.startswith(("unix:", "unix-abstract:")):
        return text
    if "://" in text:
        text = text.split("://", 1)[1]
        authority, slash, rest = text.partition("/")
        text = rest if slash and rest else authority  # dns://resolver/host:port names host:port
    elif text.startswith(("dns:", "ipv4:", "ipv6:")):
        text = text.split(":", 1)[1]
    text = text.rpartition("@")[2]
    for separator in ("/", "?", "#"):
        text = text.split(separator, 1)[0]
    return text


def pushback(metadata: Any) -> float | None:
    """Seconds from a ``grpc-retry-pushback-ms`` trailer; None when absent or negative (no retry)."""
    try:
        for key, value in metadata or ():
            if key == _PUSHBACK:
                milliseconds = int(value)
                return milliseconds / 1000.0 if milliseconds >= 0 else None
    except (TypeError, ValueError):
        pass
    return None
