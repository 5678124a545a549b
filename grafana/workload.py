"""A small workload that trips and recovers the four service breakers, to watch the dashboards move.

It drives ``sentinel_client``, ``shield_client``, ``edge_agent_client`` and
``database_pool`` through healthy traffic (with slow and ignored calls),
an outage (failures until the breaker opens, then rejected calls answered by
fallbacks, some of which fail, and a failing health check), and recovery (a
passing health check moves it to half-open, a probe closes it),
cycle after cycle, with open timeouts short enough to see several trips a
minute. No real dependency is called: each "call" is a local function.

Telemetry is set up from the standard ``OTEL_*`` variables by
``otel_cb.telemetry.configure()``, so the same script feeds the collector of
``grafana/docker-compose.yml``::

    OTEL_SERVICE_NAME=incident-manager OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 \\
        .venv/bin/python grafana/workload.py --seconds 600

or, with ``OTEL_METRICS_EXPORTER=prometheus``, a Prometheus pull endpoint
(``tests/test_grafana_e2e.py`` runs it that way against a real Prometheus).
"""

from __future__ import annotations

import argparse
import sys
import time

import otel_cb.telemetry
from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError

__all__ = ["BREAKER_NAMES", "main"]

BREAKER_NAMES = ("sentinel_client", "shield_client", "edge_agent_client", "database_pool")
SLOW = 0.006  # seconds a slow call takes; the breakers count calls from 5 ms as slow


class Outage(Exception):
    """The simulated dependency failing."""


class Dependency:
    """Whether the simulated dependency is up, as its health check sees it."""

    def __init__(self) -> None:
        self.up = True

    def healthy(self) -> bool:
        return self.up


def _setup_telemetry() -> None:
    otel_cb.telemetry.configure()
    otel_cb.telemetry.enable()


def make_breakers(open_timeout: float, dependency: Dependency) -> list[CircuitBreaker]:
    config = CircuitBreakerConfig(
        failure_threshold=3,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window_type="count",
        window_size=20,
        slow_call_duration=0.005,
        slow_call_rate_threshold=1.0,
        open_timeout=open_timeout,
        half_open_max_calls=1,
        success_threshold=1,
        ignore_exceptions=(KeyError,),
        health_check_interval=None,  # cycle() runs the checks, so every cycle shows both outcomes
        healthy_threshold=1,
    )
    return [CircuitBreaker(name, config, health_check=dependency.healthy) for name in BREAKER_NAMES]


def ok() -> str:
    return "ok"


def slow() -> str:
    time.sleep(SLOW)
    return "slow"


def bad_request() -> str:
    raise KeyError("no such alert")  # ignored: the request was wrong, not the dependency


def down() -> str:
    raise Outage("dependency down")


def slow_down() -> str:
    time.sleep(SLOW)
    raise Outage("dependency down, slowly")


def stale(exc: BaseException) -> str:
    return "stale"


def no_fallback(exc: BaseException) -> str:
    raise RuntimeError("no safe fallback") from exc


def call(breaker: CircuitBreaker, fn: object) -> None:
    try:
        breaker.call(fn)  # type: ignore[arg-type]
    except (Outage, KeyError, CircuitOpenError):
        pass


def cycle(breaker: CircuitBreaker, open_timeout: float, dependency: Dependency) -> None:
    """Healthy traffic, an outage that opens the breaker, rejections with fallbacks, a recovering probe."""
    for fn in (ok, ok, slow, ok, bad_request, ok):
        call(breaker, fn)
    breaker.call_with_fallback(ok, stale)
    for fn in (slow_down, down, down, down):  # opens on consecutive failures
        call(breaker, fn)
    dependency.up = False
    breaker.check_health()  # fails: no user call goes out as a probe
    for _ in range(3):
        call(breaker, ok)  # rejected
    breaker.call_with_fallback(ok, stale)  # rejected, the fallback serves
    try:
        breaker.call_with_fallback(ok, no_fallback)  # rejected, the fallback fails too
    except RuntimeError:
        pass
    time.sleep(open_timeout * 1.1)
    dependency.up = True
    breaker.check_health()  # passes: half-open
    call(breaker, ok)  # the probe closes it again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--open-timeout", type=float, default=0.3, help="breakers' open timeout in seconds")
    args = parser.parse_args(argv)
    _setup_telemetry()
    dependency = Dependency()
    breakers = make_breakers(args.open_timeout, dependency)
    print("workload running", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for breaker in breakers:
            cycle(breaker, args.open_timeout, dependency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
