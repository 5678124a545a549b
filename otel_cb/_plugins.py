"""The plugin manager: discovery, registration, and contained hook calls.

Owns the pluggy ``PluginManager`` of one ``instrument()``: finds plugins in the
``otel_cb`` entry-point group, loads each one (a plugin that fails to import
or to register is logged once with its name and skipped), and calls hooks so
that a raising implementation is logged once and treated as if it returned
None. It also holds the runtime helpers that integrations call on every
outgoing call (``select_breaker``, ``classify``, ``fallback``,
``breaker_settings``), ``log_once``, and ``config_keys``, the breaker-section
keys plugins declare through ``otel_cb_config_keys``; the public ones are
re-exported by :mod:`otel_cb.plugin`.

Hooks are called by this module's own loop rather than by pluggy's, so each
implementation is contained on its own; pluggy still orders implementations
(``tryfirst`` / ``trylast``) and validates them against the specs. Hook
wrappers (``wrapper=True`` / ``hookwrapper=True``) are not supported and are
skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import hookspecs
from ._markers import PROJECT, hookimpl

if TYPE_CHECKING:
    import pluggy

    from ._breaker import CircuitBreaker
    from ._call import Call, SectionValidator
    from ._config import CircuitBreakerConfig
    from ._registry import CircuitBreakerRegistry
    from ._state import StateChangeEvent, Verdict

__all__ = [
    "Active",
    "PluginInfo",
    "activate",
    "active",
    "breaker_settings",
    "call_hook",
    "classify",
    "config_keys",
    "deactivate",
    "discover",
    "fallback",
    "format_plugins",
    "log_once",
    "new_manager",
    "register",
    "reset_breakers",
    "select_breaker",
]

logger = logging.getLogger("otel_cb")

_VERDICTS = frozenset({"success", "failure", "ignored"})
# Routing is memoised per (kind, target, service, method); destinations are
# capped by the router, but a plugin could route unboundedly many keys, so the
# memo is bounded too (cleared whole when full: simple and rare).
_MAX_ROUTES = 10_000
_EMPTY: Mapping[str, Any] = MappingProxyType({})

_MAX_LOGGED = 10_000
_logged: set[Hashable] = set()
_logged_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_logged_lock=threading.Lock()))  # held at a fork


def log_once(key: Hashable, message: str, *args: object, exc_info: bool = False) -> None:
    """Log on the ``otel_cb`` logger at WARNING the first time for ``key``, then at DEBUG.

    How a plugin or an integration reports a fault it contains (a hook that
    raised, a span it could not annotate) without flooding the host's logs.

    Args:
        key: What makes two faults the same, e.g. ``("myclient", "annotate")``;
            keep it bounded (never a URL or a per-call value).
        message: A ``%``-style message, as for ``logging``.
        *args: Its arguments.
        exc_info: Attach the current exception's traceback.
    """
    with _logged_lock:
        first = key not in _logged
        if first and len(_logged) < _MAX_LOGGED:
            _logged.add(key)
    logger.log(logging.WARNING if first else logging.DEBUG, message, *args, exc_info=exc_info)


# -- discovery ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One plugin found in the ``otel_cb`` entry-point group.

    Attributes:
        name: The entry-point name (what ``--disable`` uses).
        value: The entry point's target, e.g. ``"otel_cb.integrations.httpx"``.
        distribution: The distribution that declares it ("" if unknown).
        version: That distribution's version ("" if unknown).
        status: ``"loaded"``, ``"disabled"``, or ``"failed: <why>"``.
        plugin: The loaded object (None unless loaded).
    """

    name: str
    value: str
    distribution: str
    version: str
    status: str
    plugin: object = field(default=None, compare=False, repr=False)

    @property
    def loaded(self) -> bool:
        """Whether the plugin is loaded and registered."""
        return self.status == "loaded"


# The entry points of the group, for one sys.path: reading them (and each distribution's
# metadata) costs milliseconds, and start-up asks several times (config check, keys, plugins).
_found: tuple[tuple[str, ...], list[Any]] | None = None
_facts: dict[int, tuple[object, str, str]] = {}  # id(distribution) -> (it, name, version)


def _entry_points() -> list[Any]:
    global _found
    path = tuple(sys.path)
    found = _found
    if found is not None and found[0] == path:
        return found[1]
    from importlib.metadata import entry_points

    seen: set[tuple[str, str]] = set()
    unique = []
    # The same distribution can be visible twice on sys.path (e.g. an editable
    # install plus a build directory); one plugin must still load once.
    for ep in entry_points(group=PROJECT):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            unique.append(ep)
    unique.sort(key=lambda ep: ep.name)
    _found = (path, unique)
    _facts.clear()
    return unique


def _distribution_of(ep: Any) -> tuple[str, str]:
    """(name, version) of the distribution declaring ``ep``; ("", "") if unknown. One metadata read each."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    known = _facts.get(id(dist))
    if known is None or known[0] is not dist:
        metadata = dist.metadata
        version = metadata["Version"] if "Version" in metadata else dist.version  # (dist.version parses again)
        known = (dist, str(metadata["Name"]), str(version))
        _facts[id(dist)] = known  # holds the distribution: its id cannot be reused meanwhile
    return known[1], known[2]


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def discover(manager: pluggy.PluginManager | None, disabled: Iterable[str] = (), *,
             quiet: bool = False) -> list[PluginInfo]:
    """Find every plugin of the ``otel_cb`` entry-point group; load and register the enabled ones.

    Args:
        manager: The manager to register loaded plugins with (None: only load,
            as ``otel-cb plugins`` does to report what would happen).
        disabled: Entry-point names to skip.
        quiet: Log a plugin that fails at DEBUG only (``config_keys`` loads
            every plugin, disabled ones too; the instrumentation reports them).

    Returns:
        One :class:`PluginInfo` per entry point, in name order. A plugin that
        fails to import or to register is logged once and reported as failed.
    """
    skip = frozenset(disabled)
    infos = []
    for ep in _entry_points():
        dist_name, version = _distribution_of(ep)
        if ep.name in skip:
            infos.append(PluginInfo(ep.name, ep.value, dist_name, version, "disabled"))
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            _report(("plugin", ep.name), quiet, "otel-cb: plugin %r (%s) failed to import, skipped: %s",
                    ep.name, ep.value, _describe(exc))
            infos.append(PluginInfo(ep.name, ep.value, dist_name, version, f"failed: {_describe(exc)}"))
            continue
        status = "loaded"
        if manager is not None:
            status = register(manager, plugin, ep.name, quiet=quiet)
        else:
            status = _check(plugin, ep.name)
        infos.append(PluginInfo(ep.name, ep.value, dist_name, version, status, plugin if status == "loaded" else None))
    return infos


def _report(key: Hashable, quiet: bool, message: str, *args: object) -> None:
    if quiet:
        logger.debug(message, *args)
    else:
        log_once(key, message, *args)


def register(manager: pluggy.PluginManager, plugin: object, name: str, *, quiet: bool = False) -> str:
    """Register ``plugin``; return ``"loaded"``, or ``"failed: <why>"`` after logging it once (DEBUG if ``quiet``)."""
    try:
        if manager.is_registered(plugin):
            # One module under two entry-point names: pluggy would refuse it.
            return f"failed: already registered as {manager.get_name(plugin)!r}"
        manager.register(plugin, name=name)
    except Exception as exc:
        _report(("plugin", name), quiet, "otel-cb: plugin %r has invalid hooks, skipped: %s", name, _describe(exc))
        return f"failed: {_describe(exc)}"
    return "loaded"


def _check(plugin: object, name: str) -> str:
    """Validate a plugin's hooks against the specs without activating anything."""
    return register(new_manager(), plugin, name)


def new_manager() -> pluggy.PluginManager:
    """Return a pluggy manager of project ``otel_cb`` that knows the hook specs."""
    import pluggy

    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def format_plugins(infos: Iterable[PluginInfo]) -> str:
    """Render plugins as the table ``otel-cb plugins`` prints."""
    rows = [("NAME", "DISTRIBUTION", "VERSION", "STATUS")]
    rows += [(i.name, i.distribution or "-", i.version or "-", i.status) for i in infos]
    if len(rows) == 1:
        return f"no plugins found in entry-point group {PROJECT!r}"
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    )


# -- contained hook calls -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Impl:
    plugin_name: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]


def _impls(manager: pluggy.PluginManager, hook_name: str) -> tuple[_Impl, ...]:
    caller = getattr(manager.hook, hook_name)
    impls = []
    # pluggy calls the last registered / tryfirst implementation first.
    for impl in reversed(caller.get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            log_once(("wrapper", impl.plugin_name), "otel-cb: plugin %r: hook wrappers are not supported; "
                      "%s wrapper skipped", impl.plugin_name, hook_name)
            continue
        impls.append(_Impl(impl.plugin_name, impl.function, tuple(impl.argnames)))
    return tuple(impls)


def _run(impls: tuple[_Impl, ...], hook_name: str, kwargs: Mapping[str, Any], firstresult: bool,
         accept: Callable[[object], bool] | None = None, allowed: str = "") -> Any:
    """Call each implementation, contained; with ``accept``, a result it refuses counts as no answer."""
    results = []
    for impl in impls:
        try:
            result = impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as exc:
            log_once((impl.plugin_name, hook_name), "otel-cb: plugin %r raised in %s, ignored: %s",
                     impl.plugin_name, hook_name, _describe(exc))
            logger.debug("otel-cb: plugin %r raised in %s", impl.plugin_name, hook_name, exc_info=True)
            continue
        if result is not None and accept is not None and not _accepted(accept, result):
            log_once((impl.plugin_name, hook_name, "answer"), "otel-cb: plugin %r: %s returned %s; allowed: %s; "
                     "counted as no answer", impl.plugin_name, hook_name, _shown(result), allowed)
            continue
        if result is not None:
            if firstresult:
                return result
            results.append((impl.plugin_name, result))
    return None if firstresult else results


def _accepted(accept: Callable[[object], bool], result: object) -> bool:
    try:
        return accept(result)
    except Exception:  # e.g. an unhashable answer tested for membership
        return False


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_verdict(value: object) -> bool:
    return isinstance(value, str) and value in _VERDICTS


def call_hook(manager: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call every implementation of a (non-firstresult) hook, each contained on its own.

    Returns:
        ``(plugin_name, result)`` for every implementation that returned
        something other than None.
    """
    result: list[tuple[str, Any]] = _run(_impls(manager, hook_name), hook_name, kwargs, firstresult=False)
    return result


# -- the active instrumentation and the runtime helpers -------------------------


class Active:
    """What ``instrument()`` installed, as the runtime helpers see it.

    Args:
        manager: The plugin manager with every loaded plugin and the router.
        registry: Where breakers live (``otel_cb.registry``).
        default_config: Config of breakers made for names no section configures.
        sections: Raw config section per breaker name, laid over ``defaults``.
        default_section: The raw ``defaults`` section.
        created: Names of the breakers made for this instrumentation (appended
            to as routing creates more), which ``uninstrument()`` removes.
        prepare: Called with each breaker routing creates (attaches shared
            state from ``defaults``); must not raise.
    """

    __slots__ = ("manager", "registry", "default_config", "sections", "default_section", "created", "prepare",
                 "_configured", "_select", "_classify", "_fallback", "_state_change")

    def __init__(self, manager: pluggy.PluginManager, registry: CircuitBreakerRegistry,
                 default_config: CircuitBreakerConfig, sections: Mapping[str, Mapping[str, Any]],
                 default_section: Mapping[str, Any] = _EMPTY, created: list[str] | None = None,
                 prepare: Callable[[CircuitBreaker], None] | None = None) -> None:
        self.manager = manager
        self.registry = registry
        self.default_config = default_config
        self.sections = sections
        self.default_section = default_section
        self.created = [] if created is None else created
        self.prepare = prepare
        # The names created so far are the configured breakers; routing appends the automatic ones.
        self._configured = len(self.created)
        # Resolved once: the per-call helpers must not ask pluggy every time.
        self._select = _impls(manager, "otel_cb_select_breaker")
        self._classify = _impls(manager, "otel_cb_classify")
        self._fallback = _impls(manager, "otel_cb_fallback")
        self._state_change = _impls(manager, "otel_cb_state_change")

    # Observer protocol (otel_cb._observers): forwards transitions to plugins.
    def state_changed(self, breaker: CircuitBreaker, event: StateChangeEvent) -> None:
        if self._state_change:
            _run(self._state_change, "otel_cb_state_change", {"breaker": breaker, "event": event}, False)


_active: Active | None = None
# Replaced whole (never cleared in place) on every change, so a lookup racing
# with instrument()/uninstrument() writes into a dict nobody reads any more.
_routes: dict[tuple[str, str, str, str], CircuitBreaker | None] = {}


def active() -> Active | None:
    """Return what ``instrument()`` installed, or None while not instrumented."""
    return _active


def activate(state: Active) -> None:
    """Make ``state`` what the runtime helpers use; forget every memoised route."""
    from . import _observers

    global _active
    deactivate()
    _active = state
    state.registry._on_removal = forget_routes
    _observers.add_observer(state)


def deactivate() -> None:
    """Stop answering: every helper returns None / ``{}`` again."""
    from . import _observers

    global _active, _routes
    if _active is not None:
        _observers.remove_observer(_active)
        _active.registry._on_removal = None
    _active = None
    _routes = {}


def forget_routes() -> None:
    """Route every destination afresh from its next call (a breaker left the registry)."""
    global _routes
    _routes = {}


def reset_breakers() -> None:
    """Give every test the breakers a process has right after ``instrument()`` (the pytest plugin's job).

    Automatic breakers (those routing made since ``instrument()``) are
    forgotten: removed from the registry and from the route memo, so the next
    call to a destination makes a new breaker with empty counters. Every other
    breaker in the registry (configured, registered by a plugin or by hand) is
    reset in place if it left the closed state or holds calls in its window,
    so references to it stay valid; its counters are kept. When ``defaults``
    shares state, automatic breakers are reset in place too: their state
    lives in the shared store, which only a reset tells. Does nothing while
    not instrumented.
    """
    from ._state import CircuitState

    global _routes
    state = _active
    if state is None:
        return
    if state.default_section.get("shared_state") is None:
        dropped = state.created[state._configured:]
        del state.created[state._configured:state._configured + len(dropped)]
        for name in dropped:
            state.registry.remove(name)
        _routes = {}
    for breaker in state.registry:
        snapshot = breaker.snapshot()
        if snapshot.state is not CircuitState.CLOSED or snapshot.buffered_calls or snapshot.consecutive_failures:
            breaker.reset()


def select_breaker(call: Call) -> CircuitBreaker | None:
    """Return the breaker that protects ``call``, or None when nothing does.

    Asks ``otel_cb_select_breaker`` the first time a ``(kind, target, service,
    method)`` is seen and memoises the answer, so a repeat costs one dict
    lookup. Always None while otel-cb is not instrumented.
    """
    routes = _routes
    key = (call.kind, call.target, call.service, call.method)
    breaker = routes.get(key, _MISSING)
    if breaker is not _MISSING:
        return breaker  # type: ignore[no-any-return]
    state = _active
    if state is None:
        return None
    name = _run(state._select, "otel_cb_select_breaker", {"call": call}, True)
    found: CircuitBreaker | None = None
    if name is not None:
        if isinstance(name, str) and name:
            found = _breaker_named(state, name)
        else:
            log_once(("select", repr(type(name))), "otel-cb: otel_cb_select_breaker returned %r, not a "
                      "breaker name; call not protected", type(name).__name__)
    if len(routes) >= _MAX_ROUTES:
        routes.clear()
    routes[key] = found
    return found


_MISSING: Any = object()


def _breaker_named(state: Active, name: str) -> CircuitBreaker | None:
    breaker = state.registry.get(name)
    if breaker is not None:
        return breaker
    try:
        breaker = state.registry.get_or_create(name, state.default_config)
    except ValueError:
        # Another thread created it first (with a different config), or the
        # name is not allowed: the first is fine, the second is logged.
        existing = state.registry.get(name)
        if existing is None:
            log_once(("name", name[:50]), "otel-cb: cannot create a breaker named %r; call not protected",
                      name[:50])
        return existing
    state.created.append(name)
    if state.prepare is not None:
        state.prepare(breaker)
    return breaker


def classify(call: Call, result: object, exception: BaseException | None) -> Verdict | None:
    """Ask ``otel_cb_classify`` about one outcome.

    Returns:
        ``"success"``, ``"failure"`` or ``"ignored"``; None when no plugin has
        an opinion (the integration's own rules decide) or while not
        instrumented. An answer outside that vocabulary is logged once with
        the plugin's name and counts as no answer.
    """
    state = _active
    if state is None or not state._classify:
        return None
    # A wrong answer (["failure"], "ignore", 1...) is no answer: the next hook or the integration decides,
    # so one broken plugin can never stop a breaker from counting.
    return _run(state._classify, "otel_cb_classify",  # type: ignore[no-any-return]
                {"call": call, "result": result, "exception": exception}, True,
                accept=_is_verdict, allowed="'success', 'failure', 'ignored' or None")


def listening(hook: str) -> bool:
    """Whether an active plugin implements ``hook`` (``otel_cb_classify``, ``otel_cb_fallback``); False otherwise."""
    state = _active
    if state is None:
        return False
    if hook == "otel_cb_classify":
        return bool(state._classify)
    if hook == "otel_cb_fallback":
        return bool(state._fallback)
    return False


def fallback(call: Call, error: BaseException) -> object | None:
    """Ask ``otel_cb_fallback`` for a value to serve instead of raising ``error``.

    Returns:
        The first non-None answer, or None (let the error propagate), always
        None while not instrumented.
    """
    state = _active
    if state is None or not state._fallback:
        return None
    return _run(state._fallback, "otel_cb_fallback", {"call": call, "error": error}, True)  # type: ignore[no-any-return]


def breaker_settings(name: str) -> Mapping[str, Any]:
    """Return the raw config section of breaker ``name``, laid over ``defaults``.

    Integrations read their own keys here (``failure_statuses``, ``fallback``,
    ``failure_codes``, ``shared_state``). A breaker without a section of its
    own (an automatic one, say) gets the ``defaults`` section; ``{}`` while
    not instrumented.
    """
    state = _active
    if state is None:
        return _EMPTY
    return state.sections.get(name, state.default_section)


# -- config keys declared by plugins ------------------------------------------------


class _SharedStateKeys:
    """The built-in declaration of ``shared_state``, which the instrumentation itself applies."""

    @hookimpl
    def otel_cb_config_keys(self) -> Mapping[str, SectionValidator]:
        from .shared import validate_settings

        return {"shared_state": validate_settings}


def config_keys() -> dict[str, list[tuple[str, SectionValidator]]]:
    """The breaker-section keys every installed plugin declares, with their validators.

    Loads every plugin of the entry-point group, disabled ones too (a
    config stays valid whichever integrations are disabled; a plugin that
    fails to load is only logged at DEBUG here, the instrumentation reports
    it) and asks each for ``otel_cb_config_keys``. A validator never needs
    its client library, so this works where it is not installed.
    ``shared_state`` is declared by otel-cb itself. An answer that is not a mapping of key to callable is logged once
    and skipped.

    Returns:
        Per key, ``(plugin_name, validate)`` of each plugin that declared it
        (a validator that several plugins declare for one key, once).
    """
    global _declared
    found = _entry_points()
    declared = _declared
    if declared is not None and declared[0] is found:  # the same plugins declare the same keys
        return declared[1]
    manager = new_manager()
    register(manager, _SharedStateKeys(), "otel_cb.shared_state")
    discover(manager, quiet=True)
    keys: dict[str, list[tuple[str, SectionValidator]]] = {}
    for plugin_name, declared in call_hook(manager, "otel_cb_config_keys"):
        if not isinstance(declared, Mapping) or not all(
                isinstance(key, str) and callable(check) for key, check in declared.items()):
            log_once((plugin_name, "otel_cb_config_keys"), "otel-cb: plugin %r answered otel_cb_config_keys with "
                     "%s, not a mapping of key to validator; its keys are unknown", plugin_name, _shown(declared))
            continue
        for key, check in declared.items():
            declarers = keys.setdefault(key, [])
            # Plugins sharing a key and its validator (httpx and requests: failure_statuses) check it once.
            if all(check is not known for _, known in declarers):
                declarers.append((plugin_name, check))
    _declared = (found, keys)
    return keys


# config_keys()'s answer for one list of entry points (held, so its identity is not reused).
_declared: tuple[list[Any], dict[str, list[tuple[str, SectionValidator]]]] | None = None
