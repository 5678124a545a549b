"""Fork while busy threads call through telemetry-enabled breakers: no child may hang.

A process with SDK providers from ``configure()`` (OTLP/gRPC to a real
receiver on loopback, short export intervals so exports and collections run
all the time) keeps four threads calling through breakers that open, reject,
reset and close (span events, log events, transition spans, transition
counts) and one thread collecting otel-cb's metrics, and forks 24 children
meanwhile. Each child does the same things once more and then exits through
its ``atexit`` handlers (otel-cb's bounded shutdown included), as a gunicorn
worker or a multiprocessing child would.

A child that hangs dumps its threads (``faulthandler``) and is killed, so the
test itself never hangs. The locks otel-cb's telemetry owns (observer,
collector, exporter notices, the live-breaker set) are this test's subject;
a hang in the breaker's own lock belongs to the core and fails the test only
once the core registers its own fork handler.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import otel_cb._breaker

from .otlp_receiver import grpc_receiver

ROOT = Path(__file__).resolve().parent.parent

PARENT = textwrap.dedent("""
    import atexit, faulthandler, json, os, signal, sys, threading, time
    import otel_cb, otel_cb.telemetry as telemetry
    from opentelemetry import trace
    from otel_cb.telemetry import _core, _metrics

    telemetry.configure()
    tracer = trace.get_tracer("fork_test")
    config = otel_cb.CircuitBreakerConfig(failure_threshold=1, open_timeout=60.0)
    breakers = [otel_cb.CircuitBreaker(f"fork_{i}", config) for i in range(4)]
    stop = threading.Event()

    def fail():
        raise ConnectionError("down")

    def exercise(breaker):
        with tracer.start_as_current_span("client"):
            try:
                breaker.call(fail)  # opens: span event, log event, transition count
            except (ConnectionError, otel_cb.CircuitOpenError):  # another thread may have opened it
                pass
            try:
                breaker.call(lambda: None)  # rejected: span event, rate-limited log event
            except otel_cb.CircuitOpenError:
                pass
        breaker.reset()  # outside a span: a transition span of its own
        breaker.call(lambda: None)

    def busy(breaker):
        while not stop.is_set():
            exercise(breaker)

    def collecting():
        while not stop.is_set():
            _metrics.collect(_core.telemetry)

    threads = [threading.Thread(target=busy, args=(b,), daemon=True) for b in breakers]
    threads.append(threading.Thread(target=collecting, daemon=True))
    for thread in threads:
        thread.start()

    results = []
    for n in range(CHILDREN):
        time.sleep(0.02)
        dump = DUMPS!r + f"/child_{n}.txt"
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                with open(dump, "w") as out:
                    faulthandler.dump_traceback_later(HANG_AFTER, exit=True, file=out)
                    for breaker in breakers:
                        exercise(breaker)
                    _metrics.collect(_core.telemetry)
                    atexit._run_exitfuncs()
                    faulthandler.cancel_dump_traceback_later()
            except BaseException:
                import traceback
                with open(dump, "a") as out:
                    traceback.print_exc(file=out)
                code = 3
            os._exit(code)
        results.append((n, pid, dump))

    stop.set()
    report = []
    deadline = time.monotonic() + HANG_AFTER + 10
    for n, pid, dump in results:
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "killed"
            else:
                time.sleep(0.05)
        text = open(dump).read() if os.path.exists(dump) else ""
        report.append({"child": n, "status": status, "dump": text})
    print(json.dumps(report))
""")


def test_no_child_hangs_when_forked_while_threads_call_through_telemetry_enabled_breakers(tmp_path: Path) -> None:
    with grpc_receiver() as received:
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": received.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "50",
                    "OTEL_BSP_SCHEDULE_DELAY": "20", "OTEL_BLRP_SCHEDULE_DELAY": "20"})
        code = PARENT.replace("CHILDREN", "24").replace("HANG_AFTER", "8").replace("DUMPS!r", repr(str(tmp_path)))
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) == 24
    hung = [child for child in report if child["status"] != 0]
    # Where each hung child was stuck: its main thread's innermost frame.
    ours = [child for child in hung if "_breaker.py" not in _stuck_in(child["dump"])]
    assert ours == [], "\n\n".join(f"child {c['child']}: {c['status']}\n{c['dump']}" for c in ours)
    core_fork_safe = "register_at_fork" in inspect.getsource(otel_cb._breaker)
    if core_fork_safe:
        assert hung == [], "\n\n".join(f"child {c['child']}: {c['status']}\n{c['dump']}" for c in hung)


def _stuck_in(dump: str) -> str:
    """The innermost frame of the main thread (the one running ``<module>``) in a faulthandler dump."""
    for block in dump.split("\n\n"):
        frames = [line.strip() for line in block.splitlines() if line.strip().startswith("File ")]
        if frames and frames[-1].endswith("in <module>"):
            return frames[0]
    return ""


QUIET_OR_BUSY = textwrap.dedent("""
    import os, sys, time
    from opentelemetry import trace
    import otel_cb.telemetry as telemetry
    from otel_cb.telemetry import _configure

    _configure._GRPC_SETTLE = 0.2  # the test's own settle time, to keep it short
    telemetry.configure()
    tracer = trace.get_tracer("fork_test")
    with tracer.start_as_current_span("parent"):
        pass
    assert trace.get_tracer_provider().force_flush()  # an export over gRPC: the channel is live
    if sys.argv[1] != "busy":
        time.sleep(0.5)  # past the settle time: gRPC's fork handlers can run
    if sys.argv[1] == "grpc_thread":  # the application's own thread waits inside grpc
        import grpc, threading
        waiting = grpc.channel_ready_future(grpc.insecure_channel("127.0.0.1:1"))
        threading.Thread(target=lambda: waiting.exception(timeout=5), daemon=True).start()
        time.sleep(0.1)
    pid = os.fork()
    if pid == 0:
        with tracer.start_as_current_span("child_" + sys.argv[1]):
            pass
        trace.get_tracer_provider().force_flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
""")


def _fork_after_export(mode: str) -> tuple[int, str, list[str]]:
    with grpc_receiver() as received:
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = received.endpoint
        result = subprocess.run([sys.executable, "-c", QUIET_OR_BUSY, mode], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        received.wait_for(lambda r: any(span.name.startswith("child_") for span in r.spans()), timeout=2.0)
        names = [span.name for span in received.spans()]
    return int(result.stdout.split()[-1]), result.stderr, names


def test_a_child_forked_while_grpc_is_quiet_exports_its_spans_over_grpc() -> None:
    status, stderr, names = _fork_after_export("quiet")
    assert status == 0
    assert "child_quiet" in names and "parent" in names
    assert "sends no telemetry over gRPC" not in stderr


@pytest.mark.parametrize("busy", ["busy", "grpc_thread"], ids=["just_after_an_export", "while_a_thread_is_in_grpc"])
def test_a_child_forked_while_grpc_is_busy_sends_nothing_over_grpc_and_says_so_once(busy: str) -> None:
    status, stderr, names = _fork_after_export(busy)
    assert status == 0
    assert f"child_{busy}" not in names and "parent" in names
    assert stderr.count("sends no telemetry over gRPC") == 1
