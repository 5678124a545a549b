"""The ``shared_state:`` configuration section: its validation, without connecting or importing redis.

``_backends.from_config`` turns a validated section into a backend. Errors
name the field, the value (credentials masked by ``otel_cb._redact``) and what
is allowed, every problem of a section at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .._config import parse_duration
from .._problems import Problems, unknown_key
from .._redact import shown

__all__ = ["check_settings", "validate_settings", "FIELDS"]

FIELDS = ("backend", "url", "namespace", "timeout", "flush_interval", "sync_interval", "probe_lease",
          "retry_interval", "cluster")
_DURATIONS = FIELDS[3:8]
_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
_MAX_DURATION = 3600.0
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def validate_settings(name: str, section: Mapping[str, Any]) -> None:
    """Check the ``shared_state`` key of breaker ``name``'s config section, without
    connecting anywhere; the configuration loader calls this.

    Raises:
        ValueError: naming the field, the value and what is allowed.
    """
    if section.get("shared_state") is not None:
        _parse(section["shared_state"])


def _parse(mapping: object) -> tuple[str, str, dict[str, float]]:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"shared_state: {shown(mapping)} is not allowed; use a mapping with backend, url and "
                         "namespace")
    errors: list[ValueError] = []
    for key in mapping:
        if key not in FIELDS:
            label = key[:100] if isinstance(key, str) else shown(key)
            errors.append(ValueError(f"shared_state.{label}: {unknown_key(key, mapping[key], FIELDS, 'field')}"))
    backend = mapping.get("backend")
    if backend != "redis":
        errors.append(ValueError(f"shared_state.backend: {shown(backend)} is not allowed; use 'redis'"))
    if "url" not in mapping:
        errors.append(ValueError("shared_state.url: missing; use a redis://, rediss:// or unix:// URL"))
    url = mapping.get("url")
    namespace = mapping.get("namespace", "default")
    if not isinstance(mapping.get("cluster", False), bool):
        errors.append(ValueError(f"shared_state.cluster: {shown(mapping['cluster'])} is not allowed; "
                                 "use true or false"))
    durations: dict[str, float] = {}
    for name in _DURATIONS:
        if name in mapping:
            try:
                durations[name] = parse_duration(f"shared_state.{name}", mapping[name], maximum=_MAX_DURATION)
            except ValueError as exc:
                errors.append(exc)
    try:
        check_settings(url=url if "url" in mapping else "redis://", namespace=namespace, has_client=False,
                       **durations)
    except ValueError as exc:
        errors.append(exc)
    Problems.raise_if_any(errors)
    assert isinstance(url, str) and isinstance(namespace, str)
    return url, namespace, durations


def check_settings(*, url: object, namespace: object, has_client: bool, **durations: object) -> None:
    """Raise ``ValueError`` naming every bad setting of a ``RedisSharedState`` (``Problems`` for several)."""
    errors: list[ValueError] = []
    if not has_client:
        if not isinstance(url, str) or _scheme(url) not in _SCHEMES:
            errors.append(ValueError(f"shared_state.url: {shown(url)} is not allowed; "
                                     "use a redis://, rediss:// or unix:// URL"))
    elif url is not None:
        errors.append(ValueError(f"shared_state.url: {shown(url)} is not allowed together with client; pass one "
                                 "of them"))
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        errors.append(ValueError(f"shared_state.namespace: {shown(namespace)} is not allowed; use 1 to 100 letters, "
                                 "digits or any of '_.:-'"))
    for name, value in durations.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < _MAX_DURATION:
            errors.append(ValueError(f"shared_state.{name}: {shown(value)} is not allowed; use a duration above 0 "
                                     "and below 1h"))
    Problems.raise_if_any(errors)


def _scheme(url: str) -> str | None:
    """The URL's scheme, or None when it is not a URL ``redis`` could parse (``redis://[::1``)."""
    if len(url) > 2000:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return None
    return parts.scheme
