"""What full telemetry adds to a call: otel-cb with and without it, beside interlock-cb's listener.

Rows, per call in the closed state (time per decorated call minus a bare call):

- otel-cb with telemetry off and no SDK installed;
- otel-cb with SDK tracer and meter providers installed, a metric reader
  attached (``add_duration_histogram``) and ``otel_cb.telemetry.enable()``:
  every instrument of the reference, the duration histogram included;
- interlock-cb without a listener, and with its ``OTelEventListener`` on the
  same SDK meter provider (it records an SDK histogram on every call).

Also: a call rejected while open, inside a recording span (the
``circuit_breaker.rejected`` event and the span status), ``annotate_current_span``
as integrations call it, and one collection over 100 breakers.

The section runs in a subprocess: OpenTelemetry's global providers can be set
once per process, and the other sections must not run under an SDK.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TITLE", "run"]

TITLE = "Telemetry: extra cost per call with full OpenTelemetry telemetry"

ROOT = Path(__file__).resolve().parent.parent
TARGET_US = 0.15


def _best(fn: Callable[[], Any], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _rejected(fn: Callable[[], Any]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except Exception:
            pass
    return call


def _interlock(listener: Any = None) -> Any:
    import interlock

    config = interlock.Config(
        failure_rate_threshold=0.5, minimum_number_of_calls=10,
        slow_call_duration_threshold=5.0, slow_call_rate_threshold=0.5, wait_duration_in_open=30.0,
    )
    return interlock.CircuitBreaker(name="bench_interlock", config=config, listener=listener)


def _child(quick: bool) -> str:
    import warnings

    warnings.simplefilter("ignore")
    calls, repeats = (2_000, 2) if quick else (20_000, 15)

    from otel_cb import CircuitBreaker, CircuitBreakerConfig

    def bare() -> int:
        return 1

    def measure(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
        # Interleaved, best of repeats, so drift hits every row alike.
        best = {name: float("inf") for name in fns}
        gc.disable()
        try:
            for _ in range(repeats):
                for name, fn in fns.items():
                    best[name] = min(best[name], _best(fn, calls, 1))
        finally:
            gc.enable()
        return best

    # Phase 1: no SDK, telemetry off.
    off_breaker = CircuitBreaker("bench_off")
    open_off = CircuitBreaker("bench_open_off")
    open_off.force_open()
    off = measure({
        "bare": bare,
        "otel-cb": off_breaker(bare),
        "interlock-cb": _interlock()(bare),
        "reject": _rejected(open_off(bare)),
    })

    # Phase 2: SDK providers, a metric reader, full telemetry.
    from interlock.integrations.otel import OTelEventListener
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    import otel_cb.telemetry as telemetry

    reader = telemetry.add_duration_histogram(InMemoryMetricReader())
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    trace.set_tracer_provider(TracerProvider())  # spans are recorded, none exported
    telemetry.enable()
    on_breaker = CircuitBreaker("bench_on")
    # The same breaker without its duration buckets, timed beside the full one:
    # in the closed state that is the whole per-call difference (observers see
    # only transitions, rejections and fallbacks), measured without the drift
    # between the two phases.
    bucketless = CircuitBreaker("bench_bucketless")
    bucketless._histogram = None
    open_on = CircuitBreaker("bench_open_on")
    open_on.force_open()
    tracer = trace.get_tracer("bench")
    guarded_on = _rejected(open_on(bare))

    def reject_in_span() -> None:
        with tracer.start_as_current_span("client"):
            guarded_on()

    def span_only() -> None:
        with tracer.start_as_current_span("client"):
            pass

    def annotate_in_span() -> None:
        with tracer.start_as_current_span("client"):
            telemetry.annotate_current_span(on_breaker)

    on = measure({
        "bare": bare,
        "otel-cb": on_breaker(bare),
        "otel-cb bucketless": bucketless(bare),
        "interlock-cb": _interlock(OTelEventListener())(bare),
        "reject": guarded_on,
        "span": span_only,
        "reject in span": reject_in_span,
        "annotate in span": annotate_in_span,
        "annotate no span": lambda: telemetry.annotate_current_span(on_breaker),
    })
    config = CircuitBreakerConfig(failure_threshold=3)
    many = [CircuitBreaker(f"bench_many_{i}", config) for i in range(100)]
    for breaker in many:
        breaker.call(bare)
    reader.get_metrics_data()
    gc.collect()
    collect = min(_timed(reader.get_metrics_data) for _ in range(3 if quick else 10))

    def us(value: float) -> str:
        return f"{value * 1e6:.3f} us"

    cb_off = off["otel-cb"] - off["bare"]
    cb_on = on["otel-cb"] - on["bare"]
    il_off = off["interlock-cb"] - off["bare"]
    il_on = on["interlock-cb"] - on["bare"]
    extra = on["otel-cb"] - on["otel-cb bucketless"]
    rows = [
        "| library | overhead, telemetry off | overhead, telemetry on | extra per call |",
        "|---|---|---|---|",
        f"| otel-cb | {us(cb_off)} | {us(cb_on)} | {us(extra)} ({us(cb_on - cb_off)} across phases) |",
        f"| interlock-cb (OTelEventListener) | {us(il_off)} | {us(il_on)} | {us(il_on - il_off)} |",
        "",
        "| operation | telemetry off | telemetry on |",
        "|---|---|---|",
        f"| rejected call, no span | {us(off['reject'])} | {us(on['reject'])} |",
        f"| rejected call in a recording span (event + status), span itself excluded | n/a "
        f"| {us(on['reject in span'] - on['span'])} |",
        f"| `annotate_current_span`, no span / in a recording span | n/a "
        f"| {us(on['annotate no span'] - on['bare'])} / {us(on['annotate in span'] - on['span'])} |",
        f"| one collection, 100 breakers, every instrument | n/a | {collect * 1e3:.2f} ms |",
        "",
        "| target | measured | limit | |",
        "|---|---|---|---|",
        f"| extra cost of full telemetry per call | {us(extra)} | {TARGET_US:.2f} us "
        f"| {'met' if extra * 1e6 < TARGET_US else 'missed'} |",
        "",
        f"{calls:,} calls per measurement, best of {repeats}; overhead = decorated call minus bare call. "
        "'On' = SDK tracer and meter providers, an in-memory metric reader with the duration histogram, "
        "`otel_cb.telemetry.enable()`. otel-cb's extra per call is timed interleaved against the same "
        "breaker without duration buckets (its only per-call difference); across phases it includes drift.",
    ]
    return "\n".join(rows)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(quick: bool) -> str:
    """Run the measurements in a fresh interpreter and return its markdown."""
    args = [sys.executable, "-m", "benchmarks.bench_telemetry", "--child"] + (["--quick"] if quick else [])
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"bench_telemetry child failed:\n{result.stderr}")
    return result.stdout


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(_child("--quick" in sys.argv))
    else:
        print(run("--quick" in sys.argv))
