"""``instrument()`` / ``uninstrument()``: turn circuit breakers on and off for a whole process.

``instrument()`` loads and validates the config, loads the plugins, registers
the configured breakers, installs the router and the runtime helpers, and
applies every plugin's patches (now, or when their module is imported).
``uninstrument()`` undoes all of it: patches removed (only ours), helpers
answering None again, breakers created by ``instrument()`` removed from the
registry. Both are idempotent, and ``instrument()`` works again afterwards.

The bootstrap of ``otel-cb-instrument`` calls ``instrument()``; setting up
the OpenTelemetry SDK and its instrumentors is the bootstrap's job, not this
module's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._redact import shown
from ._registry import registry

if TYPE_CHECKING:
    import pluggy

    from ._breaker import CircuitBreaker
    from ._config import CircuitBreakerConfig
    from ._settings import Settings

__all__ = ["DISABLED_ENV", "disabled_from_env", "instrument", "uninstrument"]

logger = logging.getLogger("otel_cb")

DISABLED_ENV = "OTEL_CB_DISABLED"
ROUTER_NAME = "otel_cb.router"


@dataclass(slots=True)
class _Instrumentation:
    settings: Settings
    disabled: frozenset[str]
    extra: tuple[object, ...]
    created: list[str]
    shared: list[tuple[Any, Any]]  # (shared-state backend, breaker) pairs to detach


_lock = threading.RLock()
_current: _Instrumentation | None = None


def disabled_from_env() -> frozenset[str]:
    """Return the names in ``OTEL_CB_DISABLED`` (comma-separated, spaces ignored)."""
    return frozenset(n.strip() for n in os.environ.get(DISABLED_ENV, "").split(",") if n.strip())


def instrument(
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    disabled: Iterable[str] | None = None,
    plugins: Iterable[object] = (),
) -> None:
    """Protect every outgoing call the loaded plugins patch with circuit breakers.

    Calling it again with the same config does nothing; with a different
    config it re-instruments (routing is recomputed).

    Args:
        config: A config file path, a mapping of plain data, or None to search
            (``OTEL_CB_CONFIG``, ``./otel-cb.yaml``, ``[tool.otel-cb]`` in
            ``./pyproject.toml``, else defaults).
        disabled: Integration or plugin names to skip, as a list or a
            comma-separated string (None: ``OTEL_CB_DISABLED``).
        plugins: Plugin objects (modules or instances with ``@hookimpl``
            methods) to register besides those found through entry points;
            they are called before them.

    Raises:
        otel_cb.ConfigError: the config does not validate, or an argument is
            not of an allowed kind (nothing is changed).
    """
    from . import _settings

    settings = _settings.load(config)
    skip = disabled_from_env() if disabled is None else _names(disabled)
    if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
        raise _settings.ConfigError("<argument>", [_settings.Problem(
            "plugins", f"{shown(plugins)} is not allowed; use a list of plugin modules or objects")])
    extra = tuple(plugins)
    with _lock:
        current = _current
        if current is not None:
            if current.settings == settings and current.disabled == skip and current.extra == extra:
                return
            uninstrument()
        _install(settings, skip, extra)


def _names(disabled: object) -> frozenset[str]:
    """``disabled`` as names: a comma-separated string (as ``OTEL_CB_DISABLED``) or an iterable of strings."""
    from . import _settings

    if isinstance(disabled, str):
        return frozenset(n.strip() for n in disabled.split(",") if n.strip())
    if isinstance(disabled, Iterable) and not isinstance(disabled, (bytes, Mapping)):
        names = list(disabled)
        if all(isinstance(n, str) for n in names):
            return frozenset(names)
    raise _settings.ConfigError("<argument>", [_settings.Problem(
        "disabled", f"{shown(disabled)} is not allowed; use a list of integration or plugin names")])


def _install(settings: Settings, disabled: frozenset[str], extra: tuple[object, ...]) -> None:
    global _current
    from . import _patching, _plugins
    from ._routing import Router
    from .plugin import Patch

    manager = _plugins.new_manager()
    _plugins.discover(manager, disabled)
    for plugin in extra:
        _plugins.register(manager, plugin, getattr(plugin, "__name__", None) or type(plugin).__name__)
    # `state` keeps the user's settings, which instrument() compares a new call's with.
    state = _Instrumentation(settings, disabled, extra, [], [])
    settings = _with_plugin_defaults(manager, settings)
    manager.register(Router(settings), name=ROUTER_NAME)
    _plugins.call_hook(manager, "otel_cb_configure", config=settings.data)
    for section in settings.breakers:
        breaker = _register(section.name, section.config, state)
        if breaker is not None:
            _attach_shared(breaker, section.raw, state)
    _plugins.call_hook(manager, "otel_cb_register_breakers", registry=registry, config=settings.data)
    sections = {section.name: section.raw for section in settings.breakers}

    def prepare(breaker: CircuitBreaker) -> None:
        # Breakers that routing creates (automatic ones) follow `defaults`, shared_state included.
        _attach_shared(breaker, settings.default_section, state)

    _plugins.activate(_plugins.Active(manager, registry, settings.defaults, sections, settings.default_section,
                                      created=state.created, prepare=prepare))
    _current = state
    for plugin_name, patches in _plugins.call_hook(manager, "otel_cb_patches"):
        if not isinstance(patches, (list, tuple)):
            patches = [patches]
        for patch in patches:
            if not isinstance(patch, Patch):
                logger.warning("otel-cb: plugin %r returned %r from otel_cb_patches, not a Patch; skipped",
                               plugin_name, type(patch).__name__)
            elif patch.integration in disabled or plugin_name in disabled:
                logger.debug("otel-cb: %s.%s not patched: %r is disabled", patch.module, patch.target,
                             patch.integration)
            else:
                _patching.apply(patch)


def _with_plugin_defaults(manager: pluggy.PluginManager, settings: Settings) -> Settings:
    """Lay each plugin's ``otel_cb_breaker_defaults`` under the user's sections (contained per plugin)."""
    from . import _plugins, _settings

    data = settings.data
    for plugin_name, sections in _plugins.call_hook(manager, "otel_cb_breaker_defaults"):
        user = data.get("circuit_breakers") or {}
        try:
            merged = {**user, **{name: {**section, **(user.get(name) or {})} for name, section in sections.items()}}
            candidate = _settings.validate({**data, "circuit_breakers": merged}, source=settings.source)
        except (ValueError, AttributeError, TypeError) as exc:
            logger.warning("otel-cb: plugin %r: its breaker settings are not valid, ignored: %s", plugin_name, exc)
            continue
        data = candidate.data
        settings = candidate
    return settings


def _register(name: str, config: CircuitBreakerConfig, state: _Instrumentation) -> CircuitBreaker | None:
    existing = registry.get(name)
    if existing is not None:
        if existing.config != config:
            logger.warning("otel-cb: breaker %r already exists with other settings; keeping it, its config section "
                           "is ignored", name)
        return existing
    try:
        breaker = registry.get_or_create(name, config)
    except ValueError as exc:
        logger.warning("otel-cb: cannot create breaker %r: %s", name, exc)
        return None
    state.created.append(name)
    return breaker


def _attach_shared(breaker: CircuitBreaker, section: Mapping[str, Any], state: _Instrumentation) -> None:
    """Share ``breaker``'s state as its section's ``shared_state:`` says (contained: else it stays local)."""
    config = section.get("shared_state")
    if config is None:
        return
    try:
        from .shared import from_config

        backend = from_config(config)
        backend.attach(breaker)
    except Exception as exc:
        logger.warning("otel-cb: breaker %r: shared_state not attached, its state stays local (%s: %s)",
                       breaker.name, type(exc).__name__, exc)
        return
    state.shared.append((backend, breaker))


def uninstrument() -> None:
    """Undo ``instrument()``; does nothing when not instrumented.

    Removes our patches (never anyone else's wrapper), makes the runtime
    helpers answer None again, detaches shared state, and removes the breakers
    ``instrument()`` created from ``otel_cb.registry``.
    """
    global _current
    from . import _patching, _plugins

    with _lock:
        current = _current
        if current is None:
            return
        _patching.remove_all()
        active = _plugins.active()
        created = list(active.created) if active is not None else current.created
        _plugins.deactivate()
        for backend, breaker in current.shared:
            try:
                backend.detach(breaker)
            except Exception as exc:
                logger.debug("otel-cb: detaching shared state of %r: %s", breaker.name, exc)
        for name in created:
            registry.remove(name)
        _current = None
