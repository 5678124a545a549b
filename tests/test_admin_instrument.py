"""An unmodified application under ``otel-cb-instrument --admin-address``, steered with the ``otel-cb`` commands.

The application calls a loopback HTTP server through httpx in a loop and
prints what each call did; the test drives it with ``otel-cb status``,
``open``, ``reset`` and ``check`` as an operator would, with a wrong token and
an unknown breaker too, and asserts on what the application experienced and
on the requests that reached the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .http_server import FaultServer
from .redis_server import RedisCluster, free_port, namespace, redis_cluster, redis_url

__all__ = ["namespace", "redis_cluster", "redis_url"]  # fixtures

BIN = Path(sys.executable).parent
TOKEN = "operator-token-1"

APP = textwrap.dedent("""
    import sys, time
    import httpx
    import otel_cb

    with httpx.Client() as client:
        while True:
            try:
                client.get(sys.argv[1] + "/orders?id=7")
                print("ok", flush=True)
            except otel_cb.CircuitOpenError:
                print("rejected", flush=True)
            except httpx.HTTPError as exc:
                print("error", type(exc).__name__, flush=True)
            time.sleep(0.02)
""")


class App:
    """The application process and what it printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def settles_on(self, outcome: str) -> bool:
        """Whether the next calls end as ``outcome`` (a call already under way may end otherwise)."""
        return self.next_outcomes(8)[-5:] == [outcome] * 5

    def next_outcomes(self, count: int = 5, timeout: float = 10.0) -> list[str]:
        """The next ``count`` outcomes the application prints from now on."""
        start = len(self.lines)
        deadline = time.monotonic() + timeout
        while len(self.lines) < start + count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.lines[start:start + count]


def launch(tmp_path: Path, server: FaultServer, address: str, shared_state: str = "") -> App:
    """Start the application under otel-cb-instrument with the admin endpoint at ``address``."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "otel-cb.yaml").write_text(textwrap.dedent(f"""
        circuit_breakers:
          orders:
            failure_threshold: 5
            match: {{http: ["{server.url}"]}}
            {shared_state}
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
               OTEL_CB_ADMIN_TOKEN=TOKEN, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    process = subprocess.Popen(
        [str(BIN / "otel-cb-instrument"), "--config", str(tmp_path / "otel-cb.yaml"), "--admin-address", address,
         "python", str(tmp_path / "app.py"), server.url],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = App(process)
    if running.next_outcomes(3) != ["ok"] * 3:
        process.kill()
        raise AssertionError(f"the application did not start: {process.communicate(timeout=10)[1][-2000:]}")
    return running


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[App, FaultServer, str]]:
    with FaultServer("healthy") as server:
        address = f"127.0.0.1:{free_port()}"
        running = launch(tmp_path, server, address)
        try:
            yield running, server, address
        finally:
            running.process.kill()
            running.process.wait(10)


def otel_cb(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if token is not None:
        env["OTEL_CB_ADMIN_TOKEN"] = token
    return subprocess.run([str(BIN / "otel-cb"), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_an_operator_steers_the_running_application(app: tuple[App, FaultServer, str]) -> None:
    running, server, address = app

    status = otel_cb("status", "--address", address)
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert rows["orders"][1] == "closed" and int(rows["orders"][4]) > 0

    opened = otel_cb("open", "orders", "--address", address)
    assert opened.returncode == 0, opened.stderr
    assert "forced_open" in opened.stdout
    assert running.settles_on("rejected")  # the application's calls are refused
    before = server.requests
    time.sleep(0.3)
    assert server.requests == before  # and none of them reaches the server
    status = otel_cb("status", "--address", address)
    assert status.returncode == 0 and " forced_open " in status.stdout

    # A wrong token or an unknown breaker is refused (exit 1) and changes nothing.
    wrong = otel_cb("reset", "orders", "--address", address, token="not-the-token")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    assert running.next_outcomes(3) == ["rejected"] * 3  # nothing changed
    unknown = otel_cb("reset", "no-such-breaker", "--address", address)
    assert unknown.returncode == 1 and "404" in unknown.stderr

    reset = otel_cb("reset", "orders", "--address", address)
    assert reset.returncode == 0, reset.stderr
    assert running.settles_on("ok")
    before = server.requests
    time.sleep(0.3)
    assert server.requests > before

    check = otel_cb("check", "orders", "--address", address)
    assert check.returncode == 1 and "no health check" in check.stderr
    assert running.next_outcomes(3) == ["ok"] * 3

    unreachable = otel_cb("status", "--address", f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_a_bad_admin_address_is_a_usage_error_before_the_app_starts(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "otel-cb-instrument"), "--admin-address", "host:port", "python", "-c",
                             "print('started')"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2 and "--admin-address: " in result.stderr and "started" not in result.stdout


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return str(request.getfixturevalue("redis_url"))


def test_open_fleet_acts_on_every_worker(tmp_path: Path, shared_url: str, namespace: str) -> None:
    """Two workers share the breaker on Redis; an operator acts through either one's endpoint."""
    section = f'shared_state: {{backend: redis, url: "{shared_url}", namespace: {namespace}}}'
    with FaultServer("healthy") as server:
        workers = []
        try:
            for index in range(2):
                directory = tmp_path / f"worker-{index}"
                directory.mkdir()
                address = f"unix:{directory}/admin-{{pid}}.sock"
                running = launch(directory, server, address, section)
                workers.append((running, f"unix:{directory}/admin-{running.process.pid}.sock"))
            (_, first_address), (second, second_address) = workers
            opened = otel_cb("open", "orders", "--fleet", "--address", first_address)
            assert opened.returncode == 0, opened.stderr
            assert "every process" in opened.stdout
            for running, _ in workers:  # both workers' calls are refused now, not only the first's
                assert running.settles_on("rejected")
            status = otel_cb("status", "--address", second_address)
            assert " forced_open " in status.stdout and "redis" in status.stdout
            local = otel_cb("reset", "orders", "--address", second_address)  # per process: the fleet's word stands
            assert local.returncode == 0
            assert second.settles_on("rejected")
            reset = otel_cb("reset", "orders", "--fleet", "--address", second_address)
            assert reset.returncode == 0, reset.stderr
            for running, _ in workers:
                assert running.settles_on("ok")
        finally:
            for running, _ in workers:
                running.process.kill()
                running.process.wait(10)
