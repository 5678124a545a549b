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

from ._markers import hookspec

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._call import Call, Patch, SectionValidator
    from ._registry import CircuitBreakerRegistry
    from ._state import StateChangeEvent, Verdict

__all__ = [
    "otel_cb_breaker_defaults",
    "otel_cb_classify",
    "otel_cb_config_keys",
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
def otel_cb_config_keys() -> Mapping[str, SectionValidator]:
    """Called whenever a config is validated (``otel-cb config check``, ``instrument()``): this plugin's own keys.

    Declares the keys a plugin reads from breaker sections (through
    ``otel_cb.plugin.breaker_settings`` or ``section_settings``) and how to
    check them. A key no plugin declares is an unknown setting, an error. For
    each section that has one of the keys, otel-cb calls its validator with
    the breaker's name and a mapping holding that key alone, so every bad
    key of a section is reported. The validator must not import the client
    library (the config is checked where it may not be installed) and must
    accept exactly what the plugin accepts at run time.

    Every plugin of the entry-point group is asked, disabled ones too, so a
    config stays valid whichever integrations are disabled. Plugin objects
    passed to ``instrument(plugins=...)`` are not asked: the config is
    validated before they are registered.

    Returns:
        Validators by key, e.g. ``{"failure_codes": validate_settings}``. A
        validator raises ``ValueError`` whose message starts with the field
        (``"fallback.ttl: '0s' is not allowed; use a positive duration"``);
        any other exception is reported as a problem of that key too.
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
        ``failure_statuses`` setting; for gRPC, ``failure_codes``). Any other
        answer (``"ignore"``, ``["failure"]``) is logged once with the
        plugin's name and counts as None.
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
        what the client would return, e.g. an ``httpx.Response``), counted as
        a ``success`` fallback; ``otel_cb.plugin.Refusal(value)`` to serve
        ``value`` but count a ``refused`` fallback (a fail-closed answer); or
        None to let the error propagate.
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
