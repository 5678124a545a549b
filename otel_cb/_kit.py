"""The integration kit: what every integration does around a protected call, written once.

An integration (ours or a third party's) describes a call as a ``Call``,
asks ``select_breaker`` for its breaker, takes a permit, and then uses these:

- ``classify_exception``: the one order in which a raised exception is
  judged, with the user's predicates contained (the caller always gets its
  own exception);
- ``permit.record(verdict, retry_after=...)`` (core) to record any verdict;
- ``serve_fallback``: the ``otel_cb_fallback`` hooks' answer, counted on the
  breaker (``success``, or ``refused`` for a :class:`Refusal`);
- ``section_settings``: an integration's parsed view of a breaker's config
  section, parsed once per section;
- ``annotate_span``: the breaker's name and state on the current span,
  importing telemetry only when first used;
- ``parse_items``: a list setting (status codes, SQLSTATEs...) checked item
  by item, with the error every integration words the same way;
- ``attach_default_health_check``: the integration's own health check for a
  breaker it routes to, attached once unless the breaker already has one;
- ``routing_epoch``: an opaque object that is replaced whenever routing's
  memo is forgotten, so an integration's own route memo never outlives it;
- ``RouteMemo``: such a memo, written once: an integration's routes by a key
  of its own (a destination it reads off the client's objects without
  building a ``Call``), forgotten with routing's;
- ``listening``: whether an active plugin implements a per-call hook
  (``otel_cb_classify``, ``otel_cb_fallback``), so an integration builds a
  ``Call`` for the hooks only when one would read it.

Re-exported by :mod:`otel_cb.plugin`; imports no client library.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _plugins
from ._call import Call, Refusal
from ._plugins import breaker_settings, classify, fallback, log_once

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._health import HealthCheck
    from ._state import CircuitState, Verdict

__all__ = ["ExceptionRule", "RouteMemo", "annotate_span", "attach_default_health_check", "classify_exception",
           "listening", "parse_items", "routing_epoch", "section_settings", "serve_fallback"]

T = TypeVar("T")
K = TypeVar("K")

ExceptionRule = Callable[[BaseException], "Verdict | None"]
"""An integration's own rule for an exception: a verdict, or None to leave it to ``record_exceptions``."""


def classify_exception(call: Call, breaker: CircuitBreaker, exc: BaseException,
                       rule: ExceptionRule | None = None) -> Verdict | None:
    """How an exception a protected call raised counts, in the one order every integration uses.

    1. Not an ``Exception`` (cancellation, ``KeyboardInterrupt``): None, no verdict.
    2. An ``otel_cb_classify`` hook's answer.
    3. The breaker's ``ignore_exceptions``, then its ``is_failure`` predicate.
       A predicate that raises is logged once and skipped: the caller still
       gets its own exception.
    4. The integration's ``rule`` (SQLSTATEs, "not the server's fault"...).
    5. The breaker's own rules (``breaker.classify``): ``record_exceptions``
       lists the failures, everything else is ignored.

    Args:
        call: The call.
        breaker: Its breaker (whose config holds the user's rules).
        exc: What the call raised.
        rule: The integration's own rule, or None.

    Returns:
        ``"success"``, ``"failure"``, ``"ignored"``, or None (no verdict).
    """
    if not isinstance(exc, Exception):
        return None
    verdict = classify(call, None, exc)
    if verdict is not None:
        return verdict
    config = breaker.config
    if config.ignore_exceptions and isinstance(exc, config.ignore_exceptions):
        return "ignored"
    if config.is_failure is not None:
        try:
            return "failure" if config.is_failure(exc) else "ignored"
        except Exception as error:
            log_once(("is_failure", breaker.name), "otel-cb: is_failure of circuit breaker %r raised %s; the "
                     "other rules decide", breaker.name, type(error).__name__)
    if rule is not None:
        try:
            verdict = rule(exc)
        except Exception:
            log_once(("rule", call.kind), "otel-cb: the %s classification rule raised; the breaker's "
                     "record_exceptions decides", call.kind, exc_info=True)
            verdict = None
        if verdict is not None:
            return verdict
    return breaker.classify(exc)


def serve_fallback(call: Call, breaker: CircuitBreaker, error: BaseException,
                   accept: type | tuple[type, ...] | None = None) -> object | None:
    """What the ``otel_cb_fallback`` hooks serve instead of ``error``, counted on ``breaker``; or None.

    A plain answer is counted as a ``success`` fallback; a :class:`Refusal`
    is unwrapped, and its value served and counted as ``refused``. An answer
    that is not an instance of ``accept`` (what the client would return) is
    logged once and not served. A raising hook is contained by the manager.

    Args:
        call: The call.
        breaker: Its breaker, where the fallback is counted.
        error: ``CircuitOpenError`` (or the integration's subclass) for a
            rejection, else what the call raised.
        accept: The type(s) a served value must have; None accepts anything.

    Returns:
        The value to hand the caller, or None: let the error propagate.
    """
    answer = fallback(call, error)
    if answer is None:
        return None
    refused = isinstance(answer, Refusal)
    value: object = answer.value if isinstance(answer, Refusal) else answer
    if value is None or (accept is not None and not isinstance(value, accept)):
        log_once(("fallback-type", call.kind), "otel-cb: otel_cb_fallback answered a %s call with a %s; not "
                 "served", call.kind, type(value).__name__)
        return None
    breaker.count_fallback("refused" if refused else "success")
    return value


_MISSING: Any = object()
# Per breaker, per parser: (the section it was parsed from, the result). Weak, so a
# removed breaker takes its settings with it; checked by identity, so a new
# instrument() (a new section object) is parsed again.
_parsed: weakref.WeakKeyDictionary[CircuitBreaker, dict[object, tuple[Mapping[str, Any], Any]]] = \
    weakref.WeakKeyDictionary()


def section_settings(breaker: CircuitBreaker, parse: Callable[[CircuitBreaker, Mapping[str, Any]], T],
                     default: T) -> T:
    """``parse(breaker, section)`` of ``breaker``'s config section, parsed once per section.

    The one settings cache of the integrations: each keeps its parsed view
    (HTTP statuses and fallback, SQLSTATE rules, gRPC codes) here. Without a
    section (not instrumented, no keys) ``default`` is returned unparsed. A
    section that does not parse (``ValueError``; the config check should
    have caught it) is logged once and gives ``default``, so a call never
    pays for a bad setting.

    Args:
        breaker: The breaker whose section to read (``breaker_settings``).
        parse: Reads the integration's keys from the section.
        default: The settings without a section.
    """
    section = breaker_settings(breaker.name)
    if not section:
        return default
    per_breaker = _parsed.get(breaker)
    if per_breaker is not None:
        cached = per_breaker.get(parse, _MISSING)
        if cached is not _MISSING and cached[0] is section:
            return cached[1]  # type: ignore[no-any-return]
    try:
        value = parse(breaker, section)
    except ValueError as exc:
        log_once(("settings", getattr(parse, "__qualname__", "?"), breaker.name[:50]),
                 "otel-cb: breaker %r: %s; using the defaults", breaker.name, exc)
        value = default
    try:
        _parsed.setdefault(breaker, {})[parse] = (section, value)
    except TypeError:  # a breaker that cannot be weakly referenced: parse every time
        pass
    return value


_annotate: Callable[[CircuitBreaker, Any], None] | None = None


def annotate_span(breaker: CircuitBreaker, state: CircuitState | None = None) -> None:
    """Put ``circuit_breaker.name`` and ``circuit_breaker.state`` on the current span; contained.

    Call it right after a breaker admitted (or rejected) a call, inside the
    client span. Imports ``otel_cb.telemetry`` (and OpenTelemetry) on first
    use; without OpenTelemetry it does nothing. A failure is logged once.

    Args:
        breaker: The breaker that admitted or rejected the call.
        state: Its state then; ``breaker.state`` when None.
    """
    global _annotate
    try:
        if _annotate is None:
            try:
                from .telemetry import annotate_current_span
            except ImportError:  # OpenTelemetry is not installed: nothing to annotate
                _annotate = _no_annotation
            else:
                _annotate = annotate_current_span
        _annotate(breaker, state)
    except Exception:
        log_once(("annotate", "span"), "otel-cb: annotating the current span for breaker %r failed",
                 breaker.name, exc_info=True)


def _no_annotation(breaker: CircuitBreaker, state: object) -> None:
    return None


def parse_items(where: str, value: object, parse_item: Callable[[object], Iterable[T] | None],
                allowed: str) -> frozenset[T]:
    """Parse a list setting such as ``failure_statuses: [429, "5xx"]`` item by item.

    Args:
        where: The field, for the error (``"failure_statuses"``).
        value: The setting's value: a list (any iterable but a string).
        parse_item: What one item stands for (``"5xx"`` -> 500..599), or None
            when it is not allowed.
        allowed: What is allowed, for the error.

    Raises:
        ValueError: ``"<where>: <item> is not allowed; use <allowed>"``.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{where}: {value!r} is not allowed; use {allowed}")
    parsed: set[T] = set()
    for item in value:
        values = parse_item(item)
        if values is None:
            raise ValueError(f"{where}: {item!r} is not allowed; use {allowed}")
        parsed.update(values)
    return frozenset(parsed)


# The breakers an integration was already asked about: each is offered a default check once.
# No lock (nothing a forked child could inherit held): two threads routing the first calls of
# one breaker at once may both run ``make``; only one check is attached.
_offered: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def attach_default_health_check(breaker: CircuitBreaker, make: Callable[[], HealthCheck | None]) -> None:
    """Attach ``make()``, an integration's default health check, to ``breaker`` unless it has a check.

    Call it each time the integration routes a call to ``breaker``: only the
    first call for a breaker without a check runs ``make`` (cheap after
    that), so a user's own check (``health_check=``, ``attach_health_check``)
    always wins, before or after, and a check the user detached stays
    detached. ``make`` returns None when the integration has no check for
    this breaker (nothing configured). A ``make`` that raises is logged once
    and the breaker keeps timed probing.

    Args:
        breaker: The breaker a call was routed to.
        make: Builds the check (it should not do I/O: the check does, later).
    """
    if breaker.health_check is not None or breaker in _offered:
        return
    try:
        _offered.add(breaker)
    except TypeError:  # a breaker that cannot be weakly referenced gets no default check
        return
    try:
        check = make()
        if check is not None and breaker.health_check is None:
            breaker.attach_health_check(check)
    except Exception:
        log_once(("default-health-check", getattr(make, "__qualname__", "?")), "otel-cb: building the default "
                 "health check of circuit breaker %r failed; it probes with user calls", breaker.name, exc_info=True)


def routing_epoch() -> object:
    """An opaque object standing for the routes ``select_breaker`` memoises now; compare it with ``is``.

    It is replaced whenever those routes are forgotten: ``instrument()`` with
    a new config, ``uninstrument()``, a breaker removed from the registry
    routing uses, and the pytest plugin's reset, which also drops the
    automatic breakers from the registry. An integration that
    memoises its own routes (a ``Call`` and its breaker per destination, to
    skip building the call) keeps the epoch beside them and routes afresh
    when it changes, so its memo never answers other than ``select_breaker``
    would. Costs one function call; never None.
    """
    return _plugins._routes


def listening(hook: str) -> bool:
    """Whether an active plugin implements ``hook``: ``"otel_cb_classify"`` or ``"otel_cb_fallback"``.

    An integration that builds its ``Call`` only when something reads it
    asks this before judging a call: with no ``otel_cb_classify`` hook,
    ``classify`` would answer None without looking at the call. The answer
    holds for one :func:`routing_epoch` (hooks are resolved when
    ``instrument()`` runs), so it can be memoised with a route. False while
    not instrumented, and for any other hook name.
    """
    return _plugins.listening(hook)


class RouteMemo(Generic[K, T]):
    """An integration's routes by a key of its own, forgotten whenever routing's memo is.

    ``select_breaker`` memoises per ``(kind, target, service, method)``, but
    an integration must build the ``Call`` to ask it. A route memo lets a
    repeat call skip that: the integration keys it by what it reads off the
    client's own objects (an HTTP request's scheme, host, port and method; a
    database connection's address), and works the route out only on a miss::

        _ROUTES: RouteMemo[tuple[str, bytes, int | None, str], Route | None] = RouteMemo()

        route = _ROUTES.get(key)
        if route is RouteMemo.MISS:
            route = _ROUTES.remember(key, lambda: route_of(request))

    The memo is dropped whole when :func:`routing_epoch` changes (a new
    config, ``uninstrument()``, ``registry.remove()``, the pytest plugin's
    reset of automatic breakers), so it never answers other than ``select_breaker`` would, and
    it holds at most ``limit`` keys (then starts afresh). Lock-free: the
    epoch and its routes are one object swapped whole, so a thread never
    pairs a new epoch with old routes, and a racing thread's route lands in a
    memo nobody reads.

    Args:
        limit: The most keys kept.
    """

    MISS: Any = _MISSING
    """What ``get`` returns for a key with no route in this epoch (None is a route: "unprotected")."""

    __slots__ = ("_current", "_limit")

    def __init__(self, limit: int = 4096) -> None:
        self._current: tuple[object, dict[K, T]] = (None, {})
        self._limit = limit

    def get(self, key: K) -> T:
        """The route remembered for ``key`` in the current epoch, else ``RouteMemo.MISS``."""
        epoch, routes = self._current
        if epoch is not _plugins._routes:
            return _MISSING  # type: ignore[no-any-return]
        return routes.get(key, _MISSING)  # type: ignore[no-any-return]

    def remember(self, key: K, route: Callable[[], T]) -> T:
        """Work out ``key``'s route with ``route()``, keep it for this epoch, and return it."""
        epoch = _plugins._routes  # before routing: a change meanwhile makes the next call route again
        found = route()
        current_epoch, routes = self._current
        if current_epoch is not epoch or len(routes) >= self._limit:
            routes = {}
            self._current = (epoch, routes)
        routes[key] = found
        return found

    def clear(self) -> None:
        """Forget every route now (the next call of each key routes afresh)."""
        self._current = (None, {})
