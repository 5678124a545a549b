"""What the demo shows: the breakers' counters, a live view while it runs, and the closing summary.

Every number comes from the breakers' ``snapshot()``, the same counters the
telemetry exports as ``circuit_breaker.calls`` and
``circuit_breaker.fallbacks``, so the demo's screen, Prometheus and the
dashboards agree. On a terminal the view is a ``rich`` table updated in place,
with transitions and otel-cb's notices printed above it; elsewhere (CI, a pipe)
it is plain lines. The state-change lines of the ``otel_cb`` logger are left
out: the view prints each transition itself, once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from otel_cb import CircuitBreaker, StateChangeEvent, registry

from .faults import FaultScript

__all__ = ["BREAKERS", "COLUMNS", "Row", "View", "rows", "summary"]

BREAKERS = ("sentinel_client", "shield_client", "edge_agent_client", "database_pool")

# Column, and what it counts; printed under the summary so every number is defined.
COLUMNS = (
    ("calls", "calls the breaker decided on = ok + failed + ignored + rejected"),
    ("ok", "let through, succeeded"),
    ("failed", "let through, failed (error status, refused connection or timeout)"),
    ("ignored", "let through, ended by an error that does not count against the dependency"),
    ("rejected", "failed fast by the open breaker; the dependency was not called"),
    ("fb ok", "of the failed and rejected calls: answered by a fallback (Sentinel's stale alerts)"),
    ("fb refused", "of the failed and rejected calls: answered by a fail-closed refusal (Shield's NOT SCANNED)"),
    ("fb failed", "of the failed and rejected calls: the fallback itself failed"),
    ("time saved", "rejected x the mean duration of this breaker's failed calls: the wait each rejected "
                   "call was spared"),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One breaker's counters at one moment, read from its snapshot."""

    name: str
    state: str
    ok: int = 0
    failed: int = 0
    ignored: int = 0
    rejected: int = 0
    fallback_ok: int = 0
    fallback_refused: int = 0
    fallback_failed: int = 0
    mean_failure_seconds: float = 0.0

    @classmethod
    def of(cls, name: str, breaker: CircuitBreaker | None) -> Row:
        if breaker is None:
            return cls(name, "-")
        snap = breaker.snapshot()
        failures = snap.durations.get("failure")
        return cls(
            name, snap.state.value, snap.calls["success"], snap.calls["failure"], snap.calls["ignored"],
            snap.calls["rejected"], snap.fallbacks["success"], snap.fallbacks.get("refused", 0),
            snap.fallbacks["failure"],
            failures.sum / failures.count if failures is not None and failures.count else 0.0)

    @property
    def calls(self) -> int:
        return self.ok + self.failed + self.ignored + self.rejected

    @property
    def saved_seconds(self) -> float:
        return self.rejected * self.mean_failure_seconds

    def cells(self) -> list[str]:
        return [self.name, self.state, *(str(n) for n in (
            self.calls, self.ok, self.failed, self.ignored, self.rejected,
            self.fallback_ok, self.fallback_refused, self.fallback_failed)), f"{self.saved_seconds:.2f}s"]


def rows() -> list[Row]:
    """The four breakers now (a breaker appears when its dependency is first called)."""
    return [Row.of(name, registry.get(name)) for name in BREAKERS]


_HEADERS = ("breaker", "state", *(name for name, _ in COLUMNS))


def summary(final: list[Row], cycles: dict[str, list[str]], incidents: int, quarantined: int) -> str:
    """The closing table, its legend, and what happened to the incidents."""
    table = [[*_HEADERS, "opened and closed again"]]
    for row in final:
        states = cycles.get(row.name, [])
        cycled = "no" if "open" not in states else "yes" if states[-1] == "closed" else "opened, not closed yet"
        table.append([*row.cells(), cycled])
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS))]
    lines = ["", "Summary (the breakers' own counters, as exported in circuit_breaker.calls and "
             "circuit_breaker.fallbacks):", ""]
    for line in table:
        cells = [cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(
            line, widths, strict=False))]  # the last column is left ragged
        lines.append("  ".join([*cells, line[-1]]))
    lines.append("")
    lines.extend(f"  {name:<11} {meaning}" for name, meaning in COLUMNS)
    lines.append(f"\nincidents stored: {incidents} ({quarantined} quarantined: Shield did not scan them)")
    return "\n".join(lines)


class _Notices(logging.Handler):
    """Routes the ``otel_cb`` logger's records to the view, without its state-change lines."""

    # The telemetry's own transition lines carry this; the view prints transitions itself.
    _TRANSITION = "circuit_breaker.state_change"

    def __init__(self, view: View) -> None:
        super().__init__(logging.INFO)
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "otel_cb_event", None) == self._TRANSITION:
            return
        try:
            self.view.line(record.getMessage())
        except Exception:
            self.handleError(record)


class View:
    """The demo's screen: a live table on a terminal, plain lines elsewhere."""

    REFRESH = 0.25

    def __init__(self, script: FaultScript, out: TextIO | None = None) -> None:
        self.script = script
        self.console = Console(file=out or sys.stdout, highlight=False, markup=False)
        self.live_mode = self.console.is_terminal
        self.cycles: dict[str, list[str]] = {name: [] for name in BREAKERS}
        self._watched: set[str] = set()
        self._lock = threading.Lock()  # lines come from the loop, gRPC threads and the exporters
        self._live: Live | None = None
        self._phase = ""
        self._last = 0.0
        self._start = time.monotonic()

    # -- lines ------------------------------------------------------------------

    def line(self, text: str) -> None:
        """Print one line; on a terminal, above the live table."""
        with self._lock:
            self.console.print(text, soft_wrap=True)

    def _stamped(self, text: str) -> None:
        self.line(f"[{time.monotonic() - self._start:5.1f}s] {text}")

    def _on_transition(self, event: StateChangeEvent) -> None:
        self.cycles[event.name].append(event.state.value)
        self._stamped(f"{event.name}: {event.previous_state.value} -> {event.state.value} ({event.reason.value})")

    # -- the run ------------------------------------------------------------------

    @contextmanager
    def notices(self) -> Iterator[View]:
        """Route otel-cb's notices through the view for the duration of the block."""
        notices = _Notices(self)
        logger = logging.getLogger("otel_cb")
        propagate = logger.propagate
        logger.addHandler(notices)
        logger.propagate = False
        try:
            yield self
        finally:
            logger.removeHandler(notices)
            logger.propagate = propagate

    @contextmanager
    def live(self) -> Iterator[View]:
        """Show the live table (on a terminal) for the duration of the block; it is gone afterwards."""
        self._start = time.monotonic()
        if self.live_mode:
            self._live = Live(self._table(), console=self.console, auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        try:
            yield self
        finally:
            if self._live is not None:
                with self._lock:
                    self._live.stop()
                    self._live = None

    def refresh(self) -> None:
        """Watch new breakers, say when the phase changes, and redraw the live table (at most 4 times a second)."""
        # Breakers appear when routing first sees their destination.
        for breaker in registry:
            if breaker.name in BREAKERS and breaker.name not in self._watched:
                self._watched.add(breaker.name)
                # Time saved needs the breaker's failed-call durations, kept only when asked for.
                breaker.enable_duration_histogram()
                breaker.add_listener(self._on_transition)
        phase, phase_left, _ = self.script.position()
        if phase != self._phase:
            self._phase = phase
            self._stamped(f"phase {phase} for {phase_left:.0f}s: {_MEANING[phase]}")
        now = time.monotonic()
        if self._live is not None and now - self._last >= self.REFRESH:
            self._last = now
            table = self._table()  # outside the lock: a snapshot takes the breaker's lock
            with self._lock:
                if self._live is not None:
                    self._live.update(table, refresh=True)

    def _table(self) -> Table:
        phase, phase_left, left = self.script.position()
        # Narrower than the summary, to fit 80 columns: the fallbacks share one column.
        table = Table(title=f"phase {phase}: {phase_left:.0f}s left in it, {left:.0f}s left in the demo",
                      caption="calls = ok + failed + ignored + rejected; fallbacks: answers instead of an error, "
                              "ok/refused/failed; saved: rejected x mean failed-call time",
                      title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, padding=0,
                      show_edge=False)
        table.add_column("breaker", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for header in ("calls", "ok", "failed", "ignored", "rejected", "fallbacks", "saved"):
            table.add_column(header, justify="right", no_wrap=True)
        for row in rows():
            cells = row.cells()
            table.add_row(*cells[:7], "/".join(cells[7:10]), cells[10])
        return table


_MEANING = {
    "healthy": "every dependency answers",
    "recovery": "every dependency answers again",
    "outage": "every request fails",
    "slow": "answers come after the clients' timeouts",
    "flapping": "every other request fails",
}
