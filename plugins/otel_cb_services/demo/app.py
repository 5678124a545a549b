"""The incident manager loop and the demo's command line.

Each round fetches alerts from Sentinel, asks Shield about each, streams an
inference from EdgeAgent and stores an incident in PostgreSQL, while the
simulated services follow the fault script. The clients hold no breaker
code: run the demo under ``otel-cb-instrument`` and the breakers appear.
What the screen shows is ``view``'s. Ctrl-C stops the run, prints the
summary so far and exits with 130.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..clients import EdgeAgentClient, SentinelClient, ShieldClient
from ..protos import edge_pb2
from .database import LocalCluster, find_database
from .faults import FaultScript
from .servers import DatabaseProxy, start_services
from .view import View, rows, summary

__all__ = ["DEFAULT_PHASES", "main"]

T = TypeVar("T")
DEFAULT_PHASES = "healthy:4,outage:8,recovery:14,slow:4,recovery:14,flapping:6,recovery:14"


class IncidentManager:
    """The origin system's main loop, against the four dependencies."""

    def __init__(self, dsn: str | None) -> None:
        self.sentinel = SentinelClient(timeout=0.5)
        self.shield = ShieldClient(timeout=0.5)
        self.edge = EdgeAgentClient(timeout=0.5)
        self.dsn = dsn
        self.pool: Any = None
        self.incidents = 0
        self.quarantined = 0

    @staticmethod
    async def _attempt(action: Awaitable[T]) -> T | None:
        """Await one call to a dependency; None when it failed (the breakers count how)."""
        try:
            return await action
        except Exception:
            return None

    async def round(self) -> None:
        alerts = await self._attempt(self.sentinel.fetch_alerts(limit=2))
        for alert in alerts.alerts if alerts is not None else ():
            verdict = await self._attempt(self.shield.analyze_security_event(alert.id, alert.message))
            summary = await self._attempt(self._summarise(alert.message))
            # Fail closed: an alert Shield did not scan is stored quarantined, never acted on.
            stored = await self._attempt(self._store(
                alert.id, alert.severity, verdict.reason if verdict is not None else "NOT SCANNED: quarantined",
                summary or "(no summary)"))
            if stored and verdict is None:
                self.quarantined += 1

    async def _summarise(self, text: str) -> str:
        async def requests() -> AsyncIterator[edge_pb2.InferenceRequest]:
            for index in range(2):
                yield edge_pb2.InferenceRequest(request_id=f"r{index}", prompt=text)

        return " ".join([chunk.text async for chunk in self.edge.stream_inference(requests())])

    async def _store(self, alert_id: str, severity: str, verdict: str, summary: str) -> bool:
        if self.dsn is None:
            return False
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
        return True

    async def aclose(self) -> None:
        await self.sentinel.aclose()
        await self.shield.aclose()
        await self.edge.aclose()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 2)
            except (Exception, asyncio.TimeoutError):
                self.pool.terminate()


def _proxied(dsn: str, port: int) -> tuple[str, tuple[str, int]]:
    parts = urlsplit(dsn)
    host, upstream_port = parts.hostname or "127.0.0.1", parts.port or 5432
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), (host, upstream_port)


async def run(args: argparse.Namespace) -> int:
    script = FaultScript.parse(args.phases, slow_seconds=args.slow_seconds)
    view = View(script)
    interrupted = False
    task = asyncio.current_task()
    assert task is not None

    def interrupt() -> None:  # Ctrl-C: stop the loop, clean up, print the summary
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            task.cancel()

    loop = asyncio.get_running_loop()
    # Heard while the loop runs, including while PostgreSQL starts and while
    # everything stops (a second Ctrl-C does not break off the clean-up).
    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        with view.notices():  # until the summary is out: a notice never lands inside it
            manager = await _run(args, script, view, lambda: interrupted)
            # Read once everything has stopped: the same counters the exit's last export sends.
            view.line(summary(rows(), view.cycles, manager.incidents if manager else 0,
                              manager.quarantined if manager else 0))
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if interrupted:
        view.line("interrupted (Ctrl-C): the summary covers the run so far")
    return 130 if interrupted else 0


async def _run(args: argparse.Namespace, script: FaultScript, view: View,
               interrupted: Callable[[], bool]) -> IncidentManager | None:
    """Start the services and the database, run the script, stop everything; the manager if it started."""
    view.line(f"otel-cb demo: fault script {args.phases} ({script.total_seconds:.0f}s); starting the simulated "
              "services")
    services = start_services(script)
    os.environ["SENTINEL_URL"] = services.sentinel_url
    os.environ["SHIELD_TARGET"] = services.shield_target
    os.environ["EDGE_AGENT_TARGET"] = services.edge_agent_target
    view.line(f"services: Sentinel {services.sentinel_url}, Shield {services.shield_target}, "
              f"EdgeAgent {services.edge_agent_target}")
    manager: IncidentManager | None = None
    proxy = cluster = None
    try:
        dsn, cluster, note = (None, None, "running without the database (--no-database)") if args.no_database \
            else await _database(view.line)
        view.line(f"database: {note}")
        if dsn is not None:
            proxy = DatabaseProxy(("127.0.0.1", 0), script)
            dsn, upstream = _proxied(dsn, proxy.port)
            proxy.upstream = upstream
            os.environ["DATABASE_URL"] = dsn
        manager = IncidentManager(dsn)
        script.restart()
        with view.live():
            while not script.finished():
                await manager.round()
                view.refresh()
                await asyncio.sleep(args.interval)
            view.refresh()
    except asyncio.CancelledError:
        if not interrupted():
            raise
    finally:
        if manager is not None:
            await manager.aclose()
        services.close()
        if proxy is not None:
            proxy.close()
        if cluster is not None:
            cluster.stop()
    return manager


async def _database(announce: Callable[[str], None]) -> tuple[str | None, LocalCluster | None, str]:
    """``find_database`` off the event loop, so Ctrl-C is heard while PostgreSQL starts."""
    found = asyncio.get_running_loop().run_in_executor(None, find_database, announce)
    try:
        return await asyncio.shield(found)
    except asyncio.CancelledError:
        _, cluster, _ = await found  # then stop the cluster it may have started
        if cluster is not None:
            cluster.stop()
        raise


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
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handler is in place
        return 130
