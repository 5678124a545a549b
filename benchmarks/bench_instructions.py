"""Instructions per request, counted by callgrind: what each layer adds to a traced request, free of timing noise.

The wall-time ratios of ``bench_httpx``, ``bench_requests`` and
``bench_asyncpg`` move by a few percent between runs on a shared machine,
as much as the differences they measure; instruction counts move by a few
thousand per request (two runs of this section agreed within about 5,000). Each
figure here is one side's real requests, set up as those sections set them
up (the same loopback HTTP server in its own process, or the benchmark
PostgreSQL; OpenTelemetry's client instrumentation with an SDK tracer
provider), run twice under ``valgrind --tool=callgrind``, with a few and
with many requests after the same warm-up: per request is the difference of
the two totals over the difference of the counts, so start-up and warm-up
cancel out. The collector is off in the counted part (one full collection
landing in one run and not the other would move a figure by thousands of
instructions per request).

Sides, in otel-cb's place beneath OpenTelemetry's wrapper:

- *unpatched*: OpenTelemetry's instrumentation alone;
- *wrapt only*: a wrapt wrapper that only calls through (what being patched costs);
- *attributes only*: a wrapper that also puts ``circuit_breaker.name`` and
  ``circuit_breaker.state`` on the client span, as otel-cb does: the floor of
  any breaker that marks the span;
- *otel-cb*: the patches as ``otel_cb.instrument()`` applies them.

Instructions are not time (code that runs cold between two requests costs
more per instruction than the rest), but they are what a change to the code
moves, and the same count on every machine. Needs valgrind (Debian package
``valgrind``; ``scripts/test`` installs it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .bench_httpx import FLOOR, ROOT, STAND_INS, UNPATCHED, WRAPT_ONLY, server_process, set_up

__all__ = ["TITLE", "run"]

TITLE = "Instructions per request under callgrind: each layer's share of a traced request"

OTEL_CB = "otel_cb"
SIDES = [UNPATCHED, WRAPT_ONLY, FLOOR, OTEL_CB]
WARM_UP = 30
CLIENTS = ["httpx", "requests", "asyncpg"]


def run(quick: bool) -> str:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian package valgrind; scripts/test installs it)")
    few, many = (5, 15) if quick else (50, 250)
    clients = CLIENTS[:1] if quick else CLIENTS
    sides = [UNPATCHED, OTEL_CB] if quick else SIDES
    dsn = os.environ.get("OTEL_CB_TEST_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
    with server_process() as base_url, tempfile.TemporaryDirectory() as scratch, \
            concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        targets = {"httpx": f"{base_url}/item", "requests": f"{base_url}/item", "asyncpg": dsn}
        jobs = {(client, side, count): pool.submit(_count, valgrind, Path(scratch), client, side, count,
                                                   targets[client])
                for client in clients for side in sides for count in (few, many)}
        totals = {key: job.result() for key, job in jobs.items()}
    lines = ["| client | side | instructions per request | more than unpatched | of an unpatched request |",
             "|---|---|---|---|---|"]
    notes = []
    for client in clients:
        per_request = {side: (totals[client, side, many] - totals[client, side, few]) / (many - few)
                       for side in sides}
        base = per_request[UNPATCHED]
        for side in sides:
            extra = per_request[side] - base
            lines.append(f"| {client} | {side} | {per_request[side]:,.0f} | {extra:+,.0f} | "
                         f"{extra / base * 100:+.2f}% |")
        if FLOOR in per_request:
            ours = per_request[OTEL_CB] - per_request[FLOOR]
            notes.append(f"{client}: otel-cb beyond the attributes {ours:+,.0f} instructions per request "
                         f"({ours / base * 100:+.2f}% of an unpatched request); the attributes alone "
                         f"{per_request[FLOOR] - per_request[WRAPT_ONLY]:+,.0f}.")
    return "\n".join([*lines, "", *notes, "",
                      f"Per request: (total with {many} requests - total with {few}) / {many - few}, each run "
                      f"after {WARM_UP} warm-up requests, the collector off; keep-alive GETs for httpx and "
                      "requests (sync), `fetchval('SELECT 1')` for asyncpg."])


def _count(valgrind: str, scratch: Path, client: str, side: str, count: int, target: str) -> int:
    """Total instructions of one child run under callgrind."""
    out = scratch / f"{client}-{side.replace(' ', '_')}-{count}.out"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("OTEL_CB_BENCH_BASELINE", None)
    result = subprocess.run([valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                             "benchmarks.bench_instructions", client, side, str(count), target],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{client} {side} under callgrind failed:\n{result.stderr[-2000:]}")
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {out}")


# -- the child: one side's requests -------------------------------------------------------


def _httpx(side: str, count: int, url: str) -> None:
    import httpx

    from .bench_httpx import _Sides

    sides = _Sides()
    if side == UNPATCHED:
        sides.unpatched()
    else:
        sides.patched(side)
    with httpx.Client() as client:
        _requests_of(lambda: client.get(url).raise_for_status(), count)


def _requests(side: str, count: int, url: str) -> None:
    import requests

    from .bench_requests import _Sides

    sides = _Sides([OTEL_CB])
    sides.enter(side)
    with requests.Session() as session:
        _requests_of(lambda: session.get(url).raise_for_status(), count)


def _requests_of(request: Callable[[], object], count: int) -> None:
    for _ in range(WARM_UP):
        request()
    gc.disable()
    for _ in range(count):
        request()


def _asyncpg(side: str, count: int, dsn: str) -> None:
    import asyncpg
    import wrapt
    from opentelemetry import trace
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    from .bench_asyncpg import BREAKER, _Package

    if side == OTEL_CB:
        from otel_cb.integrations.asyncpg import db_target

        package = _Package("otel_cb", {"circuit_breakers": {BREAKER: {"match": {"db": [db_target(dsn)]}}},
                                       "auto_breakers": {"enabled": False}})
        package.root.registry.add(package.breaker)
        package.instrument()
    elif side in STAND_INS:
        wrapt.wrap_function_wrapper("asyncpg.connection", "Connection.fetchval", STAND_INS[side])
    AsyncPGInstrumentor().instrument(tracer_provider=trace.get_tracer_provider())

    async def queries() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            for _ in range(WARM_UP):
                await conn.fetchval("SELECT 1")
            gc.disable()
            for _ in range(count):
                await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    asyncio.run(queries())


def main(argv: list[str]) -> int:
    client, side, count, target = argv
    set_up()
    {"httpx": _httpx, "requests": _requests, "asyncpg": _asyncpg}[client](side, int(count), target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
