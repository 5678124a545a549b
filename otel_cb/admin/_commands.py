"""The operator commands of ``otel-cb``: ``status``, ``open``, ``disable``, ``reset``, ``check`` and ``top``.

They are clients of a process's admin endpoint (``otel_cb.admin``), found at
``--address`` or ``OTEL_CB_ADMIN_ADDRESS``; the token comes from
``OTEL_CB_ADMIN_TOKEN`` or ``--token-file`` (never from the command line,
where other users could read it). Exit codes: 0 done (``check``: the health
check passed), 1 refused by the process (unknown breaker, wrong token, no
health check...) or a failed health check, 2 usage error or endpoint
unreachable. ``top`` draws with ``rich``, imported only there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .._config import MAX_SECONDS
from .._redact import mask
from ._address import Address, parse_address
from ._server import ADDRESS_ENV, PREFIX, TOKEN_ENV

__all__ = ["COMMANDS", "add_commands", "format_table", "request", "run"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
COMMANDS = ("status", "open", "disable", "reset", "check", "top")
_ACTIONS = {"open": "force-open", "disable": "disable", "reset": "reset", "check": "check-health"}


class _Unreachable(Exception):
    """The endpoint could not be asked."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


REQUEST_TIMEOUT = 5.0  # seconds to connect, and to wait for an answer (a check: plus its own timeout)


def request(address: Address, method: str, path: str, *, token: str | None = None,
            body: Mapping[str, Any] | None = None, timeout: float | None = None) -> tuple[int, dict[str, Any]]:
    """One request to an admin endpoint: (status, JSON answer).

    Raises:
        _Unreachable: no connection, or an answer that is not the endpoint's.
    """
    connection: http.client.HTTPConnection
    timeout = REQUEST_TIMEOUT if timeout is None else timeout
    if address.path:
        connection = _UnixConnection(address.path, timeout)
    else:
        connection = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read(1 << 24)
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        raise _Unreachable(f"cannot reach the admin endpoint at {address}: {_reason(exc)}") from None
    finally:
        connection.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        raise _Unreachable(f"{address} answered something that is not otel-cb's admin endpoint") from None
    if not isinstance(answer, dict):
        raise _Unreachable(f"{address} answered something that is not otel-cb's admin endpoint")
    return status, answer


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def add_commands(commands: Any) -> None:
    """Add the operator commands to ``otel-cb``'s subcommands (an argparse subparsers object)."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--address", metavar="ADDRESS", help=f"the process's admin endpoint ({ADDRESS_ENV}): "
                            "PORT, HOST:PORT or unix:/PATH")
        parser.add_argument("--token-file", metavar="PATH", help=f"read the bearer token from PATH (else "
                            f"{TOKEN_ENV})")

    status = commands.add_parser("status", help="print a table of a running process's breakers")
    status.set_defaults(run=run)
    common(status)
    status.add_argument("--json", action="store_true", help="print the endpoint's JSON instead")
    helps = {"open": "force a breaker open (rejects every call until reset)",
             "disable": "disable a breaker (admits every call, records nothing, until reset)",
             "reset": "close a breaker and forget its window"}
    for name, text in helps.items():
        parser = commands.add_parser(name, help=text)
        parser.set_defaults(run=run)
        common(parser)
        parser.add_argument("name", metavar="NAME", help="the breaker's name")
        parser.add_argument("--fleet", action="store_true", help="act on every process sharing the breaker's "
                            "state on Redis, not only this one")
    check = commands.add_parser("check", help="run a breaker's health check now")
    check.set_defaults(run=run)
    common(check)
    check.add_argument("name", metavar="NAME", help="the breaker's name")
    top = commands.add_parser("top", help="a live view of a running process's breakers")
    top.set_defaults(run=run)
    common(top)
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="refresh period, at most 3600 (default 1)")
    top.add_argument("--iterations", type=int, default=0, metavar="N", help="stop after N refreshes "
                     "(default: until Ctrl-C)")


def run(options: argparse.Namespace) -> int:
    """Run the operator command ``options.command``; returns the exit code."""
    try:
        address = parse_address(options.address or os.environ.get(ADDRESS_ENV, ""))
    except ValueError as exc:
        if not (options.address or os.environ.get(ADDRESS_ENV)):
            return _fail(f"no admin endpoint given; use --address or set {ADDRESS_ENV}")
        return _fail(str(exc))
    token = os.environ.get(TOKEN_ENV) or None
    if options.token_file:
        try:
            with open(options.token_file, encoding="utf-8") as file:
                token = file.read(4096).strip() or None
        except OSError as exc:
            return _fail(f"--token-file: cannot read it ({exc.strerror or exc})")
    try:
        if options.command == "status":
            return _status(address, token, options.json)
        if options.command == "top":
            if not 0 < options.interval <= 3600 or options.iterations < 0:
                return _fail("--interval must be above 0 and at most 3600 seconds, --iterations 0 or more")
            return _top(address, token, options.interval, options.iterations)
        return _act(address, token, options.command, options.name, getattr(options, "fleet", False))
    except _Unreachable as exc:
        return _fail(str(exc))


def _fail(message: str) -> int:
    # An address given on the command line may carry credentials: every message is masked here.
    print(mask(f"otel-cb: {message}"), file=sys.stderr)
    return EXIT_USAGE


def _refused(status: int, answer: Mapping[str, Any]) -> int:
    print(mask(f"otel-cb: refused ({status}): {answer.get('error', 'no reason given')}"), file=sys.stderr)
    return EXIT_REFUSED


def _status(address: Address, token: str | None, as_json: bool) -> int:
    status, answer = request(address, "GET", PREFIX, token=token)
    if status != 200:
        return _refused(status, answer)
    if as_json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    print(format_table(answer.get("breakers", [])))
    return EXIT_OK


def _act(address: Address, token: str | None, command: str, name: str, fleet: bool) -> int:
    action = _ACTIONS[command]
    body = {"fleet": True} if fleet else None
    path = f"{PREFIX}/{quote(name, safe='')}"
    timeout = REQUEST_TIMEOUT
    if command == "check":  # wait as long as the check may run, which the breaker's listing says
        status, answer = request(address, "GET", path, token=token)
        if status != 200:
            return _refused(status, answer)
        timeout += _check_timeout(answer)
    status, answer = request(address, "POST", f"{path}/{action}", token=token, body=body, timeout=timeout)
    if status != 200:
        return _refused(status, answer)
    if command == "check":
        passed = bool(answer.get("passed"))
        print(f"{answer.get('name', name)}: health check {'passed' if passed else 'failed'}, "
              f"now {answer.get('state', '?')}")
        return EXIT_OK if passed else EXIT_REFUSED
    where = "every process" if answer.get("fleet") else "this process"
    print(f"{answer.get('name', name)}: {answer.get('state', '?')} ({action}, {where})")
    return EXIT_OK


def _check_timeout(listing: Mapping[str, Any]) -> float:
    """The ``health_check.timeout`` a breaker's listing gives, if it is one a breaker can have (a
    number of seconds in (0, MAX_SECONDS]); else 0. Whatever answered, the wait stays bounded."""
    health = listing.get("health_check")
    limit = health.get("timeout") if isinstance(health, Mapping) else None
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit <= MAX_SECONDS:
        return float(limit)
    return 0.0


_COLUMNS = ("NAME", "STATE", "FAIL%", "SLOW%", "CALLS", "FAILED", "REJECTED", "RETRY_IN", "HEALTH", "SHARED")


def _health_text(health: Mapping[str, Any] | None) -> str:
    """The last health check's result: ``-`` without a check, ``not run`` before the first."""
    if not health:
        return "-"
    last = health.get("last_passed")
    return "not run" if last is None else "passed" if last else "failed"


def _row(breaker: Mapping[str, Any]) -> list[str]:
    calls = breaker.get("calls", {})
    retry = breaker.get("retry_after")
    shared = breaker.get("shared_state")
    if shared:
        shared_text = str(shared.get("backend", "yes")) + (" (local)" if shared.get("running_locally") else "")
    else:
        shared_text = "-"
    return [str(breaker.get("name", "?")), str(breaker.get("state", "?")),
            f"{100 * float(breaker.get('failure_rate', 0)):.1f}",
            f"{100 * float(breaker.get('slow_call_rate', 0)):.1f}",
            str(sum(int(calls.get(k, 0)) for k in ("success", "failure", "ignored"))), str(calls.get("failure", 0)),
            str(calls.get("rejected", 0)), "-" if retry is None else f"{float(retry):.1f}s",
            _health_text(breaker.get("health_check")), shared_text]


def format_table(breakers: list[Mapping[str, Any]]) -> str:
    """The plain-text table ``otel-cb status`` prints."""
    rows = [list(_COLUMNS), *(_row(breaker) for breaker in breakers)]
    if len(rows) == 1:
        return "no circuit breakers in this process"
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


_STYLES = {"closed": "green", "open": "bold red", "half_open": "yellow", "forced_open": "bold magenta",
           "disabled": "dim"}


def _top(address: Address, token: str | None, interval: float, iterations: int) -> int:
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    previous: dict[str, tuple[float, int, int]] = {}

    def render(answer: Mapping[str, Any]) -> Group:
        now = time.monotonic()
        table = Table(title=f"otel-cb top: {address} (pid {answer.get('pid', '?')})", expand=False)
        for column in ("breaker", "state", "fail %", "slow %", "calls/s", "rejected/s", "retry in", "health", "shared"):
            table.add_column(column, justify="left" if column in ("breaker", "state", "health", "shared") else "right")
        for breaker in answer.get("breakers", []):
            name = str(breaker.get("name", "?"))
            calls = breaker.get("calls", {})
            total = sum(int(calls.get(k, 0)) for k in ("success", "failure", "ignored"))
            rejected = int(calls.get("rejected", 0))
            then, old_total, old_rejected = previous.get(name, (now, total, rejected))
            elapsed = now - then
            previous[name] = (now, total, rejected)
            row = _row(breaker)
            state = row[1]
            table.add_row(name, f"[{_STYLES.get(state, '')}]{state}[/]", row[2], row[3],
                          f"{(total - old_total) / elapsed:.1f}" if elapsed > 0 else "-",
                          f"{(rejected - old_rejected) / elapsed:.1f}" if elapsed > 0 else "-", *row[7:])
        recent = Table(title="recent transitions", expand=False, show_edge=False)
        for column in ("time", "breaker", "from", "to", "reason"):
            recent.add_column(column)
        for item in list(answer.get("transitions", []))[-8:]:
            recent.add_row(time.strftime("%H:%M:%S", time.localtime(float(item.get("time", 0)))),
                           str(item.get("name", "")), str(item.get("from", "")), str(item.get("to", "")),
                           str(item.get("reason", "")))
        return Group(table, recent)

    status, answer = request(address, "GET", PREFIX, token=token)
    if status != 200:
        return _refused(status, answer)
    count = 1
    try:
        with Live(render(answer), refresh_per_second=max(1.0, 1 / interval), transient=False) as live:
            while not iterations or count < iterations:
                time.sleep(interval)
                status, answer = request(address, "GET", PREFIX, token=token)
                if status != 200:
                    return _refused(status, answer)
                live.update(render(answer))
                count += 1
    except KeyboardInterrupt:
        pass
    return EXIT_OK
