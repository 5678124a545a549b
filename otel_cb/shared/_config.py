"""The ``shared_state:`` configuration section: validation, and one backend per setting.

``from_config`` is the door the configuration-file loader uses; it hands out
one ``RedisSharedState`` per distinct setting, so every breaker configured
with the same Redis and namespace shares one connection pool and one pair of
threads. Errors name the field, the value (credentials masked by
``otel_cb._redact``) and what is allowed, every problem of a section at once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._config import parse_duration
from .._problems import Problems, unknown_key
from .._redact import shown

if TYPE_CHECKING:
    from ._redis import RedisSharedState

__all__ = ["check_settings", "from_config", "validate_settings", "FIELDS"]

FIELDS = ("backend", "url", "namespace", "timeout", "flush_interval", "sync_interval", "probe_lease",
          "retry_interval", "cluster")
_DURATIONS = FIELDS[3:8]
_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
_MAX_DURATION = 3600.0
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_instances: dict[tuple[Any, ...], RedisSharedState] = {}
_instances_lock = threading.Lock()


def from_config(mapping: Mapping[str, Any]) -> RedisSharedState:
    """Validate a ``shared_state:`` section and return the backend for it.

    The section is ``{backend: redis, url: redis://host:6379/0, namespace: name}``
    plus, optionally, ``timeout``, ``flush_interval``, ``sync_interval``,
    ``probe_lease`` and ``retry_interval`` (seconds, or strings such as
    ``"50ms"``). Equal sections return the same ``RedisSharedState``; call
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
            from ._redis import RedisSharedState

            instance = _instances[key] = RedisSharedState(url, namespace=namespace, client=None, cluster=cluster,
                                                          **durations)
        return instance


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
