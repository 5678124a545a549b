"""The telemetry observer: span events, transition logs and observable instruments.

This module owns what otel-cb tells OpenTelemetry through the *API* only
(``opentelemetry.trace`` and ``opentelemetry.metrics``): span events and
attributes on the span current when something happens, the ``otel_cb``
logger's transition lines, and the observable instruments that read each
breaker's plain counters when a metric reader collects. It leaves the SDK,
exporters and the duration histogram's export to ``_configure`` and
``_durations``, and the call path to the core, which never imports it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, StatusCode

from .. import _observers
from .._breaker import BreakerSnapshot, CircuitBreaker
from .._errors import CircuitOpenError
from .._state import CircuitState, StateChangeEvent
from .._version import __version__

__all__ = [
    "ATTR_NAME", "ATTR_STATE", "ATTR_PREVIOUS_STATE", "ATTR_OUTCOME", "ATTR_REASON", "ATTR_RETRY_AFTER",
    "SCOPE", "annotate_current_span", "enable", "disable", "is_enabled", "live_breakers", "telemetry",
]

SCOPE = "otel_cb"
ATTR_NAME = "circuit_breaker.name"
ATTR_STATE = "circuit_breaker.state"
ATTR_PREVIOUS_STATE = "circuit_breaker.previous_state"
ATTR_OUTCOME = "circuit_breaker.outcome"
ATTR_REASON = "circuit_breaker.reason"
ATTR_RETRY_AFTER = "circuit_breaker.retry_after"

logger = logging.getLogger("otel_cb")

_OPENING = (CircuitState.OPEN, CircuitState.FORCED_OPEN)


def annotate_current_span(breaker: CircuitBreaker, state: CircuitState | str | None = None) -> None:
    """Put ``circuit_breaker.name`` and ``circuit_breaker.state`` on the current span.

    Integrations call this right after a breaker admitted a call, so the
    client span (HTTP, gRPC, database) says which breaker guarded it and in
    which state; Jaeger's tag search then finds every call a breaker touched.
    It works whether or not ``enable()`` was called, and costs one context
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
    span.set_attributes({ATTR_NAME: breaker.name, ATTR_STATE: str(state)})


class _Telemetry:
    """The process-wide observer; one instance, registered by ``enable()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.enabled = False
        self._instruments_created = False
        self._tracer: trace.Tracer | None = None
        # Transitions per breaker, counted here because the core keeps none.
        self._transitions: weakref.WeakKeyDictionary[CircuitBreaker, dict[tuple[str, str, str], int]] = (
            weakref.WeakKeyDictionary()
        )
        self.histogram_enabled = False

    # -- lifecycle --------------------------------------------------------------

    def enable(self) -> None:
        with self._lock:
            if self.enabled:
                return
            self._tracer = trace.get_tracer(SCOPE, __version__)
            if not self._instruments_created:
                self._create_instruments(metrics.get_meter(SCOPE, __version__))
                self._instruments_created = True
            self.enabled = True
        _observers.add_observer(self)
        if self.histogram_enabled:
            # Breakers made while disabled were not seen by breaker_created.
            self.enable_histograms()

    def disable(self) -> None:
        _observers.remove_observer(self)
        with self._lock:
            # The API cannot unregister an instrument; a disabled observer's
            # callbacks report nothing instead.
            self.enabled = False

    def enable_histograms(self) -> None:
        """Start keeping call durations in every breaker (the duration export needs them)."""
        self.histogram_enabled = True
        for breaker in live_breakers():
            breaker.enable_duration_histogram()

    # -- observer hooks (called by the core through _observers) ----------------

    def breaker_created(self, breaker: CircuitBreaker) -> None:
        if self.histogram_enabled:
            breaker.enable_duration_histogram()

    def state_changed(self, breaker: CircuitBreaker, event: StateChangeEvent) -> None:
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
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("circuit_breaker.state_change", attributes)
        elif self._tracer is not None:
            # A transition no span would show (force_open() from a console, a
            # timer): a short span of its own carries the event.
            with self._tracer.start_as_current_span(
                "circuit_breaker.transition", kind=trace.SpanKind.INTERNAL, attributes=attributes,
                record_exception=False, set_status_on_exception=False,
            ) as own:
                own.add_event("circuit_breaker.state_change", attributes)
        if event.state in _OPENING:
            logger.warning("circuit breaker %r %s -> %s (%s)", event.name, key[0], key[1], key[2])
        else:
            logger.info("circuit breaker %r %s -> %s (%s)", event.name, key[0], key[1], key[2])

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, str | float] = {ATTR_NAME: error.name, ATTR_STATE: error.state.value}
        if error.retry_after is not None:
            attributes[ATTR_RETRY_AFTER] = error.retry_after
        span.add_event("circuit_breaker.rejected", attributes)
        span.set_attributes({ATTR_NAME: error.name, ATTR_STATE: error.state.value})
        span.set_status(StatusCode.ERROR, f"circuit breaker {error.name!r} is {error.state.value}: call rejected")

    def fallback_served(self, breaker: CircuitBreaker, outcome: str) -> None:
        span: Span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "circuit_breaker.fallback",
                {ATTR_NAME: breaker.name, ATTR_OUTCOME: outcome},
            )

    # -- observable instruments --------------------------------------------------

    def _create_instruments(self, meter: metrics.Meter) -> None:
        for name, kind, unit, description, extract in _INSTRUMENTS:
            if kind == "counter":
                meter.create_observable_counter(name, [self._callback(extract, True)], unit=unit,
                                                description=description)
            else:
                meter.create_observable_gauge(name, [self._callback(extract, False)], unit=unit,
                                              description=description)
        meter.create_observable_counter(
            "circuit_breaker.transitions", [self._observe_transitions], unit="{transition}",
            description="State transitions by previous state, state and reason",
        )
        meter.create_observable_gauge(
            "circuit_breaker.shared_state.local", [self._observe_local], unit="{breaker}",
            description="For breakers with shared state (otel_cb.shared): 1 while running on local state "
                        "because the shared store is unreachable, else 0",
        )

    def _callback(self, extract: _Extract, add: bool) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.enabled:
                return []
            series: _Series = {}
            for breaker in live_breakers():
                snap = breaker.snapshot()
                for value, attributes in extract(snap):
                    _merge(series, ((ATTR_NAME, snap.name), *sorted(attributes.items())), value, add)
            return _observations(series)
        return observe

    def _observe_transitions(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.enabled:
            return []
        with self._lock:
            rows = [(breaker.name, dict(counts)) for breaker, counts in self._transitions.items()]
        series: _Series = {}
        for name, counts in rows:
            for (previous, state, reason), count in counts.items():
                key = ((ATTR_NAME, name), (ATTR_PREVIOUS_STATE, previous), (ATTR_STATE, state), (ATTR_REASON, reason))
                _merge(series, key, count, True)
        return _observations(series)


    def _observe_local(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.enabled:
            return []
        series: _Series = {}
        for breaker in live_breakers():
            shared = breaker.shared_state
            if shared is not None:  # only breakers that share state have this series
                _merge(series, ((ATTR_NAME, breaker.name),), float(bool(getattr(shared, "running_locally", False))),
                       False)
        return _observations(series)


_Series = dict[tuple[tuple[str, str], ...], float]


def _merge(series: _Series, key: tuple[tuple[str, str], ...], value: float, add: bool) -> None:
    """One series per attribute set: breakers that share a name (made outside the
    registry) add up their counts; for a gauge the last one stands."""
    series[key] = series.get(key, 0) + value if add else value


def _observations(series: _Series) -> list[Observation]:
    return [Observation(value, dict(key)) for key, value in series.items()]


_Extract = Callable[[BreakerSnapshot], Iterable[tuple[float, dict[str, str]]]]


def _by_outcome(counts: dict[str, int]) -> list[tuple[float, dict[str, str]]]:
    return [(count, {ATTR_OUTCOME: outcome}) for outcome, count in counts.items()]


def _alone(value: float) -> list[tuple[float, dict[str, str]]]:
    return [(value, {})]


# The observable instruments read from each breaker's snapshot at collection
# time: name, kind, unit, description, and what a snapshot yields
# (value, attributes besides circuit_breaker.name). The names are a contract.
_INSTRUMENTS: tuple[tuple[str, str, str, str, _Extract], ...] = (
    ("circuit_breaker.calls", "counter", "{call}",
     "Calls through the breaker by outcome (success, failure, ignored, rejected)",
     lambda snap: _by_outcome(snap.calls)),
    ("circuit_breaker.slow_calls", "counter", "{call}",
     "Calls at least slow_call_duration long, by outcome (success, failure)",
     lambda snap: _by_outcome(snap.slow_calls)),
    ("circuit_breaker.state", "gauge", "1",
     "1 for the breaker's current state, 0 for every other state",
     lambda snap: [(1 if state is snap.state else 0, {ATTR_STATE: state.value}) for state in CircuitState]),
    ("circuit_breaker.failure_rate", "gauge", "1",
     "Failed share of the calls in the closed-state window (0..1)",
     lambda snap: _alone(snap.failure_rate)),
    ("circuit_breaker.slow_call_rate", "gauge", "1",
     "Slow share of the calls in the closed-state window (0..1)",
     lambda snap: _alone(snap.slow_call_rate)),
    ("circuit_breaker.buffered_calls", "gauge", "{call}",
     "Calls the closed-state window holds",
     lambda snap: _alone(snap.buffered_calls)),
    ("circuit_breaker.fallbacks", "counter", "{call}",
     "Fallbacks served, by outcome (success, failure)",
     lambda snap: _by_outcome(snap.fallbacks)),
    ("circuit_breaker.time_in_state", "counter", "s",
     "Seconds spent in each state since the breaker was made",
     lambda snap: [(seconds, {ATTR_STATE: state.value}) for state, seconds in snap.time_in_state.items()]),
    ("circuit_breaker.health_checks", "counter", "{check}",
     "Health checks run, by outcome (passed, failed)",
     lambda snap: _by_outcome(snap.health_checks)),
)


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
"""The one observer; ``enable()`` registers it."""


def enable() -> None:
    """Report every breaker through OpenTelemetry (idempotent).

    Registers the process-wide observer that adds span events and logs
    transitions, and the observable instruments on the global meter
    (instrumentation scope ``otel_cb``), which read each breaker's own counters
    when a metric reader collects; breakers made before this call are
    reported too. With no SDK installed, the API's no-op providers make all of
    this free. Install providers first (``configure()``) or at any time later:
    the API hands the instruments over once a provider is set.
    """
    telemetry.enable()


def disable() -> None:
    """Stop reporting (idempotent): no more span events, logs or observations."""
    telemetry.disable()


def is_enabled() -> bool:
    """True between ``enable()`` and ``disable()``."""
    return telemetry.enabled
