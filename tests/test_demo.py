"""The demo as a user runs it: under ``otel-cb-instrument``, with a short fault script.

One run against a real OTLP receiver checks that the demo tells one story: its
summary equals what the breakers exported (calls and fallbacks by outcome),
its columns add up, each transition is printed once and matches the exported
transition counter, and the breakers trip and recover. Two shorter runs, without
the database, check Ctrl-C and the live view on a terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("otel_cb_services", reason="the service plugins are not installed (pip install -e plugins)")

from .otlp_receiver import Received, attributes, grpc_receiver
from .postgres import postgres_cluster, postgres_dsn  # noqa: F401  (fixtures)

BREAKERS = ("sentinel_client", "shield_client", "edge_agent_client", "database_pool")
BIN = Path(sys.executable).parent
DEMO = [str(BIN / "otel-cb-instrument"), "--config", "otel-cb.yaml", str(BIN / "otel-cb-demo")]
# The summary's counter columns, in order, and the exported (metric, outcome) each one is.
COUNTERS = {
    "ok": ("circuit_breaker.calls", "success"),
    "failed": ("circuit_breaker.calls", "failure"),
    "ignored": ("circuit_breaker.calls", "ignored"),
    "rejected": ("circuit_breaker.calls", "rejected"),
    "fb ok": ("circuit_breaker.fallbacks", "success"),
    "fb refused": ("circuit_breaker.fallbacks", "refused"),
    "fb failed": ("circuit_breaker.fallbacks", "failure"),
}
TRANSITION = re.compile(r"^\[ *[\d.]+s\] (\w+): (\w+) -> (\w+) \((\w+)\)$")


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Frequent health checks, so that a few seconds of recovery close every breaker again; a
    # max_open_timeout above the outage, so no breaker falls back to probing with user calls.
    (tmp_path / "otel-cb.yaml").write_text("circuit_breakers:\n" + "".join(
        f"  {name}: {{open_timeout: 1s, max_open_timeout: 10s, health_check_interval: 0.2s}}\n"
        for name in BREAKERS))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           **extra}
    for name in ("OTEL_CB_DISABLED", "DATABASE_URL"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str  # noqa: F811
             ) -> Iterator[tuple[subprocess.CompletedProcess[str], Received]]:
    tmp_path = tmp_path_factory.mktemp("demo")
    with grpc_receiver() as received:
        env = _environment(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=received.endpoint,
                           OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_TRACES_EXPORTER="otlp",
                           OTEL_METRICS_EXPORTER="otlp", OTEL_SERVICE_NAME="incident-manager",
                           OTEL_METRIC_EXPORT_INTERVAL="1000", DATABASE_URL=postgres_dsn)
        result = subprocess.run([*DEMO, "--phases", "healthy:1,outage:3,recovery:6"], capture_output=True,
                                text=True, timeout=90, env=env, cwd=tmp_path)
        # The exit's final export is done before the process ends; nothing more arrives.
        yield result, received


def _summary(stdout: str) -> dict[str, dict[str, str]]:
    """The summary table: breaker -> column -> cell."""
    lines = stdout.split("\nSummary")[1].splitlines()
    header = next(line for line in lines if line.startswith("breaker"))
    # Columns are separated by two or more spaces (a header may hold one).
    names = re.split(r" {2,}", header.strip())
    table = {}
    for line in lines:
        cells = re.split(r" {2,}", line.strip())
        if cells[0] in BREAKERS:
            table[cells[0]] = dict(zip(names, cells, strict=True))
    return table


def _exported(received: Received, metric: str) -> dict[tuple[Any, ...], int]:
    """The last value of each series of a cumulative counter, by its attributes."""
    last: dict[tuple[Any, ...], int] = {}
    for _, point in received.metric_points(metric):
        last[tuple(sorted(attributes(point.attributes).items()))] = int(point.as_int or point.as_double)
    return last


def test_the_demo_summary_is_what_the_breakers_exported(
        demo_run: tuple[subprocess.CompletedProcess[str], Received]) -> None:
    result, received = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    summary = _summary(result.stdout)
    assert set(summary) == set(BREAKERS), result.stdout
    exported = {metric: _exported(received, metric) for metric in ("circuit_breaker.calls",
                                                                   "circuit_breaker.fallbacks")}
    for name, row in summary.items():
        for column, (metric, outcome) in COUNTERS.items():
            series = (("circuit_breaker.name", name), ("circuit_breaker.outcome", outcome))
            assert int(row[column]) == exported[metric].get(series, 0), (name, column, row, exported[metric])
        assert int(row["calls"]) == sum(int(row[c]) for c in ("ok", "failed", "ignored", "rejected")), row
        assert int(row["rejected"]) > 0, row  # the open breaker failed calls fast
        assert row["opened and closed again"] == "yes", row
        assert float(row["time saved"].rstrip("s")) > 0, row


def test_stale_alerts_are_fallbacks_served_and_not_scanned_answers_are_refusals(
        demo_run: tuple[subprocess.CompletedProcess[str], Received]) -> None:
    summary = _summary(demo_run[0].stdout)
    assert int(summary["sentinel_client"]["fb ok"]) > 0
    assert int(summary["shield_client"]["fb refused"]) > 0
    assert int(summary["shield_client"]["fb ok"]) == 0


def test_each_transition_is_printed_once_and_matches_the_exported_count(
        demo_run: tuple[subprocess.CompletedProcess[str], Received]) -> None:
    result, received = demo_run
    printed: dict[tuple[Any, ...], int] = {}
    for line in result.stdout.splitlines():
        match = TRANSITION.match(line)
        if match:
            name, previous, state, reason = match.groups()
            key = (("circuit_breaker.name", name), ("circuit_breaker.previous_state", previous),
                   ("circuit_breaker.reason", reason), ("circuit_breaker.state", state))
            printed[key] = printed.get(key, 0) + 1
    assert printed == _exported(received, "circuit_breaker.transitions")
    # Not also as the otel_cb logger's line.
    assert "circuit breaker '" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_every_breaker_recovers_by_its_health_check_without_a_failed_user_probe(
        demo_run: tuple[subprocess.CompletedProcess[str], Received]) -> None:
    """Each server implements its breaker's health check: the checks, not user calls, find the recovery.

    A failed user probe is a ``half_open -> open`` transition (the only way back
    to open from half-open); ``open -> half_open (health_check_passed)`` is a
    recovery the health check found.
    """
    result, _ = demo_run
    transitions = [TRANSITION.match(line) for line in result.stdout.splitlines()]
    seen = [match.groups() for match in transitions if match]
    for name in BREAKERS:
        mine = [(previous, state, reason) for breaker, previous, state, reason in seen if breaker == name]
        assert ("open", "half_open", "health_check_passed") in mine, (name, mine)
        assert not [t for t in mine if t[:2] == ("half_open", "open")], (name, mine)
        assert not [t for t in mine if t[:2] == ("open", "half_open") and t[2] != "health_check_passed"], \
            (name, mine)


def test_the_summary_is_one_block_and_says_what_each_column_counts(
        demo_run: tuple[subprocess.CompletedProcess[str], Received]) -> None:
    result, _ = demo_run
    block = result.stdout.split("\nSummary")[1].split("\nincidents stored:")[0]
    assert "otel-cb" not in block  # no notice in the middle of the table
    for column in ("calls", *COUNTERS, "time saved"):
        assert re.search(rf"^  {re.escape(column)} +\S", block, re.M), column
    assert re.search(r"^incidents stored: [1-9]\d* ", result.stdout, re.M), result.stdout


def test_ctrl_c_prints_the_summary_and_exits_130(tmp_path: Path) -> None:
    demo = subprocess.Popen([*DEMO, "--phases", "healthy:60", "--no-database"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_environment(tmp_path), cwd=tmp_path)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if "phase healthy" in line:
                break
        time.sleep(0.5)
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate(timeout=30)
    finally:
        demo.kill()
        demo.wait()
    assert demo.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert set(_summary(stdout)) == set(BREAKERS), stdout
    assert "interrupted (Ctrl-C)" in stdout


def test_on_a_terminal_the_view_is_live_with_the_phase_and_time_left(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    env = {**_environment(tmp_path), "TERM": "xterm", "COLUMNS": "160", "LINES": "40"}
    demo = subprocess.Popen([*DEMO, "--phases", "healthy:2", "--no-database"], stdin=follower, stdout=follower,
                            stderr=follower, env=env, cwd=tmp_path, close_fds=True)
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the demo closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif demo.poll() is not None:
                break
        assert demo.wait(timeout=30) == 0, screen.decode(errors="replace")
    finally:
        demo.kill()
        os.close(leader)
    text = screen.decode(errors="replace")
    assert re.search(r"phase healthy: \ds left in it, \ds left in the demo", text), text
    assert "\x1b[2K" in text  # redrawn in place (erase line, cursor up), not scrolled
    assert "Summary" in text
