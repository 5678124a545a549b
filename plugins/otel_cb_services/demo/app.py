"""The incident manager loop, its live view and its closing summary.

Each round fetches alerts from Sentinel, asks Shield about each, streams an
inference from EdgeAgent and stores an incident in PostgreSQL, while the
simulated services follow the fault script. The clients hold no breaker
code: run the demo under ``otel-cb-instrument`` and the breakers appear.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

from otel_cb import CircuitOpenError, StateChangeEvent, registry

from ..clients import EdgeAgentClient, SentinelClient, ShieldClient
from ..protos import edge_pb2
from .database import find_database
from .faults import FaultScript
from .servers import DatabaseProxy, start_services

__all__ = ["DEFAULT_PHASES", "main"]

T = TypeVar("T")
DEFAULT_PHASES = "healthy:4,outage:8,recovery:14,slow:4,recovery:14,flapping:6,recovery:14"
BREAKERS = ("sentinel_client", "shield_client", "edge_agent_client", "database_pool")


@dataclass
class Tally:
    """What one dependency did for the incident manager."""

    calls: int = 0
    ok: int = 0
    failed: int = 0
    rejected: int = 0
    fallbacks: int = 0
    failed_seconds: float = 0.0
    states: list[str] = field(default_factory=list)

    @property
    def mean_failure_seconds(self) -> float:
        return self.failed_seconds / self.failed if self.failed else 0.0


def _rejected(exc: BaseException) -> bool:
    return isinstance(exc, CircuitOpenError) or isinstance(exc.__cause__, CircuitOpenError)


class IncidentManager:
    """The origin system's main loop, against the four dependencies."""

    def __init__(self, dsn: str | None) -> None:
        self.sentinel = SentinelClient(timeout=0.5)
        self.shield = ShieldClient(timeout=0.5)
        self.edge = EdgeAgentClient(timeout=0.5)
        self.dsn = dsn
        self.pool: Any = None
        self.tallies = {name: Tally() for name in BREAKERS}
        self.incidents = 0

    async def _timed(self, name: str, action: Awaitable[T]) -> T | None:
        """Await one call to a dependency and tally how it went."""
        tally = self.tallies[name]
        tally.calls += 1
        start = time.perf_counter()
        try:
            result = await action
        except Exception as exc:
            if _rejected(exc):
                tally.rejected += 1
            else:
                tally.failed += 1
                tally.failed_seconds += time.perf_counter() - start
            return None
        tally.ok += 1
        return result

    async def round(self) -> None:
        alerts = await self._timed("sentinel_client", self.sentinel.fetch_alerts(limit=2))
        if alerts is not None and alerts.stale:
            self.tallies["sentinel_client"].fallbacks += 1
        for alert in alerts.alerts if alerts is not None else ():
            verdict = await self._timed("shield_client", self.shield.analyze_security_event(alert.id, alert.message))
            summary = await self._timed("edge_agent_client", self._summarise(alert.message))
            # Fail closed: an alert Shield did not scan is stored quarantined, never acted on.
            await self._timed("database_pool", self._store(
                alert.id, alert.severity, verdict.reason if verdict is not None else "NOT SCANNED: quarantined",
                summary or "(no summary)"))

    async def _summarise(self, text: str) -> str:
        async def requests() -> AsyncIterator[edge_pb2.InferenceRequest]:
            for index in range(2):
                yield edge_pb2.InferenceRequest(request_id=f"r{index}", prompt=text)

        return " ".join([chunk.text async for chunk in self.edge.stream_inference(requests())])

    async def _store(self, alert_id: str, severity: str, verdict: str, summary: str) -> None:
        if self.dsn is None:
            return
        import asyncpg

        if self.pool is None:
            self.pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=3, timeout=1.0,
                                                  command_timeout=1.0)
            await self.pool.execute(
                "CREATE TABLE IF NOT EXISTS incidents (id serial PRIMARY KEY, alert_id text, severity text, "
                "verdict text, summary text, created_at timestamptz DEFAULT now())")
        await self.pool.execute("INSERT INTO incidents (alert_id, severity, verdict, summary) VALUES ($1, $2, $3, $4)",
                                alert_id, severity, verdict, summary)
        self.incidents += 1

    async def aclose(self) -> None:
        await self.sentinel.aclose()
        await self.shield.aclose()
        await self.edge.aclose()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 2)
            except (Exception, asyncio.TimeoutError):
                self.pool.terminate()


class LiveView:
    """Prints each transition as it happens, and the breakers' table when a state changed or every 5 s."""

    TABLE_EVERY = 5.0

    def __init__(self, manager: IncidentManager, script: FaultScript, out: TextIO = sys.stdout) -> None:
        self.manager = manager
        self.script = script
        self.out = out
        self._watched: set[str] = set()
        self._start = time.monotonic()
        self._changed = True
        self._last_table = 0.0

    def _on_transition(self, event: StateChangeEvent) -> None:
        tally = self.manager.tallies.get(event.name)
        if tally is not None:
            tally.states.append(event.state.value)
        self._changed = True
        self._print(f"[{time.monotonic() - self._start:5.1f}s] {event.name}: {event.previous_state.value} -> "
                    f"{event.state.value} ({event.reason.value})")

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def refresh(self, force: bool = False) -> None:
        # Breakers appear when routing first sees their destination: watch new ones.
        for breaker in registry:
            if breaker.name in BREAKERS and breaker.name not in self._watched:
                self._watched.add(breaker.name)
                breaker.add_listener(self._on_transition)
        now = time.monotonic()
        if not (force or self._changed or now - self._last_table >= self.TABLE_EVERY):
            return
        self._changed = False
        self._last_table = now
        rows = [f"-- {now - self._start:5.1f}s, phase {self.script.current()} --",
                f"{'breaker':<18} {'state':<10} {'calls':>6} {'failed':>7} {'rejected':>9} {'fallbacks':>10}"]
        for name in BREAKERS:
            found = registry.get(name)
            tally = self.manager.tallies[name]
            state = found.state.value if found is not None else "-"
            rows.append(f"{name:<18} {state:<10} {tally.calls:>6} {tally.failed:>7} {tally.rejected:>9} "
                        f"{tally.fallbacks:>10}")
        self._print("\n".join(rows))


def _proxied(dsn: str, port: int) -> tuple[str, tuple[str, int]]:
    parts = urlsplit(dsn)
    host, upstream_port = parts.hostname or "127.0.0.1", parts.port or 5432
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), (host, upstream_port)


def summary(manager: IncidentManager) -> str:
    lines = ["", "Summary: calls that failed fast instead of waiting on a dead dependency", "",
             "(failed fast: rejected by the open breaker, or served from its fallback)", "",
             f"{'breaker':<18} {'calls':>6} {'ok':>6} {'failed':>7} {'failed fast':>12} {'fallbacks':>10} "
             f"{'time saved':>11}  opened and closed again"]
    for name in BREAKERS:
        tally = manager.tallies[name]
        # Each call that failed fast would have waited about as long as the calls that did fail.
        saved = (tally.rejected + tally.fallbacks) * tally.mean_failure_seconds
        cycled = "yes" if "open" in tally.states and tally.states and tally.states[-1] == "closed" else (
            "opened, not closed yet" if "open" in tally.states else "no")
        fast = tally.rejected + tally.fallbacks
        lines.append(f"{name:<18} {tally.calls:>6} {tally.ok:>6} {tally.failed:>7} {fast:>12} "
                     f"{tally.fallbacks:>10} {saved:>10.1f}s  {cycled}")
    lines.append(f"\nincidents stored: {manager.incidents}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    script = FaultScript.parse(args.phases, slow_seconds=args.slow_seconds)
    services = start_services(script)
    os.environ["SENTINEL_URL"] = services.sentinel_url
    os.environ["SHIELD_TARGET"] = services.shield_target
    os.environ["EDGE_AGENT_TARGET"] = services.edge_agent_target
    dsn, cluster, note = (None, None, "running without the database (--no-database)") if args.no_database \
        else find_database()
    proxy = None
    if dsn is not None:
        proxy = DatabaseProxy(("127.0.0.1", 0), script)
        dsn, upstream = _proxied(dsn, proxy.port)
        proxy.upstream = upstream
        os.environ["DATABASE_URL"] = dsn
    print(f"otel-cb demo: Sentinel {services.sentinel_url}, Shield {services.shield_target}, "
          f"EdgeAgent {services.edge_agent_target}; database: {note}", flush=True)
    print(f"fault script: {args.phases} ({script.total_seconds:.0f}s)", flush=True)
    manager = IncidentManager(dsn)
    view = LiveView(manager, script)
    script.restart()
    try:
        while not script.finished():
            await manager.round()
            view.refresh()
            await asyncio.sleep(args.interval)
        view.refresh(force=True)
    finally:
        await manager.aclose()
        services.close()
        if proxy is not None:
            proxy.close()
        if cluster is not None:
            cluster.stop()
    print(summary(manager), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otel_cb_services.demo", description=__doc__)
    parser.add_argument("--phases", default=DEFAULT_PHASES, help="fault script, NAME:SECONDS,... "
                        f"(default {DEFAULT_PHASES})")
    parser.add_argument("--slow-seconds", type=float, default=1.0, help="delay of a slow answer (default 1.0)")
    parser.add_argument("--interval", type=float, default=0.1, help="pause between rounds (default 0.1)")
    parser.add_argument("--no-database", action="store_true", help="do not store incidents")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
