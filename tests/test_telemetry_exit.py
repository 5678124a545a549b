"""Exit and shutdown never wait on a collector: dead or blackholed, gRPC or HTTP, default intervals.

Each case runs a small process with the *default* export intervals (60 s
for metrics, 5 s for spans), so nothing was exported before exit and the
whole final flush happens at exit, where the exporters would retry for their
timeout. The process prints ``time.monotonic()`` (one clock for every process
on the machine) when its exit begins, in an ``atexit`` handler that runs
before otel-cb's; the test takes the time the process ended. otel-cb's
budget is ``EXIT_BUDGET`` (0.5 s); the limit asserted is 1 s, the issue's, so
a loaded machine has room and a retry (1 s and more) does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .otlp_receiver import blackhole, grpc_receiver, http_receiver
from .test_telemetry_export import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LIMIT = 1.0
MARK = "exit-begins "
# Runs first at exit (registered last): the moment exit begins.
AT_EXIT = f"import atexit, time; atexit.register(lambda: print('{MARK}%r' % time.monotonic(), flush=True))"

APPS = {
    "instrument": [str(BIN / "otel-cb-instrument"), sys.executable, "-c", AT_EXIT],
    "configure_force_open_exit": [sys.executable, "-c", (
        "import otel_cb, otel_cb.telemetry as t\n"
        "t.configure()\n"
        "breaker = otel_cb.CircuitBreaker('exit_test')\nbreaker.force_open()\n"
        f"{AT_EXIT}\n"
    )],
    "setup_shutdown": [sys.executable, "-c", (
        "import otel_cb, otel_cb.telemetry as t, time\n"
        "setup = t.configure()\n"
        "breaker = otel_cb.CircuitBreaker('exit_test')\nbreaker.force_open()\n"
        f"print('{MARK}%r' % time.monotonic(), flush=True)\n"
        "setup.shutdown()\n"
    )],
}


@contextmanager
def dead() -> Iterator[str]:
    yield f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


def run(app: str, endpoint: str, protocol: str) -> tuple[float, str]:
    """(seconds from the start of exit to the end of the process, stderr)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "OTEL_CB_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_SERVICE_NAME": "exit_test"})
    process = subprocess.run(APPS[app], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    ended = time.monotonic()
    assert process.returncode == 0, process.stderr
    begun = [float(line[len(MARK):]) for line in process.stdout.splitlines() if line.startswith(MARK)]
    assert len(begun) == 1, process.stdout + process.stderr
    return ended - begun[0], process.stderr


@pytest.mark.parametrize("app", sorted(APPS))
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("collector", [dead, blackhole], ids=["dead", "blackhole"])
def test_exit_with_a_collector_that_is_down_or_silent_is_prompt(app: str, protocol: str, collector: object) -> None:
    with collector() as endpoint:  # type: ignore[operator]
        took, stderr = run(app, endpoint, protocol)
    assert took <= LIMIT, f"exit took {took:.2f} s\n{stderr}"
    dropped = [line for line in stderr.splitlines() if "could not be delivered at shutdown" in line]
    assert len(dropped) == 1, stderr
    assert "Transient error" not in stderr and "Failed to export" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_collector_that_answers_gets_the_final_flush_within_the_budget(protocol: str) -> None:
    receiver = grpc_receiver() if protocol == "grpc" else http_receiver()
    with receiver as received:
        took, stderr = run("configure_force_open_exit", received.endpoint, protocol)
    assert took <= LIMIT, f"exit took {took:.2f} s\n{stderr}"
    assert "could not be delivered" not in stderr, stderr
    assert [span.name for span in received.spans()] == ["circuit_breaker.transition"]
    assert [record.event_name for _, record in received.log_records()] == ["circuit_breaker.state_change"]
    assert received.metric_points("circuit_breaker.calls")
