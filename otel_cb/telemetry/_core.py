"""The telemetry observer: span events, log events, transition logs, and the collection hook.

This module owns what otel-cb tells OpenTelemetry through the *API* only
(``opentelemetry.trace``, ``opentelemetry._logs`` and ``opentelemetry.metrics``):
span events and attributes on the span current when something happens, the
same events as OpenTelemetry log records (``event.name``, correlated with the
current span), the ``otel_cb`` logger's transition lines, and one observable
gauge (``COLLECTION_HOOK``) whose callback tells ``_metrics`` that an SDK
reader is collecting, and ``add_duration_histogram``, which hands a reader to
``_metrics``. ``_metrics`` never imports this module: what a collection
reads from the observer (``enabled``, ``transitions()``, ``live_breakers()``)
is handed to it with each call, and the names both use live in ``_names``.
Telemetry is on by default (``otel_cb._observers`` loads this module when the
first breaker is made): the API's proxy providers make it free until an
application installs an SDK, and route it there once it does.

It leaves the SDK, exporters and exit to ``_configure``, the metric data to
``_metrics``, and the call path to the core, which never imports it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from opentelemetry import _logs, metrics, trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import StatusCode

from .. import _observers
from .._breaker import CircuitBreaker
from .._errors import CircuitOpenError
from .._state import CircuitState, StateChangeEvent
from .._version import __version__
from ._names import (
    ATTR_NAME,
    ATTR_OUTCOME,
    ATTR_PREVIOUS_STATE,
    ATTR_REASON,
    ATTR_RETRY_AFTER,
    ATTR_STATE,
    COLLECTION_HOOK,
    FALLBACK_EVENT,
    REJECTED_EVENT,
    SCOPE,
    STATE_CHANGE_EVENT,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

__all__ = [
    "DISABLED_ENV", "EVENTS_ENV", "REJECTED_EVENT_INTERVAL", "add_duration_histogram", "annotate_current_span",
    "disable", "enable", "enable_by_default", "is_enabled", "live_breakers", "parse_events", "telemetry",
]

EVENTS_ENV = "OTEL_CB_EVENTS"
"""``span``, ``log`` or ``span,log`` (the default): where events go."""
DISABLED_ENV = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
REJECTED_EVENT_INTERVAL = 1.0
"""At most one ``circuit_breaker.rejected`` log event per breaker in this many seconds."""

logger = logging.getLogger("otel_cb")
_current_span = trace.get_current_span

_OPENING = (CircuitState.OPEN, CircuitState.FORCED_OPEN)
_EVENT_KINDS = ("span", "log")


def annotate_current_span(breaker: CircuitBreaker, state: CircuitState | str | None = None) -> None:
    """Put ``circuit_breaker.name`` and ``circuit_breaker.state`` on the current span.

    Integrations call this right after a breaker admitted a call, so the
    client span (HTTP, gRPC, database) says which breaker guarded it and in
    which state; Jaeger's tag search then finds every call a breaker touched.
    It works whether or not telemetry is enabled, and costs one context
    lookup when no span is recording.

    Args:
        breaker: The breaker that admitted the call.
        state: Its state at admission; ``breaker.state`` when None.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if state is None:
        state = breaker.state
    # Runs on every protected call: a dict lookup is cheaper than the enum's __str__, and two
    # set_attribute calls cost the SDK a fifth less than one set_attributes (no mapping checks, no copy).
    span.set_attribute(ATTR_NAME, breaker.name)
    span.set_attribute(ATTR_STATE, _STATE_TEXT.get(state) or str(state))


_STATE_TEXT: dict[object, str] = {state: state.value for state in CircuitState}  # "closed" finds CLOSED too


def parse_events(value: str, variable: str = EVENTS_ENV) -> tuple[bool, bool]:
    """``"span"``, ``"log"`` or ``"span,log"`` -> (span events, log events).

    Raises:
        ValueError: naming ``variable``, the value and what is allowed.
    """
    kinds = {part.strip().lower() for part in value.split(",") if part.strip()}
    if not kinds or not kinds <= set(_EVENT_KINDS):
        raise ValueError(f"{variable}: {value[:40]!r} is not supported; use span, log or span,log")
    return "span" in kinds, "log" in kinds


class _RateLimit:
    """Lets one event per key through every ``interval`` seconds of ``clock``.

    Keys are breaker names (a plain dict is several times cheaper than a weak
    one on the rejection path); past ``_MAX_KEYS`` names it starts afresh.
    """

    _MAX_KEYS = 10_000

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        # Two threads may both pass here at once: one event too many, never a lock on the call path.
        if len(self._last) >= self._MAX_KEYS:
            self._last = {}
        self._last[key] = now
        return True


class _Telemetry:
    """The process-wide observer; one instance, registered by ``enable()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.enabled = False
        self.turned_off = False  # disable() was called: nothing turns it on again but enable()
        self.span_events = True
        self.log_events = True
        self._instruments_created = False
        self._tracer: trace.Tracer | None = None
        self._events: _logs.Logger | None = None
        # Transitions per breaker, counted here because the core keeps none.
        self._transitions: weakref.WeakKeyDictionary[CircuitBreaker, dict[tuple[str, str, str], int]] = (
            weakref.WeakKeyDictionary()
        )
        self.rejections = _RateLimit(REJECTED_EVENT_INTERVAL)
        self.histogram_enabled = False

    # -- lifecycle --------------------------------------------------------------

    def enable(self, events: str | None = None) -> None:
        if events is not None:
            self.span_events, self.log_events = parse_events(events, "events")
        with self._lock:
            self.turned_off = False
            if self.enabled:
                return
            self._tracer = trace.get_tracer(SCOPE, __version__)
            self._events = _logs.get_logger(SCOPE, __version__)
            if not self._instruments_created:
                metrics.get_meter(SCOPE, __version__).create_observable_gauge(
                    COLLECTION_HOOK, _Callbacks([self._collecting]),
                    description="otel-cb's collection hook; its point never leaves the process",
                )
                self._instruments_created = True
            self.enabled = True
        self.check_providers(refresh=False)
        _observers.add_observer(self)
        if self.histogram_enabled or _has_meter_provider():
            # Breakers made while disabled were not seen by breaker_created.
            self.enable_histograms()

    def disable(self) -> None:
        _observers.remove_observer(self)
        with self._lock:
            # The API cannot unregister an instrument; a disabled observer's
            # callback reports nothing instead.
            self.enabled = False
            self.turned_off = True

    def check_providers(self, refresh: bool = True) -> None:
        """Listen to rejections only while a tracer or logger provider could take what they make.

        With neither installed a rejection has nothing to report, and rejections
        are the hot path while a dependency is down; so the observer drops its
        ``call_rejected`` hook then (the core skips it), and takes it back at the
        next check: on every transition (a breaker opens before it rejects) and
        every collection.
        """
        wanted = _has_tracer_or_logger_provider()
        has = "call_rejected" not in vars(self)
        if wanted == has:
            return
        if wanted:
            del self.call_rejected  # the method again
        else:
            self.call_rejected = None  # type: ignore[assignment,method-assign]
        if refresh:
            _observers.refresh()

    def enable_histograms(self) -> None:
        """Start keeping call durations in every breaker (the duration export needs them)."""
        self.histogram_enabled = True
        for breaker in live_breakers():
            breaker.enable_duration_histogram()

    def transitions(self) -> list[tuple[CircuitBreaker, dict[tuple[str, str, str], int]]]:
        """(breaker, {(previous, state, reason): count}) for every breaker that changed state."""
        with self._lock:
            return [(breaker, dict(counts)) for breaker, counts in self._transitions.items()]

    def live_breakers(self) -> list[CircuitBreaker]:
        """Every breaker alive in the process (what ``_metrics`` reports on)."""
        return live_breakers()

    def _collecting(self, options: CallbackOptions) -> Iterable[Observation]:
        # Only an SDK metric reader calls this: it is collecting now.
        if not self.enabled:
            return []
        from . import _metrics  # the SDK is there: the reader that calls us is one

        _metrics.hook_global_readers(self)
        self.check_providers()
        if not self.histogram_enabled:
            self.enable_histograms()
        # One point, so that the SDK hands the reader a collection even when
        # nothing else has data; the hooked reader swaps it for the breakers' metrics.
        return [Observation(0)]

    def _after_fork(self) -> None:
        # A thread of the parent may have held the lock at fork; in the child it never lets go.
        self._lock = threading.Lock()
        self._transitions = weakref.WeakKeyDictionary(list(self._transitions.items()))

    # -- observer hooks (called by the core through _observers) ----------------

    def breaker_created(self, breaker: CircuitBreaker) -> None:
        if self.histogram_enabled or _has_meter_provider():
            self.histogram_enabled = True
            breaker.enable_duration_histogram()

    def state_changed(self, breaker: CircuitBreaker, event: StateChangeEvent) -> None:
        self.check_providers()
        key = (event.previous_state.value, event.state.value, event.reason.value)
        with self._lock:
            counts = self._transitions.setdefault(breaker, {})
            counts[key] = counts.get(key, 0) + 1
        attributes = {
            ATTR_NAME: event.name,
            ATTR_PREVIOUS_STATE: key[0],
            ATTR_STATE: key[1],
            ATTR_REASON: key[2],
        }
        line = f"circuit breaker {event.name!r} {key[0]} -> {key[1]} ({key[2]})"
        opening = event.state in _OPENING
        span = trace.get_current_span()
        if span.is_recording():
            self._state_change_events(span, attributes, line, opening)
        elif self._tracer is not None:
            # A transition no span would show (force_open() from a console, a
            # timer): a short span of its own carries the events.
            with self._tracer.start_as_current_span(
                "circuit_breaker.transition", kind=trace.SpanKind.INTERNAL, attributes=attributes,
                record_exception=False, set_status_on_exception=False,
            ) as own:
                self._state_change_events(own, attributes, line, opening)
        # The record carries the event name, so a handler can tell transition lines from notices.
        logger.log(logging.WARNING if opening else logging.INFO, "%s", line,
                   extra={"otel_cb_event": STATE_CHANGE_EVENT})

    def _state_change_events(self, span: trace.Span, attributes: dict[str, str], line: str, opening: bool) -> None:
        if self.span_events:
            span.add_event(STATE_CHANGE_EVENT, attributes)
        if self.log_events:
            self._log_event(STATE_CHANGE_EVENT, attributes, line,
                            SeverityNumber.WARN if opening else SeverityNumber.INFO)

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        # The rejection path is hot while a dependency is down: nothing is built
        # unless a span records or a log event is due.
        span = _current_span()
        recording = span.is_recording()
        due = self.log_events and self.rejections.allow(error.name)
        if not (recording or due):
            return
        attributes: dict[str, str | float] = {ATTR_NAME: error.name, ATTR_STATE: error.state.value}
        if error.retry_after is not None:
            attributes[ATTR_RETRY_AFTER] = error.retry_after
        if recording:
            if self.span_events:
                span.add_event(REJECTED_EVENT, attributes)
            span.set_attributes({ATTR_NAME: error.name, ATTR_STATE: error.state.value})
            span.set_status(StatusCode.ERROR, f"circuit breaker {error.name!r} is {error.state.value}: call rejected")
        if due:
            line = f"circuit breaker {error.name!r} is {error.state.value}: call rejected"
            self._log_event(REJECTED_EVENT, attributes, line, SeverityNumber.INFO)

    def fallback_served(self, breaker: CircuitBreaker, outcome: str) -> None:
        if not self.span_events:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(FALLBACK_EVENT, {ATTR_NAME: breaker.name, ATTR_OUTCOME: outcome})

    def _log_event(self, name: str, attributes: dict[str, str] | dict[str, str | float], body: str,
                   severity: SeverityNumber) -> None:
        events = self._events
        if events is None:
            return
        # The record takes the current context, so it is correlated with the current span.
        events.emit(event_name=name, attributes={"event.name": name, **attributes}, body=body,
                    severity_number=severity, severity_text=severity.name)


class _Callbacks(list[Callable[[CallbackOptions], Iterable[Observation]]]):
    """The hook gauge's callbacks, which also tell when an SDK meter provider appears.

    The API has no event for a provider being installed; but a real meter
    reads an observable instrument's callbacks when it makes the instrument,
    which the API's proxy does the moment the application sets its provider.
    Duration buckets start then, not at the first collection.
    """

    def __iter__(self) -> Iterator[Callable[[CallbackOptions], Iterable[Observation]]]:
        if telemetry.enabled and not telemetry.histogram_enabled:
            telemetry.enable_histograms()
        return super().__iter__()


def _has_tracer_or_logger_provider() -> bool:
    return (not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
            or not isinstance(_logs.get_logger_provider(), (_logs._internal.ProxyLoggerProvider,
                                                             _logs.NoOpLoggerProvider)))


def _has_meter_provider() -> bool:
    """True once the application (or ``configure()``) installed a meter provider."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    return not isinstance(metrics.get_meter_provider(), (_ProxyMeterProvider, NoOpMeterProvider))


def live_breakers() -> list[CircuitBreaker]:
    """Every breaker alive in the process, whenever and however it was made."""
    # Another thread may make a breaker while we copy; a retry is cheaper than
    # a lock around every breaker's construction.
    for _ in range(10):
        try:
            return list(_observers.live_breakers)
        except RuntimeError:
            continue
    return []


telemetry = _Telemetry()
"""The one observer; on by default, ``disable()`` unregisters it."""
os.register_at_fork(after_in_child=telemetry._after_fork)


def enable(events: str | None = None) -> None:
    """Report every breaker through OpenTelemetry (idempotent; on by default).

    Telemetry is on without this call: it goes through the API's global
    providers, a no-op until the application installs an SDK (before or after
    the breakers are made). Call it to turn telemetry back on after
    ``disable()``, or against ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
    (explicit code wins), or to choose where events go.

    Args:
        events: ``"span"`` (span events only), ``"log"`` (log records through
            the Logs API only) or ``"span,log"`` (both, the default); None keeps
            the current choice (``OTEL_CB_EVENTS`` at start).

    Raises:
        ValueError: ``events`` is none of these.
    """
    telemetry.enable(events)


def enable_by_default() -> None:
    """Turn telemetry on unless ``disable()`` was called or the environment opts out.

    ``otel_cb`` (or ``*``) in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` opts
    out; ``OTEL_CB_EVENTS`` chooses span events, log events or both (a value
    otel-cb does not know is logged once, and both are kept).
    """
    if telemetry.turned_off or telemetry.enabled:
        return
    skipped = {name.strip().lower() for name in os.environ.get(DISABLED_ENV, "").split(",")}
    if skipped & {"otel_cb", "otel-cb", "*"}:
        return
    events = None
    if os.environ.get(EVENTS_ENV, "").strip():
        try:
            parse_events(os.environ[EVENTS_ENV])
            events = os.environ[EVENTS_ENV]
        except ValueError as exc:
            logger.error("otel-cb telemetry: %s; span and log events are both on", exc)
    telemetry.enable(events)


def add_duration_histogram(reader: MetricReader) -> MetricReader:
    """Make ``reader`` export otel-cb's metrics, ``circuit_breaker.call.duration`` included.

    The readers of the global meter provider need no call: they are found at
    their first collection. Call this for a reader of a provider you did not
    make global. It turns on duration buckets in every breaker (about a tenth
    of a microsecond per call, the only per-call cost of telemetry).
    Idempotent; nothing is exported while telemetry is disabled.

    Args:
        reader: Any SDK metric reader (``PeriodicExportingMetricReader``,
            ``PrometheusMetricReader``, ``InMemoryMetricReader``), before or
            after it is given to a ``MeterProvider``.

    Returns:
        The same reader, so it can wrap the reader's construction in one line.
    """
    from . import _metrics  # the SDK is there: ``reader`` is one of its readers

    _metrics.hook(reader, telemetry)
    telemetry.enable_histograms()
    return reader


def disable() -> None:
    """Stop reporting (idempotent): no more span events, log events, logs or metrics."""
    telemetry.disable()


def is_enabled() -> bool:
    """True while telemetry reports (by default, or after ``enable()``), until ``disable()``."""
    return telemetry.enabled
