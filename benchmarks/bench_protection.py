"""Protection: how each breaker library trips, rides out noise and recovers, on one outcome trace.

Every library guards the same simulated dependency on a virtual clock (each
library's own time source is pointed at it), call after call, with the same
seeded outcome trace; no real time passes, so the figures are exact counts,
reproducible from the seed. Scenarios:

- clean outage: 100 calls/s, a clean dependency that goes dead ``outages``
  times, for 45 to 200 s each, with 60 to 240 s of health in between;
- brownout: the same, but 60 % of calls fail during each episode (30 to 120 s);
- random noise: 1 M calls failing independently at 5 % and at 10 %: every trip
  is a false trip;
- outage at 1 call/s: the clean outages again, at one call a second;
- shallow health check: the clean outages with a health check that says
  healthy while the dependency is dead.

Figures per outage: calls let through to the dead dependency; of those, user
calls sent as probes after the breaker tripped; time to trip (from the first
failed call to the trip, counting the tripping call); recovery lag (from the
dependency's recovery until no call is refused any more) and the calls
refused in it. A library that never trips in an outage lets all of it through.

Libraries, with their defaults where they have them and a 30 s open timeout:
pybreaker (``fail_max=5``), circuitbreaker (``failure_threshold=5``),
interlock-cb (failure rate 0.5 over its default 100-call window, minimum 10
calls), otel-cb with its default config, with ``adaptive=False`` (the classic
consecutive-failure rule), and with a health check driven once per simulated
second (``breaker.check_health()``, ``health_check_interval=None``) that
fails while the dependency fails: it is one more request to it.

Usage: ``python -m benchmarks.bench_protection [--seed N] [--outages N]
[--noise-calls N] [--json]``; ``python -m benchmarks.run --only bench_protection``
for the README table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

__all__ = ["TITLE", "measure", "run"]

TITLE = "Protection: tripping, noise and recovery on one outcome trace"

OPEN_TIMEOUT = 30.0


class Boom(Exception):
    """The failure of the simulated dependency."""


class Clock:
    """The virtual clock every library reads."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:  # interlock-cb's Clock protocol
        return self.now


class Dependency:
    """The guarded call: fails when told to, and counts the calls that reached it."""

    __slots__ = ("fails", "calls")

    def __init__(self) -> None:
        self.fails = False
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.fails:
            raise Boom


# -- traces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """A stretch of time during which the dependency fails calls at ``rate``."""

    start: float
    end: float
    rate: float


@dataclass
class Trace:
    """One seeded outcome per call, calls at ``per_second`` a second from t = 0."""

    per_second: int
    fails: bytearray
    episodes: list[Episode]
    baseline: float
    seed: int

    @property
    def calls(self) -> int:
        return len(self.fails)

    def rate_at(self, now: float) -> float:
        for episode in self.episodes:
            if episode.start <= now < episode.end:
                return episode.rate
        return self.baseline


def episode_trace(seed: int, *, episodes: int, per_second: int, rate: float, lengths: tuple[float, float],
                  gaps: tuple[float, float], warm_up: float, baseline: float = 0.0) -> Trace:
    """Healthy stretches and ``episodes`` bad ones, lengths drawn uniformly from the ranges."""
    rng = random.Random(seed)
    spans: list[Episode] = []
    now = warm_up
    for _ in range(episodes):
        length = rng.uniform(*lengths)
        spans.append(Episode(now, now + length, rate))
        now += length + rng.uniform(*gaps)
    calls = math.ceil(now * per_second)
    fails = bytearray(calls)
    draw = rng.random
    index = 0
    for episode in [*spans, Episode(now, now, baseline)]:
        start = math.ceil(episode.start * per_second)
        if baseline:
            for i in range(index, start):
                fails[i] = draw() < baseline
        end = math.ceil(episode.end * per_second)
        if episode.rate >= 1.0:
            fails[start:end] = b"\x01" * (end - start)
        else:
            for i in range(start, end):
                fails[i] = draw() < episode.rate
        index = end
    return Trace(per_second, fails, spans, baseline, seed)


def noise_trace(seed: int, *, calls: int, rate: float, per_second: int = 100) -> Trace:
    """``calls`` outcomes failing independently at ``rate`` (drawn as geometric gaps: fast)."""
    rng = random.Random(seed)
    fails = bytearray(calls)
    log_keep = math.log1p(-rate)
    index = -1
    while True:
        index += 1 + int(math.log(1.0 - rng.random()) / log_keep)
        if index >= calls:
            break
        fails[index] = 1
    return Trace(per_second, fails, [], rate, seed)


# -- the libraries --------------------------------------------------------------------


@dataclass
class Subject:
    """One library (or otel-cb variant) set up on the virtual clock."""

    name: str
    call: Callable[[Dependency], Any]
    trips: list[float]
    patches: list[contextlib.AbstractContextManager[Any]] = field(default_factory=list)
    tick: Callable[[], Any] | None = None  # once per simulated second


def _pybreaker(clock: Clock) -> Subject:
    import pybreaker

    base = datetime(2026, 1, 1, tzinfo=timezone.utc)

    class VirtualDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return base + timedelta(seconds=clock.now)

    trips: list[float] = []

    class Trips(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            if old_state is not None and old_state.name == "closed" and new_state.name == "open":
                trips.append(clock.now)

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=OPEN_TIMEOUT, listeners=[Trips()])
    return Subject("pybreaker", breaker.call, trips, [mock.patch.object(pybreaker, "datetime", VirtualDatetime)])


def _circuitbreaker(clock: Clock) -> Subject:
    import circuitbreaker  # type: ignore[import-untyped]

    breaker = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=int(OPEN_TIMEOUT), name="bench")
    trips: list[float] = []
    closed, opened = circuitbreaker.STATE_CLOSED, circuitbreaker.STATE_OPEN

    def through(dependency: Dependency) -> None:
        dependency()

    guarded = breaker(through)  # its decorator is where it refuses calls (its call() does not)

    def call(dependency: Dependency) -> None:
        # It has no listeners: watch its state around each call.
        before = breaker._state
        try:
            guarded(dependency)
        finally:
            if before == closed and breaker._state == opened:
                trips.append(clock.now)

    return Subject("circuitbreaker", call, trips, [mock.patch.object(circuitbreaker, "monotonic", clock)])


def _interlock(clock: Clock) -> Subject:
    import interlock

    trips: list[float] = []

    class Trips:
        def on_state_change(self, *, name: str, old: Any, new: Any) -> None:
            if old == interlock.State.CLOSED and new == interlock.State.OPEN:
                trips.append(clock.now)

    config = interlock.Config(
        failure_rate_threshold=0.5, minimum_number_of_calls=10,
        slow_call_duration_threshold=5.0, slow_call_rate_threshold=0.5, wait_duration_in_open=OPEN_TIMEOUT,
    )
    # It calls the hooks a listener has: one is enough here.
    breaker = interlock.CircuitBreaker(name="bench", config=config, clock=clock,
                                       listener=Trips())  # type: ignore[arg-type]
    return Subject("interlock-cb", breaker.call, trips)


def _otel_cb(name: str, check: str | None = None, **overrides: Any) -> Builder:
    """otel-cb's default config with ``overrides``; ``check``: ``"deep"`` (fails while the
    dependency fails: one more request to it) or ``"shallow"`` (always says healthy)."""

    def build(clock: Clock, trace: Trace) -> Subject:
        from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitState

        config = CircuitBreakerConfig(open_timeout=OPEN_TIMEOUT, health_check_interval=None, **overrides)
        health: Callable[[], bool] | None = None
        if check == "deep":
            rng = random.Random(trace.seed * 7919 + 1)  # its own draws: the call trace stays the same
            health = lambda: rng.random() >= trace.rate_at(clock.now)  # noqa: E731
        elif check == "shallow":
            health = lambda: True  # noqa: E731
        breaker = CircuitBreaker("bench", config, clock=clock, health_check=health)
        trips: list[float] = []

        def trip(event: Any) -> None:
            if event.previous_state is CircuitState.CLOSED and event.state is CircuitState.OPEN:
                trips.append(event.timestamp)

        def tick() -> None:  # what the background monitor does, once a simulated second
            if breaker.state is CircuitState.OPEN:
                breaker.check_health()

        def call(dependency: Dependency) -> None:
            # Looked up per call: ``breaker.call`` is a stand-in until the first call builds the guard.
            breaker.call(dependency)

        breaker.add_listener(trip)
        return Subject(name, call, trips, tick=tick if health is not None else None)

    return build


Builder = Callable[[Clock, Trace], Subject]

SUBJECTS: list[Builder] = [
    lambda clock, trace: _pybreaker(clock),
    lambda clock, trace: _circuitbreaker(clock),
    lambda clock, trace: _interlock(clock),
    _otel_cb("otel-cb classic", adaptive=False),
    _otel_cb("otel-cb"),
    _otel_cb("otel-cb + health check", check="deep"),
]
SHALLOW = _otel_cb("otel-cb + shallow check", check="shallow")
ANCHORS = ("pybreaker", "circuitbreaker", "interlock-cb")


# -- running a trace ------------------------------------------------------------------


@dataclass
class Run:
    """What one subject did on one trace: which calls it let through, when it tripped."""

    subject: str
    trace: Trace
    admitted: bytearray
    trips: list[float]


def simulate(build: Builder, trace: Trace) -> Run:
    clock = Clock()
    subject = build(clock, trace)
    dependency = Dependency()
    admitted = bytearray(trace.calls)
    fails = trace.fails
    per_second = trace.per_second
    call, tick = subject.call, subject.tick
    with contextlib.ExitStack() as stack:
        for patch in subject.patches:
            stack.enter_context(patch)
        for i in range(trace.calls):
            clock.now = i / per_second
            if tick is not None and i % per_second == 0:
                tick()
            dependency.fails = bool(fails[i])
            before = dependency.calls
            try:
                call(dependency)
            except Exception:
                pass
            if dependency.calls != before:
                admitted[i] = 1
    return Run(subject.name, trace, admitted, subject.trips)


@dataclass
class Figures:
    """Per-episode means (None where no episode tripped)."""

    let_through: float = 0.0
    probes: float = 0.0
    time_to_trip: float | None = None
    recovery_lag: float = 0.0
    refused_after: float = 0.0
    untripped: int = 0
    trips: int = 0


def episode_figures(run: Run) -> Figures:
    trace, admitted = run.trace, run.admitted
    per_second = trace.per_second
    starts = [math.ceil(e.start * per_second) for e in trace.episodes]
    ends = [math.ceil(e.end * per_second) for e in trace.episodes]
    let_through = probes = refused_after = 0
    lag = 0.0
    to_trip: list[float] = []
    untripped = 0
    for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
        following = starts[k + 1] if k + 1 < len(starts) else trace.calls
        let_through += sum(admitted[start:end])
        trip = next((t for t in run.trips if trace.episodes[k].start <= t < trace.episodes[k].end), None)
        if trip is None:
            untripped += 1
        else:
            tripping = round(trip * per_second)
            to_trip.append((tripping - start + 1) / per_second)
            probes += sum(admitted[tripping + 1:end])
        refused = admitted[end:following].count(0)
        refused_after += refused
        if refused:
            last = end + admitted[end:following].rindex(0)
            lag += (last - end + 1) / per_second
    n = len(starts) or 1
    return Figures(let_through / n, probes / n, sum(to_trip) / len(to_trip) if to_trip else None,
                   lag / n, refused_after / n, untripped, len(run.trips))


# -- the measurement ------------------------------------------------------------------


@dataclass
class Settings:
    seed: int = 1
    outages: int = 12
    noise_calls: int = 1_000_000
    slow_outages: int = 6


def scenarios(settings: Settings) -> dict[str, Trace]:
    seed = settings.seed
    return {
        "outage": episode_trace(seed, episodes=settings.outages, per_second=100, rate=1.0, lengths=(45, 200),
                                gaps=(60, 240), warm_up=120),
        "brownout": episode_trace(seed + 1, episodes=settings.outages, per_second=100, rate=0.6,
                                  lengths=(30, 120), gaps=(60, 240), warm_up=120),
        "noise 5 %": noise_trace(seed + 2, calls=settings.noise_calls, rate=0.05),
        "noise 10 %": noise_trace(seed + 3, calls=settings.noise_calls, rate=0.10),
        "outage at 1 call/s": episode_trace(seed + 4, episodes=settings.slow_outages, per_second=1, rate=1.0,
                                            lengths=(45, 200), gaps=(120, 600), warm_up=600),
    }


def measure(settings: Settings, subjects: list[Builder] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Figures]]:
    """Figures by scenario, then by subject name."""
    figures: dict[str, dict[str, Figures]] = {}
    traces = scenarios(settings)
    for scenario, trace in traces.items():
        if progress is not None:
            progress(scenario)
        figures[scenario] = {}
        for build in subjects or SUBJECTS:
            run = simulate(build, trace)
            figures[scenario][run.subject] = episode_figures(run)
    if progress is not None:
        progress("shallow health check")
    figures["shallow health check"] = {
        "otel-cb": figures["outage"]["otel-cb"],
        "otel-cb + shallow check": episode_figures(simulate(SHALLOW, traces["outage"])),
    }
    return figures


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


ROWS: list[tuple[str, str, Callable[[Figures], str]]] = [
    ("calls let through to a dead dependency, per outage", "outage", lambda f: _number(f.let_through)),
    ("of which user calls sent as probes after the trip", "outage", lambda f: _number(f.probes)),
    ("time to trip, s", "outage", lambda f: _number(f.time_to_trip, 2)),
    ("recovery lag: s from recovery until calls flow again", "outage", lambda f: _number(f.recovery_lag)),
    ("calls refused after the dependency recovered, per outage", "outage", lambda f: _number(f.refused_after, 0)),
    ("brownout (60 % errors): calls let through, per brownout", "brownout", lambda f: _number(f.let_through)),
    ("false trips in 1 M calls at 5 % random errors", "noise 5 %", lambda f: str(f.trips)),
    ("false trips in 1 M calls at 10 % random errors", "noise 10 %", lambda f: str(f.trips)),
    ("outage at 1 call/s: calls let through, per outage", "outage at 1 call/s", lambda f: _number(f.let_through)),
    ("outage at 1 call/s: recovery lag, s", "outage at 1 call/s", lambda f: _number(f.recovery_lag)),
]


def table(figures: dict[str, dict[str, Figures]], settings: Settings) -> str:
    names = list(figures["outage"])
    rows = ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, scenario, cell in ROWS:
        label = label.replace("1 M calls", f"{settings.noise_calls:,} calls") if settings.noise_calls != 1_000_000 \
            else label
        rows.append(f"| {label} | " + " | ".join(cell(figures[scenario][name]) for name in names) + " |")
    shallow = figures["shallow health check"]
    rows += ["", "| shallow health check (says healthy while the dependency is dead) | otel-cb, timed probing "
             "| otel-cb + shallow check |", "|---|---|---|"]
    for label, cell in (("user calls sent as probes after the trip, per outage", lambda f: _number(f.probes)),
                        ("recovery lag, s", lambda f: _number(f.recovery_lag))):
        rows.append(f"| {label} | {cell(shallow['otel-cb'])} | {cell(shallow['otel-cb + shallow check'])} |")
    rows += ["", "| target | otel-cb | limit | |", "|---|---|---|---|"]
    rows += [f"| {label} | {value} | {limit} | {'met' if ok else 'missed'} |"
             for label, value, limit, ok in targets(figures)]
    rows.append("")
    rows.append(
        f"Seed {settings.seed}: {settings.outages} outages and {settings.outages} brownouts at 100 calls/s, "
        f"{settings.slow_outages} outages at 1 call/s, {settings.noise_calls:,} calls per noise level; "
        f"open timeout {OPEN_TIMEOUT:.0f} s everywhere."
    )
    return "\n".join(rows)


def targets(figures: dict[str, dict[str, Figures]]) -> list[tuple[str, str, str, bool]]:
    """The issue's goals: (what, otel-cb's figure, the limit, met)."""
    outage, brownout = figures["outage"], figures["brownout"]
    checked, plain = outage["otel-cb + health check"], outage["otel-cb"]
    best = min(outage[name].let_through for name in ANCHORS)
    noise = (figures["noise 5 %"]["otel-cb"].trips, figures["noise 10 %"]["otel-cb"].trips)
    brown = max(brownout["otel-cb"].let_through, brownout["otel-cb + health check"].let_through)
    shallow = figures["shallow health check"]
    to_trip = max(checked.time_to_trip or math.inf, plain.time_to_trip or math.inf)
    return [
        ("false trips at 5 % / 10 % noise, default config", f"{noise[0]} / {noise[1]}", "0 / 0", noise == (0, 0)),
        ("clean outage with a health check: calls let through", _number(checked.let_through), "5",
         checked.let_through <= 5),
        ("clean outage without: calls let through", _number(plain.let_through), f"{best:.1f} (best anchor)",
         plain.let_through <= best),
        ("clean outage: time to trip, s", _number(to_trip, 2), "0.1", to_trip <= 0.1),
        ("clean outage with a health check: user probes after the trip", _number(checked.probes), "0",
         checked.probes == 0),
        ("clean outage with a health check: recovery lag, s", _number(checked.recovery_lag), "2",
         checked.recovery_lag <= 2),
        ("brownout: calls let through (worse of with / without a check)", _number(brown), "30", brown <= 30),
        ("shallow health check: user probes, vs timed probing", _number(shallow["otel-cb + shallow check"].probes),
         _number(shallow["otel-cb"].probes), shallow["otel-cb + shallow check"].probes <= shallow["otel-cb"].probes),
    ]


def run(quick: bool) -> str:
    """The README table (``quick``: a few outages and 20,000 noise calls, to check the script runs)."""
    settings = Settings(outages=2, noise_calls=20_000, slow_outages=1) if quick else Settings()
    return table(measure(settings, progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True)), settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--outages", type=int, default=Settings.outages, help="outages and brownouts at 100 calls/s")
    parser.add_argument("--slow-outages", type=int, default=Settings.slow_outages, help="outages at 1 call/s")
    parser.add_argument("--noise-calls", type=int, default=Settings.noise_calls)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    args = parser.parse_args(argv)
    for name in ("outages", "slow_outages", "noise_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: use a whole number >= 1")
    settings = Settings(args.seed, args.outages, args.noise_calls, args.slow_outages)
    figures = measure(settings)
    if args.json:
        print(json.dumps({scenario: {name: dataclasses.asdict(f) for name, f in by.items()}
                          for scenario, by in figures.items()}, indent=2))
    else:
        print(table(figures, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
