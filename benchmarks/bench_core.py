"""The core breaker against pybreaker, circuitbreaker, purgatory, aiobreaker and interlock-cb.

Every library guards the same trivial function with its own decorator, in the
closed state with every failure rule it has switched on (otel-cb: consecutive
failures, failure rate and slow-call rate over a 60 s time window). Figures:

- sync / async overhead: time per decorated call minus time per bare call;
- rejection: time per call refused while open (the exception raised and caught);
- memory: bytes traced by ``tracemalloc`` per idle breaker, 10,000 of them.

Each figure is the minimum over repeats, timed with the garbage collector off,
all libraries interleaved in every repeat so drift hits them alike. Ratios are
the library's figure over otel-cb's (above 1.0: otel-cb is cheaper).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "Core breaker: overhead per call, rejection, memory"

Sync = Callable[[], Any]


class Boom(Exception):
    """The failure every library is tripped with."""


@dataclass
class Subject:
    """One library: how to build a breaker, decorate with it, and open it."""

    name: str
    build: Callable[[str], Any]
    decorate: Callable[[Any, Callable[..., Any]], Callable[..., Any]]
    async_ok: bool = True
    results: dict[str, float | None] = field(default_factory=dict)


def _otel_cb(name: str) -> Any:
    from otel_cb import CircuitBreaker

    return CircuitBreaker(name)  # default config: all three rules on


def _pybreaker(name: str) -> Any:
    import pybreaker

    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, name=name)


def _circuitbreaker(name: str) -> Any:
    import circuitbreaker

    return circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30, name=name)


def _aiobreaker(name: str) -> Any:
    import aiobreaker

    return aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=30), name=name)


def _interlock(name: str) -> Any:
    import interlock

    config = interlock.Config(
        failure_rate_threshold=0.5, minimum_number_of_calls=10,
        slow_call_duration_threshold=5.0, slow_call_rate_threshold=0.5, wait_duration_in_open=30.0,
    )
    return interlock.CircuitBreaker(name=name, config=config)


def _purgatory(name: str) -> Any:
    import purgatory

    # A breaker is a name inside a factory; its decorator looks it up on each call.
    return (purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=30),
            purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30), name)


def _decorate_purgatory(breaker: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    sync_factory, async_factory, name = breaker
    factory = async_factory if asyncio.iscoroutinefunction(fn) else sync_factory
    return factory(name)(fn)  # type: ignore[no-any-return]


def _plain(breaker: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    return breaker(fn)  # type: ignore[no-any-return]


SUBJECTS = [
    ("otel-cb", _otel_cb, _plain, True),
    ("pybreaker", _pybreaker, _plain, False),  # its async support needs Tornado
    ("circuitbreaker", _circuitbreaker, _plain, True),
    ("purgatory", _purgatory, _decorate_purgatory, True),
    ("aiobreaker", _aiobreaker, _plain, True),
    ("interlock-cb", _interlock, _plain, True),
]


def _time_sync(fn: Sync, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _time_rejections(fn: Sync, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        try:
            fn()
        except Boom:
            raise AssertionError("a rejected call reached the function") from None
        except Exception:
            pass
    return (time.perf_counter() - start) / n


async def _time_async(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


def _trip(fn: Sync) -> None:
    """Fail through ``fn`` until the breaker refuses it."""
    for _ in range(1000):
        try:
            fn()
        except Boom:
            continue
        except Exception:
            return
    raise AssertionError("breaker never opened")


def _measure_calls(subjects: list[Subject], calls: int, repeats: int) -> None:
    def bare() -> int:
        return 1

    async def abare() -> int:
        return 1

    failing = {"on": False}

    def flaky() -> int:
        if failing["on"]:
            raise Boom
        return 1

    sync_fns = {s.name: s.decorate(s.build(f"bench_{s.name}"), bare) for s in subjects}
    async_fns = {s.name: s.decorate(s.build(f"bench_async_{s.name}"), abare) for s in subjects if s.async_ok}
    flaky_fns = {s.name: s.decorate(s.build(f"bench_open_{s.name}"), flaky) for s in subjects}
    for fn in sync_fns.values():
        assert fn() == 1
    failing["on"] = True
    for fn in flaky_fns.values():
        _trip(fn)

    loop = asyncio.new_event_loop()
    best: dict[tuple[str, str], float] = {}

    def keep(key: tuple[str, str], value: float) -> None:
        best[key] = min(best.get(key, value), value)

    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            keep(("bare", "sync"), _time_sync(bare, calls))
            keep(("bare", "async"), loop.run_until_complete(_time_async(abare, calls)))
            for s in subjects:
                keep((s.name, "sync"), _time_sync(sync_fns[s.name], calls))
                if s.async_ok:
                    keep((s.name, "async"), loop.run_until_complete(_time_async(async_fns[s.name], calls)))
                keep((s.name, "reject"), _time_rejections(flaky_fns[s.name], calls))
    finally:
        if gc_was_on:
            gc.enable()
        loop.close()
    for s in subjects:
        s.results["sync"] = best[(s.name, "sync")] - best[("bare", "sync")]
        s.results["async"] = best[(s.name, "async")] - best[("bare", "async")] if s.async_ok else None
        s.results["reject"] = best[(s.name, "reject")]


def _measure_memory(subjects: list[Subject], count: int) -> None:
    for s in subjects:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        keep = [s.build(f"idle_{s.name}_{i}") for i in range(count)]
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        s.results["memory"] = (after - before) / count
        del keep


def _cell(value: float | None, base: float | None, unit: str, scale: float, digits: int) -> str:
    if value is None:
        return "n/a"
    text = f"{value * scale:.{digits}f} {unit}"
    if base is not None and base > 0 and value > 0:
        text += f" ({value / base:.1f}x)"
    return text


def run(quick: bool) -> str:
    """Measure every subject and return the markdown tables."""
    calls, repeats, breakers = (2_000, 2, 500) if quick else (100_000, 7, 10_000)
    subjects = [Subject(name, build, decorate, async_ok) for name, build, decorate, async_ok in SUBJECTS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some competitors warn about deprecated loop APIs
        _measure_calls(subjects, calls, repeats)
        _measure_memory(subjects, breakers)
    ours = subjects[0].results
    rows = [
        "| library | sync overhead | async overhead | rejection while open | memory per idle breaker |",
        "|---|---|---|---|---|",
    ]
    for s in subjects:
        r = s.results
        rows.append(
            f"| {s.name} | {_cell(r['sync'], ours['sync'], 'us', 1e6, 3)} "
            f"| {_cell(r['async'], ours['async'], 'us', 1e6, 3)} "
            f"| {_cell(r['reject'], ours['reject'], 'us', 1e6, 3)} "
            f"| {_cell(r['memory'], ours['memory'], 'B', 1.0, 0)} |"
        )
    by_name = {s.name: s.results for s in subjects}

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    def ratio(a: float | None, b: float | None) -> float:
        return (a or 0.0) / b if b else float("inf")

    targets = [
        ("sync overhead <= circuitbreaker's", ratio(ours["sync"], by_name["circuitbreaker"]["sync"]), 1.0),
        ("async overhead <= 1/2 of aiobreaker's", ratio(ours["async"], by_name["aiobreaker"]["async"]), 0.5),
        ("rejection <= 1/3 of pybreaker's", ratio(ours["reject"], by_name["pybreaker"]["reject"]), 1 / 3),
        ("memory per idle breaker <= 2 KiB", (ours["memory"] or 0.0) / 2048, 1.0),
    ]
    rows += ["", "| target | otel-cb / reference | limit | |", "|---|---|---|---|"]
    rows += [f"| {label} | {value:.2f} | {limit:.2f} | {verdict(value <= limit)} |" for label, value, limit in targets]
    rows.append("")
    rows.append(
        f"{calls:,} calls per measurement, best of {repeats}; memory over {breakers:,} breakers. "
        "Ratios in parentheses: that library's figure over otel-cb's."
    )
    return "\n".join(rows)
