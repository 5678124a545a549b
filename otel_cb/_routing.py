"""The built-in router: which breaker protects an outgoing call.

A ``trylast`` implementation of ``otel_cb_select_breaker``, so any plugin that
answers first overrides it. For a call it tries, in order:

1. the config's ``match:`` rules, section by section in file order;
2. an automatic breaker per destination (HTTP ``scheme://host:port``, gRPC
   ``grpc://<channel target>``, database ``db://host:port/dbname``), while
   fewer than ``auto_breakers.max`` exist;
3. past that cap, the one shared ``otel_cb.overflow`` breaker (a warning is
   logged once).

Automatic names are built from the destination only, after removing any
credentials, path and query, so they are safe as span attributes and metric
labels. A call that names no destination (an HTTP target without a host or
with port 0, an empty gRPC or database target) gets no automatic breaker:
the client will refuse it itself, and a breaker named ``://:0`` would only
collect noise. Integrations should not route such calls at all. The answer
is memoised per call shape by ``_plugins``, so this runs once per distinct
destination and method.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
from typing import TYPE_CHECKING

from ._markers import hookimpl

if TYPE_CHECKING:
    from ._call import Call
    from ._settings import Settings

__all__ = ["OVERFLOW_BREAKER", "Router", "destination_name"]

logger = logging.getLogger("otel_cb")

OVERFLOW_BREAKER = "otel_cb.overflow"
_MAX_NAME = 200
_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?:[^/?#@]*@)?(?P<hostport>[^/?#]*)")


class _Pattern:
    __slots__ = ("text", "regex")

    def __init__(self, text: str) -> None:
        self.text = text
        self.regex = re.compile(fnmatch.translate(text)) if "*" in text else None

    def matches(self, value: str) -> bool:
        if not value:
            return False
        if self.regex is None:
            return value == self.text
        return self.regex.match(value) is not None


def destination_name(call: Call) -> str:
    """Return the automatic breaker name of ``call``'s destination: never credentials, path or query."""
    target = call.target.strip()
    if call.kind == "http":
        m = _URL.match(target)
        name = f"{m['scheme'].lower()}://{m['hostport'].lower()}" if m else _strip(target)
    elif call.kind == "grpc":
        name = f"grpc://{_strip(target)}"
    else:
        name = f"db://{_strip(target)}"
    return name[:_MAX_NAME]


def _has_destination(call: Call) -> bool:
    """False for a target no client can send to: no host, or port 0."""
    target = call.target.strip()
    if call.kind == "http":
        m = _URL.match(target)
        hostport = m["hostport"] if m else ""
        return bool(hostport) and not hostport.startswith(":") and not hostport.endswith(":0")
    return bool(target) and not target.startswith(":")


def _strip(target: str) -> str:
    # Defensive: an integration should already pass host:port forms, but a
    # target with userinfo or a query must not leak into a name.
    target = target.partition("?")[0].partition("#")[0]
    if "://" in target:
        scheme, _, rest = target.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    return target.rpartition("@")[2]


class Router:
    """Routes calls by the config's ``match:`` rules, then to automatic breakers.

    Args:
        settings: The validated configuration.
    """

    def __init__(self, settings: Settings) -> None:
        self._rules: dict[str, list[tuple[_Pattern, str]]] = {"http": [], "grpc": [], "db": []}
        for section in settings.breakers:
            for kind, patterns in section.match.items():
                self._rules[kind].extend((_Pattern(p), section.name) for p in patterns)
        self._auto_enabled = settings.auto_enabled
        self._auto_max = settings.auto_max
        self._auto: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    @hookimpl(trylast=True)
    def otel_cb_select_breaker(self, call: Call) -> str | None:
        """Name the breaker for ``call``: a matching rule's, else an automatic one."""
        rules = self._rules.get(call.kind, ())
        if rules:
            values = (call.target.lower(), call.service, call.method) if call.kind == "grpc" else (call.target.lower(),)
            for pattern, name in rules:
                if any(pattern.matches(value) for value in values):
                    return name
        if not self._auto_enabled or not _has_destination(call):
            return None
        name = destination_name(call)
        with self._lock:
            if name in self._auto:
                return name
            if len(self._auto) < self._auto_max:
                self._auto.add(name)
                return name
            warn, self._warned = not self._warned, True
        if warn:
            logger.warning("otel-cb: more than %d destinations (auto_breakers.max); calls to new destinations "
                           "share the breaker %r", self._auto_max, OVERFLOW_BREAKER)
        return OVERFLOW_BREAKER
