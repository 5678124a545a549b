"""The admin endpoint in-process: its REST API, security, bounds, fork behaviour and the ``otel-cb`` commands."""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import otel_cb
from otel_cb import CircuitOpenError
from otel_cb._cli import main
from otel_cb.admin import AdminServer, start
from otel_cb.admin import _server as server_module
from otel_cb.admin._address import Address, parse_address
from otel_cb.admin._commands import request

from .redis_server import free_port

TOKEN = "s3cret-token"
API = "/v1/circuit-breakers"


@pytest.fixture
def breakers() -> Iterator[list[otel_cb.CircuitBreaker]]:
    made = [otel_cb.registry.get_or_create(name) for name in ("admin-payments", "admin/odd name")]
    yield made
    for breaker in made:
        otel_cb.registry.remove(breaker.name)


@pytest.fixture
def endpoint(breakers: list[otel_cb.CircuitBreaker]) -> Iterator[AdminServer]:
    server = start("127.0.0.1:0", token=TOKEN)
    assert server is not None
    yield server
    server.close()


def call(server: AdminServer, method: str, path: str, token: str | None = TOKEN, **kwargs: object):
    return request(server.address, method, path, token=token, **kwargs)  # type: ignore[arg-type]


def test_lists_breakers_with_state_counters_and_shared_state(endpoint: AdminServer,
                                                              breakers: list[otel_cb.CircuitBreaker]) -> None:
    breaker = breakers[0]
    breaker.call(lambda: None)
    status, answer = call(endpoint, "GET", API)
    assert status == 200
    assert answer["pid"] == os.getpid()
    shown = {item["name"]: item for item in answer["breakers"]}
    item = shown["admin-payments"]
    assert item["state"] == "closed"
    assert item["calls"]["success"] == 1
    assert item["shared_state"] is None and item["health_check"] is None
    assert set(item) >= {"failure_rate", "slow_call_rate", "retry_after", "fallbacks", "time_in_state"}
    status, one = call(endpoint, "GET", f"{API}/admin%2Fodd%20name")
    assert status == 200 and one["name"] == "admin/odd name"


def test_actions_change_the_breaker_and_are_recorded_as_transitions(endpoint: AdminServer,
                                                                     breakers: list[otel_cb.CircuitBreaker],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    breaker = breakers[0]
    with caplog.at_level(logging.WARNING, logger="otel_cb.admin"):
        status, answer = call(endpoint, "POST", f"{API}/admin-payments/force-open")
    assert (status, answer["state"], answer["fleet"]) == (200, "forced_open", False)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    assert call(endpoint, "POST", f"{API}/admin-payments/disable")[1]["state"] == "disabled"
    assert call(endpoint, "POST", f"{API}/admin-payments/reset", body={})[1]["state"] == "closed"
    assert breaker.call(lambda: 7) == 7
    transitions = call(endpoint, "GET", API)[1]["transitions"]
    mine = [(t["from"], t["to"], t["reason"]) for t in transitions if t["name"] == "admin-payments"]
    assert mine == [("closed", "forced_open", "force_open"), ("forced_open", "disabled", "disable"),
                    ("disabled", "closed", "reset")]
    logged = [r.getMessage() for r in caplog.records if "force-open" in r.getMessage()]
    assert logged and "127.0.0.1:" in logged[0] and "done, now forced_open" in logged[0]


def test_errors_are_json_naming_what_was_wrong(endpoint: AdminServer) -> None:
    assert call(endpoint, "GET", f"{API}/nope")[0] == 404
    status, answer = call(endpoint, "POST", f"{API}/nope/reset")
    assert status == 404 and "no circuit breaker by that name" in answer["error"]
    status, answer = call(endpoint, "GET", f"{API}/admin-payments/reset")
    assert status == 405 and "POST" in answer["error"]
    assert call(endpoint, "DELETE", API)[0] == 405
    assert call(endpoint, "POST", f"{API}/admin-payments/explode")[0] == 404
    assert call(endpoint, "GET", f"{API}/%ff%fe")[0] == 400
    status, answer = call(endpoint, "POST", f"{API}/admin-payments/reset", body={"fleet": "yes"})
    assert status == 400 and answer["error"].startswith("fleet:")
    status, answer = call(endpoint, "POST", f"{API}/admin-payments/reset", body={"force": 1})
    assert status == 400 and "'force'" in answer["error"]
    status, answer = call(endpoint, "POST", f"{API}/admin-payments/check-health")
    assert status == 409 and "no health check" in answer["error"]
    status, answer = call(endpoint, "POST", f"{API}/admin-payments/reset", body={"fleet": True})
    assert status == 409 and "no shared state" in answer["error"]


def test_check_health_runs_the_attached_check_and_listing_shows_its_results(
        endpoint: AdminServer, breakers: list[otel_cb.CircuitBreaker], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    breaker = breakers[0]
    healthy = [False]
    breaker.attach_health_check(lambda: healthy[0])
    breaker.force_open()
    breaker.reset()
    for _ in range(breaker.config.failure_threshold):
        breaker.call(lambda: None)
    status, answer = call(endpoint, "POST", f"{API}/admin-payments/check-health")
    assert (status, answer) == (200, {"name": "admin-payments", "passed": False, "state": "closed"})
    healthy[0] = True
    assert call(endpoint, "POST", f"{API}/admin-payments/check-health")[1]["passed"] is True
    item = call(endpoint, "GET", f"{API}/admin-payments")[1]
    assert item["health_check"] == {"attached": True, "last_passed": True, "passed": 1, "failed": 1,
                                    "timeout": breaker.config.health_check_timeout}
    monkeypatch.setenv("OTEL_CB_ADMIN_ADDRESS", str(endpoint.address))
    monkeypatch.setenv("OTEL_CB_ADMIN_TOKEN", TOKEN)
    capsys.readouterr()
    assert main(["check", "admin-payments"]) == 0
    assert "health check passed, now closed" in capsys.readouterr().out
    healthy[0] = False
    assert main(["check", "admin-payments"]) == 1
    assert "health check failed" in capsys.readouterr().out

    def health_column() -> dict[str, str]:
        assert main(["status"]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        start, end = header.index("HEALTH"), header.index("SHARED")
        return {name: row[start:end].strip() for row in rows for name in (b.name for b in breakers)
                if row.startswith(name + " ")}

    assert health_column() == {"admin-payments": "failed", "admin/odd name": "-"}
    breakers[1].attach_health_check(lambda: True)
    assert health_column() == {"admin-payments": "failed", "admin/odd name": "not run"}


def test_a_check_may_run_longer_than_a_request_may(endpoint: AdminServer, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Both sides' usual limits scaled down: the check (0.8 s) outlasts them, not its own timeout (3 s).
    from otel_cb.admin import _commands

    monkeypatch.setattr(server_module, "CONNECTION_DEADLINE", 0.3)
    monkeypatch.setattr(_commands, "REQUEST_TIMEOUT", 0.3)
    slow = otel_cb.registry.get_or_create("admin-slow-check", otel_cb.CircuitBreakerConfig(health_check_timeout=3.0))
    try:
        slow.attach_health_check(lambda: time.sleep(0.8) or True)
        monkeypatch.setenv("OTEL_CB_ADMIN_ADDRESS", str(endpoint.address))
        monkeypatch.setenv("OTEL_CB_ADMIN_TOKEN", TOKEN)
        assert main(["check", "admin-slow-check"]) == 0
        assert "admin-slow-check: health check passed" in capsys.readouterr().out
    finally:
        otel_cb.registry.remove(slow.name)


@pytest.mark.parametrize(("health", "extra"), [
    ({"timeout": 3}, 3.0),
    ({"timeout": 1e308}, 0.0), ({"timeout": float("inf")}, 0.0), ({"timeout": float("nan")}, 0.0),
    ({"timeout": -1}, 0.0), ({"timeout": True}, 0.0), ({"timeout": "30; password=hunter2"}, 0.0),
    ([1, 2], 0.0), (None, 0.0),
], ids=["seconds", "huge", "inf", "nan", "negative", "bool", "text", "list", "none"])
def test_check_waits_only_for_a_timeout_a_breaker_can_have(health: Any, extra: float,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Whatever the endpoint answers, the wait stays bounded and the command never raises.
    from otel_cb.admin import _commands

    waits: list[float | None] = []

    def answer(address: Any, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        if method == "GET":
            return 200, {"name": "p", "health_check": health}
        waits.append(kwargs.get("timeout"))
        return 200, {"name": "p", "passed": True, "state": "closed"}

    monkeypatch.setattr(_commands, "request", answer)
    monkeypatch.setenv("OTEL_CB_ADMIN_ADDRESS", "127.0.0.1:1")
    assert main(["check", "p"]) == 0
    assert waits == [_commands.REQUEST_TIMEOUT + extra]
    assert "hunter2" not in capsys.readouterr().out


def test_check_health_of_a_coroutine_check_stays_off_the_callers_loop(
        endpoint: AdminServer, breakers: list[otel_cb.CircuitBreaker]) -> None:
    import asyncio

    loops: list[asyncio.AbstractEventLoop] = []

    async def check() -> bool:
        loops.append(asyncio.get_running_loop())
        return True

    async def main() -> tuple[asyncio.AbstractEventLoop, tuple[int, dict[str, object]]]:
        breakers[0].attach_health_check(check)
        answer = await asyncio.to_thread(call, endpoint, "POST", f"{API}/admin-payments/check-health")
        return asyncio.get_running_loop(), answer

    caller, (status, answer) = asyncio.run(main())
    assert (status, answer["passed"]) == (200, True)
    assert loops and loops[0] is not caller


def test_answers_never_echo_paths_queries_or_credentials(endpoint: AdminServer) -> None:
    for path in ("/internal/secret?password=hunter2", f"{API}/x/y/z?token=hunter2", "/v1/circuit-breakers/"
                 "user:hunter2@host/reset"):
        for token in (TOKEN, "wrong"):
            _, answer = call(endpoint, "POST", path, token=token)
            assert "hunter2" not in json.dumps(answer) and "secret" not in json.dumps(answer)


def test_every_request_needs_the_token_compared_in_constant_time(endpoint: AdminServer,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_cb.admin"):
        assert call(endpoint, "GET", API, token=None)[0] == 401
        assert call(endpoint, "GET", API, token="s3cret-tokeN")[0] == 401
    assert sum("wrong token" in r.getMessage() for r in caplog.records) == 1  # once a minute per peer
    assert call(endpoint, "POST", f"{API}/admin-payments/force-open", token="x")[0] == 401
    assert otel_cb.registry.get("admin-payments").state.value == "closed"  # type: ignore[union-attr]
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert call(endpoint, "GET", API)[0] == 200
    assert compared == [(TOKEN.encode(), TOKEN.encode())]


def test_without_a_token_only_local_and_read_only(breakers: list[otel_cb.CircuitBreaker], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="otel_cb.admin"):
        assert start("0.0.0.0:0") is None
    assert "not loopback" in caplog.text and "OTEL_CB_ADMIN_TOKEN" in caplog.text
    server = start(f"unix:{tmp_path}/admin-{{pid}}.sock")
    assert server is not None
    try:
        assert server.address.path == f"{tmp_path}/admin-{os.getpid()}.sock"
        assert oct(os.stat(server.address.path).st_mode & 0o777) == "0o600"
        assert call(server, "GET", API, token=None)[0] == 200
        status, answer = call(server, "POST", f"{API}/admin-payments/force-open", token=None)
        assert status == 403 and "OTEL_CB_ADMIN_TOKEN" in answer["error"]
        assert breakers[0].state.value == "closed"
    finally:
        server.close()
    assert not os.path.exists(f"{tmp_path}/admin-{os.getpid()}.sock")


def test_a_taken_port_is_logged_once_and_the_application_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="otel_cb.admin"):
            assert start(f"127.0.0.1:{port}", token=TOKEN) is None
            assert start(f"127.0.0.1:{port}", token=TOKEN) is None
    assert sum("cannot listen" in r.getMessage() for r in caplog.records) == 1


def test_request_size_and_rate_are_bounded(endpoint: AdminServer) -> None:
    with socket.create_connection((endpoint.address.host, endpoint.address.port), timeout=5) as sock:
        sock.sendall(f"POST {API}/admin-payments/reset HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 100000000\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.0 413")
    with socket.create_connection((endpoint.address.host, endpoint.address.port), timeout=5) as sock:
        sock.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
        answer = sock.recv(300)
        assert answer.startswith(b"HTTP/1.0 414") and b"aaaa" not in answer
    with socket.create_connection((endpoint.address.host, endpoint.address.port), timeout=5) as sock:
        sock.sendall(f"GET {API} HTTP/1.0\r\n".encode() + b"X-A: b\r\n" * 200 + b"\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.0 431")
    statuses = [call(endpoint, "GET", API, token=None)[0] for _ in range(int(server_module.BURST) + 10)]
    assert 429 in statuses and statuses[0] == 401


def test_slow_clients_cannot_block_other_operators(endpoint: AdminServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # More idle connections than request threads: the excess is answered 503 at once, and
    # the held threads are cut off at the deadline, after which operators are served again.
    monkeypatch.setattr(server_module, "CONNECTION_DEADLINE", 1.0)
    idle = [socket.create_connection((endpoint.address.host, endpoint.address.port), timeout=5)
            for _ in range(server_module.MAX_CONNECTIONS)]
    try:
        for sock in idle:
            sock.sendall(b"GET ")  # and never finish the request
        deadline = time.monotonic() + 3
        status = 0
        while status != 503 and time.monotonic() < deadline:  # once the server has taken them all
            status, _ = call(endpoint, "GET", API)
            time.sleep(0.05)
        assert status == 503
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, _ = call(endpoint, "GET", API)
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_forked_child_serves_on_its_own_address_with_pid(breakers: list[otel_cb.CircuitBreaker],
                                                         tmp_path: Path) -> None:
    template = f"unix:{tmp_path}/w-{{pid}}.sock"
    parent = start(template, token=TOKEN)
    plain = start("127.0.0.1:0", token=TOKEN)
    assert parent is not None and plain is not None
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                own = Address(path=f"{tmp_path}/w-{os.getpid()}.sock")
                deadline = time.monotonic() + 5
                while not os.path.exists(own.path) and time.monotonic() < deadline:
                    time.sleep(0.02)
                status, answer = request(own, "GET", API, token=TOKEN)
                os.write(write, json.dumps([status, answer["pid"] == os.getpid()]).encode())
            finally:
                os._exit(0)
        os.close(write)
        _, code = os.waitpid(pid, 0)
        assert code == 0
        assert json.loads(os.read(read, 1000)) == [200, True]
        os.close(read)
        # The parent still serves on both after the fork.
        assert call(parent, "GET", API)[0] == 200 and call(plain, "GET", API)[0] == 200
    finally:
        parent.close()
        plain.close()


def test_children_forked_while_operators_call_never_hang(breakers: list[otel_cb.CircuitBreaker],
                                                          tmp_path: Path) -> None:
    template = f"unix:{tmp_path}/busy-{{pid}}.sock"
    parent = start(template, token=TOKEN)
    assert parent is not None
    stop = threading.Event()

    def operator() -> None:
        while not stop.is_set():
            request(parent.address, "GET", API, token=TOKEN)
            request(parent.address, "POST", f"{API}/admin-payments/reset", token=TOKEN)

    threads = [threading.Thread(target=operator, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    children = []
    try:
        time.sleep(0.1)
        for _ in range(20):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    own = Address(path=f"{tmp_path}/busy-{os.getpid()}.sock")
                    deadline = time.monotonic() + 10
                    while not os.path.exists(own.path) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    # The child's own endpoint serves, through the registry's and the breakers' locks.
                    status, answer = request(own, "GET", API, token=TOKEN)
                    code = 0 if status == 200 and answer["pid"] == os.getpid() else 2
                finally:
                    os._exit(code)
            children.append(pid)
        codes: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(codes) < len(children) and time.monotonic() < deadline:
            for pid in children:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        assert len(codes) == len(children), f"{len(children) - len(codes)} of {len(children)} children hung"
        assert set(codes.values()) == {0}
    finally:
        stop.set()
        for pid in children:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for thread in threads:
            thread.join(5)
        parent.close()


def test_address_parsing() -> None:
    assert parse_address("9000") == Address(host="127.0.0.1", port=9000)
    assert parse_address(":9000") == Address(host="127.0.0.1", port=9000)
    assert parse_address("[::1]:9000") == Address(host="::1", port=9000)
    assert parse_address("/run/a-{pid}.sock", pid=42) == Address(path="/run/a-42.sock")
    assert parse_address("unix:relative.sock").path == "relative.sock"
    assert parse_address("localhost:1").is_local and not parse_address("10.0.0.1:1").is_local
    for bad in ("", "host:port", "1:99999"):
        with pytest.raises(ValueError, match="admin address"):
            parse_address(bad)


# -- the commands ---------------------------------------------------------------------------------


@pytest.fixture
def operator_env(endpoint: AdminServer, monkeypatch: pytest.MonkeyPatch) -> AdminServer:
    monkeypatch.setenv("OTEL_CB_ADMIN_ADDRESS", str(endpoint.address))
    monkeypatch.setenv("OTEL_CB_ADMIN_TOKEN", TOKEN)
    return endpoint


def test_commands_status_open_reset_check(operator_env: AdminServer, breakers: list[otel_cb.CircuitBreaker],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["NAME", "STATE"]
    assert any(line.split()[:2] == ["admin-payments", "closed"] for line in out.splitlines())
    assert main(["open", "admin-payments"]) == 0
    assert "forced_open" in capsys.readouterr().out
    assert breakers[0].state.value == "forced_open"
    assert main(["reset", "admin/odd name"]) == 0
    assert main(["reset", "admin-payments"]) == 0
    assert breakers[0].state.value == "closed"
    capsys.readouterr()
    assert main(["check", "admin-payments"]) == 1
    assert "no health check" in capsys.readouterr().err
    assert main(["open", "nope"]) == 1
    assert "404" in capsys.readouterr().err
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == os.getpid()


def test_commands_exit_codes_for_refusal_usage_and_unreachable(operator_env: AdminServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OTEL_CB_ADMIN_TOKEN", "wrong")
    assert main(["open", "admin-payments"]) == 1
    assert "401" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert main(["status", "--token-file", str(token_file)]) == 0
    assert main(["status", "--address", f"127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach" in capsys.readouterr().err
    monkeypatch.delenv("OTEL_CB_ADMIN_ADDRESS")
    assert main(["status"]) == 2
    assert "--address" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["open"])
    assert exit_info.value.code == 2


def test_top_draws_states_rates_and_transitions(operator_env: AdminServer, breakers: list[otel_cb.CircuitBreaker],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    breakers[0].force_open()
    breakers[0].reset()
    assert main(["top", "--iterations", "2", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "admin-payments" in out and "recent transitions" in out and "force_open" in out
    assert "health" in out  # the column header (wrapped at the test terminal's width)


def test_rich_is_imported_by_top_only() -> None:
    code = ("import sys, otel_cb, otel_cb.admin, otel_cb._cli; otel_cb._cli._main_parser(); "
            "print('rich' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_bootstrap_starts_the_endpoint_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from otel_cb.admin import start_from_env, stop

    path = tmp_path / "env-{pid}.sock"
    try:
        server = start_from_env({"OTEL_CB_ADMIN_ADDRESS": f"unix:{path}"})
        assert server is not None and start_from_env({"OTEL_CB_ADMIN_ADDRESS": f"unix:{path}"}) is server
        assert request(server.address, "GET", API)[0] == 200
    finally:
        stop()
    assert start_from_env({}) is None
    assert start_from_env({"OTEL_CB_ADMIN_ADDRESS": "no:such:port"}) is None


def test_endpoint_threads_are_daemons_and_named() -> None:
    server = start("127.0.0.1:0", token=TOKEN)
    assert server is not None
    try:
        thread = next(t for t in threading.enumerate() if t.name == "otel-cb-admin")
        assert thread.daemon
    finally:
        server.close()


def test_a_command_never_prints_credentials_given_in_its_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--address", "http://operator:hunter2@127.0.0.1:1/x?token=hunter2"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "hunter2" not in err


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf", "9" * 400])
def test_top_refuses_an_interval_out_of_range(interval: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--interval", interval, "--address", "127.0.0.1:1"]) == 2
    assert "--interval must be above 0 and at most 3600 seconds" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["user:hunter2@[::1", "user:hunter2@127.0.0.1:9466", "bad host:9466"])
def test_an_admin_address_with_a_malformed_host_is_refused_without_its_secret(value: str) -> None:
    from otel_cb.admin._address import parse_address

    with pytest.raises(ValueError, match="is not allowed") as caught:
        parse_address(value)
    assert "hunter2" not in str(caught.value)
