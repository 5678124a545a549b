"""The core breaker against pybreaker, circuitbreaker, purgatory, aiobreaker and interlock-cb.

Every library guards the same trivial function in the closed state with every
failure rule it has switched on (otel-cb: consecutive failures, failure rate
and slow-call rate over a 60 s time window), in each call form it offers:

- decorated sync / async: time per decorated call minus time per bare call;
- ``call(fn)`` / ``await call_async(fn)``: the same through the call method;
- rejection while open: time per call refused (raised and caught), after
  tripping the breaker with failures, and after forcing it open;
- memory: bytes traced by ``tracemalloc`` per idle breaker, 10,000 of them.

Every round measures every library and form once, interleaved, with the
garbage collector off, so drift hits them alike; each figure is the median of
its rounds. Open timeouts are an hour, far longer than any run, so a tripped
breaker never lets a probe through however slow the machine.

Old against new: set ``OTEL_CB_BENCH_BASELINE`` to a directory holding a copy
of an earlier ``otel_cb`` package under another name, and that copy is measured
as one more library in the same rounds, with the median of the per-round
ratios new/old. A copy of main, for instance::

    mkdir -p /tmp/base && git archive main otel_cb | tar -x -C /tmp/base
    mv /tmp/base/otel_cb /tmp/base/otel_cb_main
    OTEL_CB_BENCH_BASELINE=/tmp/base/otel_cb_main .venv/bin/python -m benchmarks.run --only bench_core

(the core imports itself relatively, so the renamed copy runs as it is).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import operator
import os
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "Core breaker: overhead per call, rejection, memory"

Sync = Callable[[], Any]
OPEN_SECONDS = 3600  # far longer than any run: a tripped breaker stays open
FORMS = ("sync", "call", "async", "call_async", "reject", "forced")


class Boom(Exception):
    """The failure every library is tripped with."""


@dataclass
class Subject:
    """One library: how to build a breaker, call through it in each form, and force it open."""

    name: str
    build: Callable[[str], Any]
    decorate: Callable[[Any, Callable[..., Any]], Callable[..., Any]] = lambda breaker, fn: breaker(fn)
    call: Callable[[Any, Callable[..., Any]], Callable[[], Any]] | None = None
    call_async: Callable[[Any, Callable[..., Any]], Callable[[], Any]] | None = None
    force_open: Callable[[Any], None] | None = None
    async_ok: bool = True
    results: dict[str, float | None] = field(default_factory=dict)


def _otel_cb_subject(name: str, module: str) -> Subject:
    configs: list[Any] = []

    def build(breaker_name: str) -> Any:
        package = importlib.import_module(module)
        if not configs:
            # The default config (all three rules on), open for an hour once
            # tripped; one for all, as a service shares its config objects.
            configs.append(package.CircuitBreakerConfig(open_timeout=OPEN_SECONDS, max_open_timeout=OPEN_SECONDS))
        return package.CircuitBreaker(breaker_name, configs[0])

    return Subject(name, build, call=_partial_call, call_async=_partial_call_async,
                   force_open=lambda b: b.force_open())


def _pybreaker(name: str) -> Any:
    import pybreaker

    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=OPEN_SECONDS, name=name)


def _circuitbreaker(name: str) -> Any:
    import circuitbreaker

    return circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=OPEN_SECONDS, name=name)


def _aiobreaker(name: str) -> Any:
    import aiobreaker

    return aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=OPEN_SECONDS), name=name)


def _interlock(name: str) -> Any:
    import interlock

    config = interlock.Config(
        failure_rate_threshold=0.5, minimum_number_of_calls=10,
        slow_call_duration_threshold=5.0, slow_call_rate_threshold=0.5, wait_duration_in_open=OPEN_SECONDS,
    )
    return interlock.CircuitBreaker(name=name, config=config)


def _purgatory(name: str) -> Any:
    import purgatory

    # A breaker is a name inside a factory; its decorator looks it up on each call.
    return (purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=OPEN_SECONDS),
            purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=OPEN_SECONDS), name)


def _decorate_purgatory(breaker: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    sync_factory, async_factory, name = breaker
    factory = async_factory if asyncio.iscoroutinefunction(fn) else sync_factory
    return factory(name)(fn)  # type: ignore[no-any-return]


# ``breaker.call(fn)`` as users write it, the method looked up on every call,
# with no Python frame of ours around it (both are C callables).
def _partial_call(breaker: Any, fn: Callable[..., Any]) -> Callable[[], Any]:
    return functools.partial(operator.methodcaller("call", fn), breaker)


def _partial_call_async(breaker: Any, fn: Callable[..., Any]) -> Callable[[], Any]:
    return functools.partial(operator.methodcaller("call_async", fn), breaker)


def _pybreaker_open(breaker: Any) -> None:
    breaker.open()


def subjects() -> list[Subject]:
    """otel-cb first (then the baseline copy, if one is set), then the competitors."""
    found = [
        _otel_cb_subject("otel-cb", "otel_cb"),
        # Its async support needs Tornado; open() is its forced open (until the timeout).
        Subject("pybreaker", _pybreaker, call=_partial_call, force_open=_pybreaker_open, async_ok=False),
        Subject("circuitbreaker", _circuitbreaker, call=_partial_call),
        Subject("purgatory", _purgatory, _decorate_purgatory),
        Subject("aiobreaker", _aiobreaker, call=_partial_call, call_async=_partial_call_async,
                force_open=_pybreaker_open),
        Subject("interlock-cb", _interlock, call=_partial_call, call_async=_partial_call_async,
                force_open=lambda b: b.force_open()),
    ]
    baseline = os.environ.get("OTEL_CB_BENCH_BASELINE")
    if baseline:
        path = Path(baseline).resolve()
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        # Beside otel-cb, so the two are timed back to back in every round.
        found.insert(1, _otel_cb_subject(f"otel-cb baseline ({path.name})", path.name))
    return found


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
            raise AssertionError("a rejected call reached the function: the breaker let a probe through") from None
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


def _bare() -> int:
    return 1


async def _abare() -> int:
    return 1


def _boom() -> int:
    raise Boom


def _measure_calls(subjects: list[Subject], calls: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    """Per (library, form), the figure of every round (overheads net of that round's bare call).

    A round times one form after another, every library back to back within a
    form, its bare call first: figures compared with each other are measured
    moments apart, so a burst of load on a shared machine hits them alike.
    """
    plan: dict[str, dict[str, Callable[[], Any]]] = {form: {} for form in FORMS}
    plan["sync"]["bare"] = plan["call"]["bare"] = _bare
    plan["async"]["bare"] = plan["call_async"]["bare"] = _abare
    for s in subjects:
        plan["sync"][s.name] = s.decorate(s.build(f"bench_{s.name}"), _bare)
        if s.call is not None:
            plan["call"][s.name] = s.call(s.build(f"bench_call_{s.name}"), _bare)
        if s.async_ok:
            plan["async"][s.name] = s.decorate(s.build(f"bench_async_{s.name}"), _abare)
        if s.call_async is not None:
            plan["call_async"][s.name] = s.call_async(s.build(f"bench_call_async_{s.name}"), _abare)
        tripped = s.decorate(s.build(f"bench_open_{s.name}"), _boom)
        _trip(tripped)
        plan["reject"][s.name] = tripped
        if s.force_open is not None:
            breaker = s.build(f"bench_forced_{s.name}")
            s.force_open(breaker)
            plan["forced"][s.name] = s.decorate(breaker, _boom)
    for fn in plan["sync"].values():
        assert fn() == 1

    loop = asyncio.new_event_loop()
    figures: dict[tuple[str, str], list[float]] = {}
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for form, fns in plan.items():
                bare = 0.0
                for name, fn in fns.items():
                    if form in ("async", "call_async"):
                        taken = loop.run_until_complete(_time_async(fn, calls))
                    elif form in ("reject", "forced"):
                        taken = _time_rejections(fn, calls)
                    else:
                        taken = _time_sync(fn, calls)
                    if name == "bare":
                        bare = taken
                    else:
                        figures.setdefault((name, form), []).append(taken - bare)
                gc.collect()  # outside the timing: what a competitor left behind costs it nothing
    finally:
        if gc_was_on:
            gc.enable()
        loop.close()
    return figures


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


def _paired_ratio(figures: dict[tuple[str, str], list[float]], a: str, b: str, form: str) -> float | None:
    """Median over rounds of a's figure over b's in the same round."""
    if (a, form) not in figures or (b, form) not in figures:
        return None
    ratios = [x / y for x, y in zip(figures[(a, form)], figures[(b, form)], strict=True) if y > 0]
    return statistics.median(ratios) if ratios else None


def run(quick: bool) -> str:
    """Measure every subject and return the markdown tables."""
    calls, rounds, breakers = (2_000, 3, 500) if quick else (50_000, 15, 10_000)
    found = subjects()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some competitors warn about deprecated loop APIs
        figures = _measure_calls(found, calls, rounds)
        _measure_memory(found, breakers)
    for s in found:
        for form in FORMS:
            values = figures.get((s.name, form))
            s.results[form] = statistics.median(values) if values else None
    ours = found[0].results
    rows = [
        "| library | decorated sync | `call(fn)` | decorated async | `await call_async(fn)` "
        "| rejection (tripped) | rejection (forced open) | memory per idle breaker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in found:
        r = s.results
        cells = [_cell(r[form], ours[form], "us", 1e6, 3) for form in FORMS]
        rows.append(f"| {s.name} | {' | '.join(cells)} | {_cell(r['memory'], ours['memory'], 'B', 1.0, 0)} |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    ours_name = found[0].name
    targets: list[tuple[str, float | None, float]] = [
        ("sync overhead <= circuitbreaker's", _paired_ratio(figures, ours_name, "circuitbreaker", "sync"), 1.0),
        ("async overhead <= 1/2 of aiobreaker's", _paired_ratio(figures, ours_name, "aiobreaker", "async"), 0.5),
        ("call_async overhead <= 1/2 of aiobreaker's",
         _paired_ratio(figures, ours_name, "aiobreaker", "call_async"), 0.5),
        ("rejection <= 1/3 of pybreaker's", _paired_ratio(figures, ours_name, "pybreaker", "reject"), 1 / 3),
        ("forced-open rejection <= 1/3 of pybreaker's",
         _paired_ratio(figures, ours_name, "pybreaker", "forced"), 1 / 3),
        ("memory per idle breaker <= 2 KiB", (ours["memory"] or 0.0) / 2048, 1.0),
    ]
    rows += ["", "| target | otel-cb / reference | limit | |", "|---|---|---|---|"]
    rows += [f"| {label} | {value:.2f} | {limit:.2f} | {verdict(value <= limit)} |"
             for label, value, limit in targets if value is not None]
    baseline = next((s.name for s in found if s.name.startswith("otel-cb baseline")), None)
    if baseline is not None:
        rows += ["", f"| form | otel-cb / {baseline} (median of paired rounds) |", "|---|---|"]
        for form in FORMS:
            ratio = _paired_ratio(figures, ours_name, baseline, form)
            if ratio is not None:
                rows.append(f"| {form} | {ratio:.3f} |")
    rows.append("")
    rows.append(
        f"{calls:,} calls per measurement, median of {rounds} rounds; memory over {breakers:,} breakers. "
        "Ratios in parentheses: that library's figure over otel-cb's; targets: medians of per-round ratios."
    )
    return "\n".join(rows)
