"""The demo's incident store: PostgreSQL from ``DATABASE_URL``, or a throwaway local cluster.

A throwaway cluster is started from the local PostgreSQL binaries (``initdb``
and ``pg_ctl``) in a temporary directory on a free loopback port, and removed
at exit. initdb refuses to run as root, so as root it runs as the
``postgres`` OS user. When neither is possible the demo runs without a database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalCluster", "find_database"]


@dataclass
class LocalCluster:
    """A throwaway PostgreSQL cluster; ``stop()`` removes it."""

    bindir: Path
    root: Path
    port: int
    run_as: list[str]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _binary(name: str) -> Path | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    path = found[0] if found else shutil.which(name)
    return Path(path) if path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_local_cluster() -> LocalCluster:
    """Start a throwaway cluster; raises ``RuntimeError`` saying why it could not."""
    initdb = _binary("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL binaries (initdb) found")
    root = Path(tempfile.mkdtemp(prefix="otel-cb-demo-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run initdb as") from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    cluster = LocalCluster(initdb.parent, root, _free_port(), run_as)
    data = root / "data"
    steps = [
        [str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "-N"],
        [str(cluster.bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "30", "-o",
         f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
    ]
    for step in steps:
        result = subprocess.run([*run_as, *step], capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            cluster.stop()
            raise RuntimeError(f"{Path(step[0]).name} failed: {(result.stderr or result.stdout).strip()[:200]}")
    return cluster


def find_database(announce: Callable[[str], None]) -> tuple[str | None, LocalCluster | None, str]:
    """The DSN to use, the cluster to stop at exit, and a sentence saying which.

    ``announce`` is told before the few seconds a throwaway cluster takes to start.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, None, "PostgreSQL from DATABASE_URL"
    announce("database: starting a throwaway PostgreSQL cluster from the local binaries (a few seconds; "
             "set DATABASE_URL to use your own)")
    try:
        cluster = start_local_cluster()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return None, None, f"running without the database ({exc}; set DATABASE_URL to use one)"
    return cluster.dsn, cluster, f"a throwaway PostgreSQL cluster is up on 127.0.0.1:{cluster.port}"
