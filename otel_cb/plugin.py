"""The plugin API and integration kit of otel-cb: what third-party plugins and our own integrations use alike.

Plugins are pluggy plugins of project ``otel_cb``, discovered from the
``otel_cb`` entry-point group (the shipped httpx, grpc and asyncpg integrations
are plugins too). A plugin implements hooks from :mod:`otel_cb.hookspecs`::

    from otel_cb.plugin import Call, hookimpl

    @hookimpl
    def otel_cb_select_breaker(call: Call) -> str | None:
        return "payments" if call.target == "https://pay.internal:443" else None

An integration protects a client with these names only (never a private
module of otel-cb; a test enforces it for ours):

- describe each outgoing call as a :class:`Call`; ``select_breaker(call)``
  says which breaker protects it (None: let it through untouched);
- ``breaker.acquire()`` admits it (or raises ``CircuitOpenError``), and
  ``annotate_span(breaker, permit.state)`` names the breaker on the client span;
- ``classify(call, result, exception)`` asks the ``otel_cb_classify`` hooks,
  ``classify_exception(call, breaker, exc, rule)`` judges a raised exception
  in the one order all integrations share, and
  ``permit.record(verdict, retry_after=...)`` records any :data:`Verdict`;
- ``serve_fallback(call, breaker, error, accept)`` serves and counts what
  the ``otel_cb_fallback`` hooks answer (a :class:`Refusal` counts as
  ``refused``); ``breaker.count_fallback(outcome)`` counts a fallback of the
  integration's own;
- ``section_settings(breaker, parse, default)`` gives the integration's
  parsed view of a breaker's config section, and the ``otel_cb_config_keys``
  hook declares and validates those keys;
- ``destination_name(call)`` is the automatic breaker name of a call's
  destination; ``parse_duration(field, value)`` reads ``"5m"``-style settings
  and ``parse_items(field, value, parse_item, allowed)`` list settings;
- ``attach_default_health_check(breaker, make)`` gives a breaker the
  integration's own health check the first time a call is routed to it,
  unless it has one (the user's check always wins);
- ``routing_epoch()`` changes whenever routing's memo is forgotten (a new
  config, ``uninstrument()``, the pytest plugin's reset): an integration's
  own memo of routes keeps it and re-routes when it changes, and
  ``RouteMemo`` is that memo, written once: routes by a key the integration
  reads off the client's objects, so a repeat call builds no ``Call``;
  ``listening(hook)`` says whether a ``Call`` would be read by any
  ``otel_cb_classify`` / ``otel_cb_fallback`` hook;
- ``log_once(key, message, ...)`` reports a contained fault once;
  ``breaker.shared_state`` is the breaker's shared-state backend, if any.

Every helper is contained: a hook that raises or answers outside its
contract is logged once with its plugin's name and treated as if it returned
None, and every helper answers "nothing" (None / ``{}``) while otel-cb is not
instrumented, so an integration can call them unconditionally.

This module imports pluggy; ``import otel_cb`` does not import it (only
``otel_cb.hookimpl``, resolved lazily, does).
"""

from __future__ import annotations

from ._call import Call, CallKind, Patch, Refusal, SectionValidator, Wrapper
from ._config import parse_duration
from ._kit import (
    ExceptionRule,
    RouteMemo,
    annotate_span,
    attach_default_health_check,
    classify_exception,
    listening,
    parse_items,
    routing_epoch,
    section_settings,
    serve_fallback,
)
from ._markers import PROJECT, hookimpl, hookspec
from ._plugins import breaker_settings, classify, fallback, log_once, select_breaker
from ._routing import destination_name
from ._state import FallbackOutcome, Verdict

__all__ = [
    "PROJECT",
    "Call",
    "CallKind",
    "ExceptionRule",
    "FallbackOutcome",
    "Patch",
    "Refusal",
    "RouteMemo",
    "SectionValidator",
    "Verdict",
    "Wrapper",
    "annotate_span",
    "attach_default_health_check",
    "breaker_settings",
    "classify",
    "classify_exception",
    "destination_name",
    "fallback",
    "hookimpl",
    "hookspec",
    "listening",
    "log_once",
    "parse_duration",
    "parse_items",
    "routing_epoch",
    "section_settings",
    "select_breaker",
    "serve_fallback",
]
