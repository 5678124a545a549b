"""The plugin API of otel-cb: hook markers, call and patch descriptions, runtime helpers.

Plugins are pluggy plugins of project ``otel_cb``, discovered from the
``otel_cb`` entry-point group (the shipped httpx, grpc and asyncpg integrations
are plugins too). A plugin implements hooks from :mod:`otel_cb.hookspecs`::

    from otel_cb.plugin import Call, hookimpl

    @hookimpl
    def otel_cb_select_breaker(call: Call) -> str | None:
        return "payments" if call.target == "https://pay.internal:443" else None

Integrations describe each outgoing call as a :class:`Call` and ask the
runtime helpers below which breaker protects it, how to classify its outcome
and what fallback serves it. Every helper is contained: a hook that raises is
logged once with its plugin's name and treated as if it returned None, and
every helper answers "nothing" (None / ``{}``) while otel-cb is not
instrumented, so an integration can call them unconditionally.

This module imports pluggy; ``import otel_cb`` does not import it (only
``otel_cb.hookimpl``, resolved lazily, does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

from ._plugins import breaker_settings, classify, fallback, select_breaker
from ._state import Verdict

__all__ = [
    "PROJECT",
    "Call",
    "CallKind",
    "Patch",
    "Verdict",
    "breaker_settings",
    "classify",
    "fallback",
    "hookimpl",
    "hookspec",
    "select_breaker",
]

PROJECT = "otel_cb"
"""The pluggy project name, which is also the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks a hook specification (used by :mod:`otel_cb.hookspecs`)."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a hook implementation in a plugin; also available as ``otel_cb.hookimpl``."""

CallKind = Literal["http", "grpc", "db"]


@dataclass(frozen=True, slots=True)
class Call:
    """One outgoing call, as routing, classification and fallback hooks see it.

    Routing is memoised per ``(kind, target, service, method)``: an
    ``otel_cb_select_breaker`` hook must decide from those four fields only.

    Attributes:
        kind: ``"http"``, ``"grpc"`` or ``"db"``.
        target: Where the call goes, never with credentials, path or query:
            HTTP ``"scheme://host:port"``, gRPC the channel target
            ``"host:port"``, database ``"host:port/dbname"``.
        method: HTTP ``"GET"``; gRPC ``"/pkg.Service/Method"``; database
            ``"fetch"``, ``"execute"``, ``"connect"``, ``"acquire"``...
        service: gRPC ``"pkg.Service"``; empty otherwise.
        url: HTTP only: the URL without userinfo, for routing decisions and
            fallbacks. It may hold a path and a query, so it never goes into
            breaker names, span attributes, metric labels or logs.
        request: The client's own request object when there is one
            (``httpx.Request``, a gRPC request message), else None.
    """

    kind: CallKind
    target: str
    method: str = ""
    service: str = ""
    url: str = ""
    request: object = None


Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Patch:
    """One wrapt patch that the engine applies when ``module`` is imported (or at once).

    Attributes:
        module: The module to patch, e.g. ``"httpx"``.
        target: Dotted path inside the module, e.g. ``"HTTPTransport.handle_request"``.
        wrapper: A wrapt wrapper, ``wrapper(wrapped, instance, args, kwargs)``.
            It must call ``wrapped(*args, **kwargs)`` for every call it does
            not protect, so an unprotected call behaves exactly as without it.
        integration: The integration or plugin name that ``--disable`` and
            ``OTEL_CB_DISABLED`` use, e.g. ``"httpx"``.
    """

    module: str
    target: str
    wrapper: Wrapper
    integration: str
