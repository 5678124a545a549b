"""PostgreSQL for the test suite: the shared server from the environment, or a throwaway cluster.

``postgres_dsn`` (session) is ``OTEL_CB_TEST_POSTGRES_DSN`` when set, else the
DSN of a throwaway cluster. ``postgres_cluster`` (session) is always a
throwaway cluster started from the local binaries (``initdb`` / ``pg_ctl`` on
PATH or in ``/usr/lib/postgresql/*/bin``) in a temporary directory on a free
port, because tests that stop and restart a server must never touch a shared
one. Without binaries the tests skip with the reason, unless
``OTEL_CB_REQUIRE_SERVICES=1``, which turns the skip into a failure.

initdb and pg_ctl refuse to run as root, so as root they run as the
``postgres`` OS user in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["Cluster", "postgres_cluster", "postgres_dsn", "skip_or_fail"]

APP_ROLE = "app"
"""A non-superuser role of the throwaway cluster, with a connection limit (superusers have none)."""

APP_ROLE_CONNECTION_LIMIT = 3


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when the run requires real services."""
    if os.environ.get("OTEL_CB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"OTEL_CB_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _find_binary(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


class Cluster:
    """A throwaway PostgreSQL cluster that a test may stop and start again."""

    def __init__(self, bindir: str, datadir: Path, port: int, run_as: list[str]) -> None:
        self.bindir = bindir
        self.datadir = datadir
        self.port = port
        self._run_as = run_as
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.app_dsn = f"postgresql://{APP_ROLE}@127.0.0.1:{port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = 30) -> None:
        command = [*self._run_as, f"{self.bindir}/pg_ctl", "-D", str(self.datadir), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._pg_ctl("-l", str(self.datadir / "server.log"), "-w", "-t", "20", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def psql(self, sql: str) -> str:
        """Run one statement as the superuser; returns unaligned output."""
        command = [*self._run_as, f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", "postgres", "-d", "postgres", "-At", "-c", sql]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        return result.stdout.strip()


def _start_cluster(root: Path) -> Cluster:
    initdb = _find_binary("initdb")
    if initdb is None:
        skip_or_fail("no PostgreSQL binaries (initdb) on this machine for a throwaway cluster")
    assert initdb is not None
    bindir = str(Path(initdb).parent)
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            skip_or_fail("running as root and no 'postgres' OS user to run initdb as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    datadir = root / "data"
    subprocess.run(
        [*run_as, initdb, "-D", str(datadir), "-A", "trust", "-U", "postgres", "-N", "--no-instructions"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    port = free_port()
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{root}'",
        "max_connections": "30",
        "fsync": "off",
        "full_page_writes": "off",
        "shared_buffers": "16MB",
    }
    config = "".join(f"{key} = {value}\n" for key, value in settings.items())
    conf_path = datadir / "postgresql.conf"
    conf_path.write_text(conf_path.read_text() + config)
    cluster = Cluster(bindir, datadir, port, run_as)
    cluster.start()
    cluster.psql(f"CREATE ROLE {APP_ROLE} LOGIN CONNECTION LIMIT {APP_ROLE_CONNECTION_LIMIT}")
    cluster.psql(f"GRANT ALL ON SCHEMA public TO {APP_ROLE}")
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A throwaway cluster for this session (stopped and removed at the end)."""
    root = Path(tempfile.mkdtemp(prefix="otel-cb-pg-"))
    cluster: Cluster | None = None
    try:
        cluster = _start_cluster(root)
        yield cluster
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dsn(request: pytest.FixtureRequest) -> str:
    """``OTEL_CB_TEST_POSTGRES_DSN`` when set, else the throwaway cluster's DSN."""
    dsn = os.environ.get("OTEL_CB_TEST_POSTGRES_DSN")
    if dsn:
        return dsn
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.dsn
