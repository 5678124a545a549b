"""What telemetry costs: per call, beside interlock-cb's listener, and per collection at 1,000 breakers.

Rows, per call in the closed state (time per decorated call minus a bare call):

- otel-cb with no SDK installed (telemetry on by default, the API's no-ops),
  timed interleaved against a breaker with telemetry disabled: the same code
  path, since no duration buckets are kept without an SDK;
- otel-cb with SDK tracer, meter and logger providers installed by the
  application and no otel-cb call: every metric of the reference, the
  duration histogram included;
- interlock-cb without a listener, and with its ``OTelEventListener`` on the
  same SDK meter provider (it records an SDK histogram on every call).

Also: a call rejected while open, inside a recording span (the
``circuit_breaker.rejected`` events and the span status), ``annotate_current_span``
as integrations call it, and the collection at scale: 1,000 breakers through
an SDK metric reader, beside the SDK's own observable-instrument path for the
same number of points with the same attributes (a meter provider of its own,
callbacks making one Observation per point), measured interleaved in one
run, with a tenth of the breakers active since the last collection (most of
1,000 are idle between two) and with every one active; and the whole export
cycle (collection + OTLP encoding) per breaker.

The section runs in a subprocess: OpenTelemetry's global providers can be set
once per process, and the other sections must not run under an SDK.
"""

from __future__ import annotations

import gc
import statistics
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

    from otel_cb import CircuitBreaker

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

    # Phase 1: no SDK; telemetry is on by default (the API's no-ops).
    import otel_cb.telemetry as telemetry

    default_breaker = CircuitBreaker("bench_default")
    telemetry.disable()
    off_breaker = CircuitBreaker("bench_off")
    telemetry.enable()
    assert default_breaker.snapshot().durations == {} and off_breaker.snapshot().durations == {}
    open_off = CircuitBreaker("bench_open_off")
    open_off.force_open()
    off = measure({
        "bare": bare,
        "otel-cb": default_breaker(bare),
        "otel-cb disabled": off_breaker(bare),
        "interlock-cb": _interlock()(bare),
        "reject": _rejected(open_off(bare)),
    })

    # Phase 2: the application's own SDK providers, no otel-cb call.
    from interlock.integrations.otel import OTelEventListener
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    trace.set_tracer_provider(TracerProvider())  # spans are recorded, none exported
    _logs.set_logger_provider(LoggerProvider())  # log events are emitted, none exported
    on_breaker = CircuitBreaker("bench_on")
    # The same breaker without its duration buckets, timed beside the full one:
    # in the closed state that is the whole per-call difference (observers see
    # only transitions, rejections and fallbacks), measured without the drift
    # between the two phases.
    bucketless = CircuitBreaker("bench_bucketless")
    with bucketless._lock:
        bucketless._histogram = None
        bucketless._current.settle(bucketless)  # type: ignore[attr-defined]  # a closed stay
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
    scale = _scale(reader, quick)

    def us(value: float) -> str:
        return f"{value * 1e6:.3f} us"

    cb_off = off["otel-cb"] - off["bare"]
    cb_on = on["otel-cb"] - on["bare"]
    il_off = off["interlock-cb"] - off["bare"]
    il_on = on["interlock-cb"] - on["bare"]
    extra = on["otel-cb"] - on["otel-cb bucketless"]
    no_sdk = off["otel-cb"] - off["otel-cb disabled"]
    ratio = scale["ratio"]
    rows = [
        "| library | overhead, no SDK | overhead, full telemetry | extra per call |",
        "|---|---|---|---|",
        f"| otel-cb | {us(cb_off)} | {us(cb_on)} | {us(extra)} ({us(cb_on - cb_off)} across phases) |",
        f"| interlock-cb (OTelEventListener) | {us(il_off)} | {us(il_on)} | {us(il_on - il_off)} |",
        "",
        "| operation | no SDK | full telemetry |",
        "|---|---|---|",
        f"| rejected call, no span | {us(off['reject'])} | {us(on['reject'])} |",
        f"| rejected call in a recording span (events + status), span itself excluded | n/a "
        f"| {us(on['reject in span'] - on['span'])} |",
        f"| `annotate_current_span`, no span / in a recording span | n/a "
        f"| {us(on['annotate no span'] - on['bare'])} / {us(on['annotate in span'] - on['span'])} |",
        "",
        f"| collection, {scale['breakers']:,} breakers | time | points |",
        "|---|---|---|",
        f"| otel-cb (finished data, one pass), a tenth of the breakers active since the last collection "
        f"| {scale['ours'] * 1e3:.1f} ms ({ratio:.3f}x) | {scale['points']:,} |",
        f"| otel-cb, every breaker active since the last collection | {scale['active'] * 1e3:.1f} ms "
        f"({scale['active_ratio']:.3f}x) | {scale['points']:,} |",
        f"| the SDK's observable instruments, same points | {scale['sdk'] * 1e3:.1f} ms | {scale['sdk_points']:,} |",
        f"| export cycle (collection + OTLP encoding), per breaker | {us(scale['cycle'] / scale['breakers'])} "
        f"| {scale['points'] / scale['breakers']:.0f} per breaker |",
        "",
        "| target | measured | limit | |",
        "|---|---|---|---|",
        f"| extra cost of full telemetry per call | {us(extra)} | {TARGET_US:.2f} us "
        f"| {'met' if extra * 1e6 < TARGET_US else 'missed'} |",
        f"| extra cost per call with no SDK (telemetry on by default vs disabled; same code path) | {us(no_sdk)} "
        "| 0 (noise) | |",
        f"| collection at 1,000 breakers (a tenth active) / the SDK's own path | {ratio:.3f}x | {TARGET_RATIO}x "
        f"| {'met' if ratio <= TARGET_RATIO else 'missed'} |",
        "",
        f"{calls:,} calls per measurement, best of {repeats}; overhead = decorated call minus bare call. "
        "'Full telemetry' = the application's SDK tracer, meter (in-memory reader) and logger providers, no "
        "otel-cb call. otel-cb's extra per call is timed interleaved against the same breaker without duration "
        "buckets (its only per-call difference); across phases it includes drift. Collections: median of "
        f"{scale['repeats']} rounds, otel-cb and the SDK's path interleaved, ratios the median of the per-round "
        "ratios; before each otel-cb collection a tenth of the breakers (or all of them) made a call, untimed; "
        "otel-cb's points include its duration histograms, the SDK's path has none (no observable histogram "
        "exists); the garbage collector is paused during each timed collection, as `timeit` does.",
    ]
    return "\n".join(rows)


TARGET_RATIO = 0.1


def _scale(reader: Any, quick: bool) -> dict[str, Any]:
    """1,000 breakers with traffic and transitions, collected by otel-cb and by the SDK's own path."""
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

    from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError

    count = 1_000
    config = CircuitBreakerConfig(failure_threshold=3)
    breakers = [CircuitBreaker(f"bench_scale_{i:04}", config) for i in range(count)]

    def fail() -> None:
        raise ConnectionError("down")

    for index, breaker in enumerate(breakers):
        breaker.call(lambda: None)
        if index % 10 == 0:  # a tenth of them opened once
            for _ in range(3):
                try:
                    breaker.call(fail)
                except ConnectionError:
                    pass
    data = reader.get_metrics_data()
    ours = [m for rm in data.resource_metrics for sm in rm.scope_metrics if sm.scope.name == "otel_cb"
            for m in sm.metrics]
    points = sum(len(m.data.data_points) for m in ours)

    # The same number points, with the same attributes, through the SDK's observable instruments.
    sdk_reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[sdk_reader]).get_meter("bench_sdk")
    sdk_points = 0
    for metric in ours:
        if metric.name == "circuit_breaker.call.duration":
            continue
        prepared = [(p.value, dict(p.attributes)) for p in metric.data.data_points]
        sdk_points += len(prepared)

        # The least any callback does: one Observation per point, values and attributes at hand.
        def callback(options: Any, prepared: list[Any] = prepared) -> list[Any]:
            return [Observation(value, attributes) for value, attributes in prepared]

        if isinstance(metric.data, Sum):
            meter.create_observable_counter(f"sdk.{metric.name}", [callback], unit=metric.unit)
        else:
            meter.create_observable_gauge(f"sdk.{metric.name}", [callback], unit=metric.unit)
    sdk_reader.get_metrics_data()

    def touch(some: list[CircuitBreaker]) -> None:
        for breaker in some:
            try:
                breaker.call(lambda: None)
            except CircuitOpenError:  # a rejection is activity too
                pass

    # Each round: a tenth of the breakers had a call since the last collection (the others
    # idle, as most of 1,000 are between two collections), then every breaker had one.
    repeats = 3 if quick else 11
    ours, sdk, active, cycle = [], [], [], []
    for round_ in range(repeats):
        touch(breakers[round_ % 10::10])
        ours.append(_timed(reader.get_metrics_data))
        sdk.append(_timed(sdk_reader.get_metrics_data))
        touch(breakers)
        active.append(_timed(reader.get_metrics_data))
        touch(breakers[round_ % 10::10])
        cycle.append(_timed(lambda: encode_metrics(reader.get_metrics_data()).SerializeToString()))
    median = statistics.median
    return {"breakers": count, "points": points, "sdk_points": sdk_points, "ours": median(ours), "sdk": median(sdk),
            "active": median(active), "cycle": median(cycle), "repeats": repeats,
            "ratio": median(o / s for o, s in zip(ours, sdk, strict=True)),
            "active_ratio": median(a / s for a, s in zip(active, sdk, strict=True))}


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes with the garbage collector paused, as ``timeit`` does (a full
    collection falls on whichever run is unlucky, whoever made the garbage)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


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
