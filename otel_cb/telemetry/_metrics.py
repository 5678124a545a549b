"""Every breaker's metrics as finished data, handed to the SDK's metric readers in one pass.

Recording an SDK instrument on every call costs more than the breaker
itself, and the SDK's observable-instrument path costs 10-20 us per point at
collection (an ``Observation``, an attribute-set lookup and an aggregation
each): at 1,000 breakers and 22 points each, a quarter of a core at a 5 s
interval. So the breakers keep plain counters and bucketed durations, and
at each collection this module builds the finished ``Metric`` data itself:
attribute dicts are made once per breaker name and reused, points are built
without the dataclass ``__init__``, and a breaker is read with its cheap
``activity()``, with a ``snapshot()`` only when that changed since the last
collection (most of 1,000 breakers are idle between two collections: their
counts are the ones kept from last time). ``circuit_breaker.health_checks``
is left out for breakers without a health check (always 0: no information).

The SDK has no public hook for pre-aggregated data; every reader (periodic
exporter, Prometheus, in-memory) goes through ``_receive_metrics`` after a
collection, so ``hook()`` extends that step of one reader. The readers of
the global meter provider are hooked from inside their own first collection
(``_core``'s observable gauge calls ``hook_global_readers``), so an
application's own providers get otel-cb's metrics without any call;
``_core.add_duration_histogram`` hooks any other reader.

``_core`` imports this module (lazily: this one needs the SDK, ``_core`` must
not), so this one does not import ``_core``: ``_core`` hands in its observer
as the ``Source`` a collection reads, and the names both use come from ``_names``.

Names, units and attributes are a contract (the README lists them); every
metric is cumulative whatever temporality the reader prefers, and views do
not apply to them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import replace
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .._breaker import BreakerSnapshot, CircuitBreaker
from .._state import CircuitState
from .._stats import HistogramData
from .._version import __version__
from ._names import ATTR_NAME, ATTR_OUTCOME, ATTR_PREVIOUS_STATE, ATTR_REASON, ATTR_STATE, COLLECTION_HOOK, SCOPE

__all__ = ["DURATION_METRIC", "METRICS", "Source", "collect", "hook", "hook_global_readers"]

DURATION_METRIC = "circuit_breaker.call.duration"
logger = logging.getLogger("otel_cb")
_MARK = "_otel_cb_metrics"
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_STATES = tuple(CircuitState)

# name -> (kind, unit, description); the order of the export. The names are a contract.
METRICS: dict[str, tuple[str, str, str]] = {
    "circuit_breaker.calls": ("counter", "{call}",
                              "Calls through the breaker by outcome (success, failure, ignored, rejected)"),
    "circuit_breaker.slow_calls": ("counter", "{call}",
                                   "Calls at least slow_call_duration long, by outcome (success, failure)"),
    "circuit_breaker.state": ("gauge", "1", "1 for the breaker's current state, 0 for every other state"),
    "circuit_breaker.failure_rate": ("gauge", "1", "Failed share of the calls in the closed-state window (0..1)"),
    "circuit_breaker.slow_call_rate": ("gauge", "1", "Slow share of the calls in the closed-state window (0..1)"),
    "circuit_breaker.buffered_calls": ("gauge", "{call}", "Calls the closed-state window holds"),
    "circuit_breaker.fallbacks": ("counter", "{call}", "Fallbacks served, by outcome (success, failure, refused)"),
    "circuit_breaker.health_checks": ("counter", "{check}",
                                      "Health checks run, by outcome (passed, failed); breakers with a health "
                                      "check only"),
    "circuit_breaker.time_in_state": ("counter", "s", "Seconds spent in each state since the breaker was made"),
    "circuit_breaker.transitions": ("counter", "{transition}",
                                    "State transitions by previous state, state and reason"),
    "circuit_breaker.shared_state.local": (
        "gauge", "{breaker}", "For breakers with shared state (otel_cb.shared): 1 while running on local state "
                              "because the shared store is unreachable, else 0"),
    DURATION_METRIC: ("histogram", "s",
                      "Duration of calls through the breaker, by outcome (success, failure, ignored)"),
}



class Source(Protocol):
    """What a collection reads from the telemetry observer (``_core.telemetry`` is the one)."""

    @property
    def enabled(self) -> bool:
        """False while telemetry is disabled: a collection then reports nothing."""

    def transitions(self) -> list[tuple[CircuitBreaker, dict[tuple[str, str, str], int]]]:
        """(breaker, {(previous, state, reason): count}) for every breaker that changed state."""

    def live_breakers(self) -> list[CircuitBreaker]:
        """Every breaker alive in the process."""


_new = object.__new__
# The number metrics, in the order of a breaker's flat value list (see _Name.layout_for).
_NUMBERS = ("circuit_breaker.calls", "circuit_breaker.slow_calls", "circuit_breaker.fallbacks",
            "circuit_breaker.health_checks", "circuit_breaker.time_in_state", "circuit_breaker.state",
            "circuit_breaker.failure_rate", "circuit_breaker.slow_call_rate", "circuit_breaker.buffered_calls")
_CALLS, _SLOW, _FALLBACKS, _HEALTH, _TIME, _STATE, _FAILURE_RATE, _SLOW_RATE, _BUFFERED = range(len(_NUMBERS))

Keys = tuple[tuple[Any, ...], ...]
Layout = list[tuple[int, dict[str, str], int | None]]


class _Name:
    """What one breaker name keeps between collections: attributes, start time, layout, last counts.

    ``layout`` says, for each value of the breaker's flat value list, which
    metric it belongs to, with which attributes and start time; it is made
    once per name (and again only if the snapshot's keys change). The counts
    of the last ``snapshot()`` are kept with the breaker's ``activity()`` at
    the time: while that stays the same, they are still the breaker's counts,
    and an idle breaker costs its ``activity()`` and its points, no snapshot.
    """

    __slots__ = ("activity", "alone", "counts", "durations", "keys", "layout", "name", "one_hot", "outcomes",
                 "position", "ref", "seconds", "start")

    def __init__(self, name: str, start: int) -> None:
        self.name = name
        self.start = start
        self.alone = {ATTR_NAME: name}
        self.keys: Keys = ()
        self.layout: Layout = []
        self.one_hot: dict[CircuitState, tuple[int, ...]] = {}
        self.position: dict[CircuitState, int] = {}
        self.outcomes: dict[str, dict[str, str]] = {}
        self.activity: int | None = None  # None: the counts are not one breaker's (or not read yet)
        self.ref: weakref.ref[CircuitBreaker] | None = None
        self.counts: tuple[int, ...] = ()
        self.seconds: list[float] = []
        self.durations: dict[str, HistogramData] = {}

    def of_outcome(self, outcome: str) -> dict[str, str]:
        found = self.outcomes.get(outcome)
        if found is None:
            found = self.outcomes[outcome] = {ATTR_NAME: self.name, ATTR_OUTCOME: outcome}
        return found

    def remember(self, snap: BreakerSnapshot, health: bool, breaker: CircuitBreaker | None,
                 activity: int | None) -> None:
        """Keep ``snap``'s counts, read when ``breaker`` had this ``activity`` (None: never reused)."""
        calls, slow, fallbacks, checks, seconds = (snap.calls, snap.slow_calls, snap.fallbacks,
                                                   snap.health_checks if health else {}, snap.time_in_state)
        self.layout_for((tuple(calls), tuple(slow), tuple(fallbacks), tuple(checks), tuple(seconds)))
        self.counts = (*calls.values(), *slow.values(), *fallbacks.values(), *checks.values())
        self.seconds = list(seconds.values())
        self.durations = snap.durations
        self.activity = activity
        if breaker is None:
            self.ref = None
        elif self.ref is None or self.ref() is not breaker:
            self.ref = weakref.ref(breaker)

    def layout_for(self, keys: Keys) -> Layout:
        """The layout for a snapshot whose dicts have these keys, in this order (calls, slow
        calls, fallbacks, health checks, states); the states' order is also that of the
        one-hot state values and of ``seconds``."""
        if keys != self.keys:
            name, start, alone = self.name, self.start, self.alone
            layout: Layout = [
                (index, {ATTR_NAME: name, ATTR_OUTCOME: outcome}, start)
                for index, outcomes in zip((_CALLS, _SLOW, _FALLBACKS, _HEALTH), keys, strict=False)
                for outcome in outcomes]
            states: tuple[CircuitState, ...] = keys[4]
            by_state = [{ATTR_NAME: name, ATTR_STATE: state.value} for state in states]
            layout += [(_TIME, attributes, start) for attributes in by_state]
            layout += [(_STATE, attributes, None) for attributes in by_state]
            layout += [(_FAILURE_RATE, alone, None), (_SLOW_RATE, alone, None), (_BUFFERED, alone, None)]
            self.one_hot = {state: tuple(int(other is state) for other in states) for state in _STATES}
            self.position = {state: index for index, state in enumerate(states)}
            self.keys, self.layout = keys, layout
        return self.layout


# One breaker's numbers at a collection: its _Name (whose counts are current), the
# seconds in each state, the state, the window gauges, 1/0 for running on local state.
_Row = tuple[_Name, list[float], CircuitState, float, float, int, int | None]


class _Collector:
    """Builds the finished metrics of every breaker; one collection at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, _Name] = {}

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def collect(self, source: Source) -> list[Metric]:
        with self._lock:
            return self._collect(source)

    def _read(self, breakers: list[CircuitBreaker], now: int) -> tuple[dict[str, _Name], list[_Row]]:
        """Every breaker's row, from its ``activity()`` alone while that stays the same."""
        by_name: dict[str, CircuitBreaker] = {}
        twins: dict[str, list[CircuitBreaker]] = {}
        for breaker in breakers:
            first = by_name.setdefault(breaker.name, breaker)
            if first is not breaker:  # made outside the registry under a name in use
                twins.setdefault(breaker.name, [first]).append(breaker)
        names: dict[str, _Name] = {}
        old = self._names
        rows: list[_Row] = []
        for name, breaker in by_name.items():
            if name in twins:
                continue
            activity, state, seconds, buffered, failures, slow = breaker.activity()
            cached = names[name] = old.get(name) or _Name(name, now)
            ref = cached.ref
            if activity == cached.activity and ref is not None and ref() is breaker:
                times = cached.seconds.copy()
                times[cached.position[state]] = seconds
                failure_rate = failures / buffered if buffered else 0.0
                slow_rate = slow / buffered if buffered else 0.0
            else:
                snap = breaker.snapshot()
                cached.remember(snap, breaker.health_check is not None or any(snap.health_checks.values()),
                                breaker, activity)
                times, state, failure_rate, slow_rate, buffered = (cached.seconds, snap.state, snap.failure_rate,
                                                                    snap.slow_call_rate, snap.buffered_calls)
            rows.append((cached, times, state, failure_rate, slow_rate, buffered, _local(breaker)))
        for name, group in twins.items():
            # Their counts add up; for a gauge the last one stands; never reused (activity None).
            snap, local = _merge_names([(breaker.snapshot(), _local(breaker)) for breaker in group])[0]
            cached = names[name] = old.get(name) or _Name(name, now)
            cached.remember(snap, any(snap.health_checks.values()), None, None)
            rows.append((cached, cached.seconds, snap.state, snap.failure_rate, snap.slow_call_rate,
                         snap.buffered_calls, local))
        return names, rows

    def _collect(self, source: Source) -> list[Metric]:
        now = time.time_ns()
        names, rows = self._read(source.live_breakers(), now)
        moves: dict[str, dict[tuple[str, str, str], int]] = {}
        for breaker, counts in source.transitions():
            mine = moves.setdefault(breaker.name, {})
            for key, count in counts.items():
                mine[key] = mine.get(key, 0) + count

        numbers: list[list[NumberDataPoint]] = [[] for _ in _NUMBERS]
        appenders = [points.append for points in numbers]
        transitions: list[NumberDataPoint] = []
        local_points: list[NumberDataPoint] = []
        durations: list[HistogramDataPoint] = []
        new, point_class = _new, NumberDataPoint
        no_moves: dict[tuple[str, str, str], int] = {}
        for cached, times, state, failure_rate, slow_rate, buffered, local in rows:
            name = cached.name
            values = (*cached.counts, *times, *cached.one_hot[state], failure_rate, slow_rate, buffered)
            for (index, attributes, start), value in zip(cached.layout, values, strict=True):
                # The frozen dataclass's __init__ costs twice what the rest of
                # the collection does per point; the same fields, set directly.
                point = new(point_class)
                fields = point.__dict__
                fields["attributes"] = attributes
                fields["start_time_unix_nano"] = start
                fields["time_unix_nano"] = now
                fields["value"] = value
                fields["exemplars"] = ()
                appenders[index](point)
            if local is not None:
                local_points.append(NumberDataPoint(cached.alone, None, now, local))  # type: ignore[arg-type]
            for (previous, new_state, reason), count in moves.get(name, no_moves).items():
                transitions.append(NumberDataPoint({ATTR_NAME: name, ATTR_PREVIOUS_STATE: previous,
                                                    ATTR_STATE: new_state, ATTR_REASON: reason},
                                                   cached.start, now, count))
            for outcome, data in cached.durations.items():
                histogram: HistogramDataPoint = new(HistogramDataPoint)
                fields = histogram.__dict__
                fields["attributes"] = cached.of_outcome(outcome)
                fields["start_time_unix_nano"] = cached.start
                fields["time_unix_nano"] = now
                fields["count"] = data.count
                fields["sum"] = data.sum
                fields["bucket_counts"] = data.bucket_counts
                fields["explicit_bounds"] = data.boundaries
                # Not kept, to keep the call path cheap; optional in OTLP, and
                # the OTLP encoder leaves a None unset.
                fields["min"] = fields["max"] = None
                fields["exemplars"] = ()
                durations.append(histogram)
        # Names no breaker has any more are forgotten (bounded memory).
        self._names = names
        found: dict[str, list[Any]] = dict(zip(_NUMBERS, numbers, strict=True))
        found["circuit_breaker.transitions"] = transitions
        found["circuit_breaker.shared_state.local"] = local_points
        found[DURATION_METRIC] = durations
        return [_metric(name, found[name]) for name in METRICS if found[name]]


def _local(breaker: CircuitBreaker) -> int | None:
    """1 while a breaker with shared state runs on local state, 0 while on shared; None without."""
    shared = breaker.shared_state
    return None if shared is None else int(bool(getattr(shared, "running_locally", False)))


def _merge_names(rows: list[tuple[BreakerSnapshot, int | None]]) -> list[tuple[BreakerSnapshot, int | None]]:
    """One row per name: breakers that share a name (made outside the registry) add up
    their counts; for a gauge the last one stands."""
    merged: dict[str, tuple[BreakerSnapshot, int | None]] = {}
    for snap, local in rows:
        seen = merged.get(snap.name)
        if seen is None:
            merged[snap.name] = (snap, local)
            continue
        first, first_local = seen
        merged[snap.name] = (replace(
            snap, calls=_add(first.calls, snap.calls), slow_calls=_add(first.slow_calls, snap.slow_calls),
            fallbacks=_add(first.fallbacks, snap.fallbacks),
            time_in_state=_add(first.time_in_state, snap.time_in_state),
            health_checks=_add(first.health_checks, snap.health_checks),
            durations=_merge_durations(first.durations, snap.durations),
        ), first_local if local is None else local)
    return list(merged.values())


def _add(mine: dict[Any, Any], theirs: dict[Any, Any]) -> dict[Any, Any]:
    total = dict(mine)
    for key, value in theirs.items():
        total[key] = total.get(key, 0) + value
    return total


def _merge_durations(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    merged = dict(mine)
    for outcome, data in theirs.items():
        seen = merged.get(outcome)
        if seen is None or seen.boundaries != data.boundaries:
            merged[outcome] = data
        else:
            merged[outcome] = type(data)(data.boundaries, tuple(a + b for a, b in zip(
                seen.bucket_counts, data.bucket_counts, strict=True)), seen.count + data.count, seen.sum + data.sum)
    return merged


def _metric(name: str, points: list[Any]) -> Metric:
    kind, unit, description = METRICS[name]
    data: Any
    if kind == "counter":
        data = Sum(data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=True)
    elif kind == "gauge":
        data = Gauge(data_points=points)
    else:
        data = Histogram(data_points=points, aggregation_temporality=_CUMULATIVE)
    return Metric(name=name, description=description, unit=unit, data=data)


_collector = _Collector()
_failed = False
os.register_at_fork(after_in_child=_collector._after_fork)


def collect(source: Source) -> list[Metric]:
    """Every breaker of ``source``'s metrics now (empty while ``source`` is disabled)."""
    if not source.enabled:
        return []
    return _collector.collect(source)


def hook(reader: MetricReader, source: Source) -> MetricReader:
    """Make ``reader`` receive ``source``'s metrics with every collection (idempotent)."""
    receive = reader._receive_metrics
    if getattr(receive, _MARK, False):
        return reader

    def receive_with_breakers(metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        metrics_data = _extend(metrics_data, source)
        # Only the hook's point, and no breaker: nothing to export, as the SDK does when it has no data.
        if any(rm.scope_metrics for rm in metrics_data.resource_metrics):
            receive(metrics_data, timeout_millis=timeout_millis, **kwargs)

    setattr(receive_with_breakers, _MARK, True)
    # An instance attribute shadows the class's method for this reader only.
    reader._receive_metrics = receive_with_breakers  # type: ignore[method-assign]
    return reader


def hook_global_readers(source: Source) -> None:
    """Hook every reader of the global SDK meter provider to ``source`` (called while one of them collects)."""
    provider = metrics.get_meter_provider()
    consumer = getattr(provider, "_measurement_consumer", None)
    if consumer is None:
        return
    for reader in list(MeterProvider._all_metric_readers):
        if getattr(getattr(reader, "_collect", None), "__self__", None) is consumer:
            hook(reader, source)


def _extend(metrics_data: MetricsData, source: Source) -> MetricsData:
    """The collection with the hook's point swapped for every breaker's metrics."""
    global _failed
    if not metrics_data.resource_metrics:
        return metrics_data
    try:
        found = collect(source)
    except Exception:
        # A bug here must cost otel-cb's metrics, never the application's.
        found = []
        if not _failed:
            _failed = True
            logger.error("otel-cb could not export its metrics; other metrics go on", exc_info=True)
    first, *rest = metrics_data.resource_metrics
    scopes = []
    for scope_metrics in first.scope_metrics:
        if scope_metrics.scope.name != SCOPE:
            scopes.append(scope_metrics)
            continue
        kept = [metric for metric in scope_metrics.metrics if metric.name != COLLECTION_HOOK]
        if kept or found:
            scopes.append(ScopeMetrics(scope_metrics.scope, [*kept, *found], scope_metrics.schema_url))
        found = []
    if found:
        scopes.append(ScopeMetrics(InstrumentationScope(SCOPE, __version__), found, ""))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])
