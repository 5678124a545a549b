"""Start-up cost: ``otel-cb-instrument python -c pass`` against ``opentelemetry-instrument python -c pass``.

Both commands start a Python process that sets up the OpenTelemetry SDK and
the client instrumentors; ``otel-cb-instrument`` also loads the config, the
plugins (the httpx, grpc and asyncpg integrations among them) and registers
its import hooks. Exporters are ``none`` for both, so no network is touched
and the figure is the start-up work alone. ``python -c pass`` is the floor.

Each figure is the median wall time of a full run (launcher + application
process), the commands interleaved so that drift on a shared machine hits
them alike. The target is at most 10% slower than ``opentelemetry-instrument``.

Routing: the time of ``otel_cb.plugin.select_breaker(call)`` for a call
shape seen before (memoised), against the first sight of a destination
(plugin hooks and the built-in router run), in this process with no plugins
but the router. The target for the repeat is well under 1 us.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

__all__ = ["TITLE", "run"]

TITLE = "Start-up: otel-cb-instrument vs opentelemetry-instrument; routing per call"

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    return env


def _time(command: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    return time.perf_counter() - start


def run(quick: bool) -> str:
    """Return the markdown table."""
    python = str(BIN / "python")
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "opentelemetry-instrument python -c pass": [str(BIN / "opentelemetry-instrument"), python, "-c", "pass"],
        "otel-cb-instrument python -c pass": [str(BIN / "otel-cb-instrument"), python, "-c", "pass"],
    }
    rounds = 1 if quick else 15
    samples: dict[str, list[float]] = {name: [] for name in commands}
    env = _env()
    # An empty directory: no otel-cb.yaml or pyproject.toml of the repository is picked up.
    with tempfile.TemporaryDirectory() as cwd:
        if not quick:
            for command in commands.values():  # warm the file cache once
                _time(command, env, cwd)
        for _ in range(rounds):
            for name, command in commands.items():
                samples[name].append(_time(command, env, cwd))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    otel = medians["opentelemetry-instrument python -c pass"]
    lines = [
        "| command | median wall time (ms) | vs opentelemetry-instrument |",
        "|---|---:|---:|",
    ]
    for name, value in medians.items():
        lines.append(f"| `{name}` | {value * 1000:.0f} | {value / otel:.2f}x |")
    ours = medians["otel-cb-instrument python -c pass"] / otel
    verdict = "within" if ours <= 1.10 else "OVER"
    lines.append("")
    lines.append(f"otel-cb-instrument is {(ours - 1) * 100:+.0f}% against opentelemetry-instrument "
                 f"({verdict} the 10% target); {rounds} interleaved rounds.")
    lines += ["", *_routing(quick)]
    return "\n".join(lines)


def _routing(quick: bool) -> list[str]:
    import otel_cb
    from otel_cb import _plugins
    from otel_cb.plugin import Call, select_breaker

    saved = _plugins._entry_points
    _plugins._entry_points = lambda: []  # the router alone: plugins' own routing is theirs to measure
    try:
        otel_cb.instrument({"auto_breakers": {"max": 1_000_000}})
        n = 20_000 if quick else 500_000
        call = Call("http", "http://api.internal:443", "GET")
        select_breaker(call)
        repeat = min(timeit.repeat(lambda: select_breaker(call), number=n, repeat=3)) / n
        fresh_calls = [Call("http", f"http://host{i}.internal:443", "GET") for i in range(n // 10)]
        start = time.perf_counter()
        for fresh in fresh_calls:
            select_breaker(fresh)
        first = (time.perf_counter() - start) / len(fresh_calls)
    finally:
        otel_cb.uninstrument()
        _plugins._entry_points = saved
    return [
        "| `select_breaker(call)` | time per call (µs) |",
        "|---|---:|",
        f"| repeat (memoised) | {repeat * 1e6:.3f} |",
        f"| first sight of a destination (router + new breaker) | {first * 1e6:.2f} |",
    ]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
