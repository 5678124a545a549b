"""The hook specifications of otel-cb: every hook a plugin may implement.

Each spec is an empty, typed function whose docstring is the contract: when
otel-cb calls it and how the return value is used. For ``firstresult`` hooks
the first non-None result wins and the remaining implementations are not
called. Hooks are called with keyword arguments, so an implementation may
accept any subset of a spec's parameters.

A hook implementation that raises ``Exception`` is logged once (with its
plugin's name) and treated as if it returned None; the other plugins and the
application carry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .plugin import hookspec

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._registry import CircuitBreakerRegistry
    from ._state import StateChangeEvent
    from .plugin import Call, Patch, Verdict

__all__ = [
    "otel_cb_breaker_defaults",
    "otel_cb_classify",
    "otel_cb_configure",
    "otel_cb_fallback",
    "otel_cb_patches",
    "otel_cb_register_breakers",
    "otel_cb_select_breaker",
    "otel_cb_state_change",
]

# -- set-up ---------------------------------------------------------------------


@hookspec
def otel_cb_breaker_defaults() -> Mapping[str, Mapping[str, Any]]:
    """Called once per ``instrument()``, before the config is validated: a plugin's own breaker settings.

    Lets a plugin ship settings for the breakers it owns, which users can
    still override: each returned section is laid under the user's section of
    the same name (a key the user sets wins), and over ``defaults``. Sections
    that do not validate are logged once with the plugin's name and dropped;
    the user's config is then used as written.

    Returns:
        Config sections by breaker name, in the config file's format (core
        fields, ``preset``, integration keys such as ``fallback``).
    """
    raise NotImplementedError  # pragma: no cover - a spec is never called


@hookspec
def otel_cb_configure(config: Mapping[str, Any]) -> None:
    """Called once per ``instrument()``, after the config is loaded and validated.

    Runs before any breaker is registered and before any patch is applied.

    Args:
        config: The whole validated configuration as plain data (read-only),
            e.g. ``config["circuit_breakers"]["payments"]``.
    """


@hookspec
def otel_cb_register_breakers(registry: CircuitBreakerRegistry, config: Mapping[str, Any]) -> None:
    """Called once per ``instrument()`` to create named breakers.

    The breakers of the config file's sections are already in ``registry``
    when this runs. Use ``registry.get_or_create(name, config)`` or
    ``registry.add(breaker)``.

    Args:
        registry: The process-wide registry (``otel_cb.registry``).
        config: The whole validated configuration as plain data.
    """


@hookspec
def otel_cb_patches() -> list[Patch]:
    """Called once per ``instrument()``: the wrapt patches this plugin wants applied.

    Returns:
        A list of :class:`otel_cb.plugin.Patch`. The engine applies each when
        its module is imported (at once if it already is), and removes
        exactly its own wrapper on ``uninstrument()``. Patches whose
        ``integration`` is disabled are skipped.
    """
    raise NotImplementedError  # pragma: no cover - a spec is never called


# -- per call -------------------------------------------------------------------


@hookspec(firstresult=True)
def otel_cb_select_breaker(call: Call) -> str | None:
    """Called the first time a ``(kind, target, service, method)`` is seen: which breaker protects it.

    The answer is memoised until the next ``instrument()`` / ``uninstrument()``,
    so decide from those four fields only. The built-in router (the config's
    ``match:`` rules, then one automatic breaker per destination) is a
    ``trylast`` implementation, so any plugin answering first overrides it.

    Returns:
        A breaker name (an unknown name gets a breaker with the config's
        defaults), or None to let the next implementation decide. When no
        implementation answers, the call is not protected.
    """


@hookspec(firstresult=True)
def otel_cb_classify(call: Call, result: object, exception: BaseException | None) -> Verdict | None:
    """Called after every protected call: does its outcome count against the breaker?

    Args:
        call: The call.
        result: What the call returned (None when it raised).
        exception: What the call raised, or None.

    Returns:
        ``"success"``, ``"failure"`` or ``"ignored"`` (counts as neither), or
        None to let the integration's own rules decide (for HTTP, the
        ``failure_statuses`` setting; for gRPC, ``failure_codes``).
    """


@hookspec(firstresult=True)
def otel_cb_fallback(call: Call, error: BaseException) -> object | None:
    """Called when a protected call is rejected by an open breaker or fails.

    Args:
        call: The call.
        error: ``otel_cb.CircuitOpenError`` for a rejection, else the
            exception the call raised.

    Returns:
        A value that the integration returns instead of raising (it must be
        what the client would return, e.g. an ``httpx.Response``), or None
        to let the error propagate.
    """


# -- observation ----------------------------------------------------------------


@hookspec
def otel_cb_state_change(breaker: CircuitBreaker, event: StateChangeEvent) -> None:
    """Called on every state transition of every breaker, while instrumented.

    It runs on the thread that caused the transition, so keep it short and
    never block.

    Args:
        breaker: The breaker.
        event: The transition.
    """
