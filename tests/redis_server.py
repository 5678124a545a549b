"""Redis for the tests: the one named by OTEL_CB_TEST_REDIS_URL, or a throwaway
``redis-server`` on a free loopback port, or a skip (a failure when
OTEL_CB_REQUIRE_SERVICES=1).

Tests that stop, restart or flush Redis always get a throwaway server of
their own, never the shared one.

``redis_cluster`` is a real Redis Cluster of this session's own: six
``redis-server`` processes on loopback (three primaries, one replica each),
joined by ``redis-cli --cluster create``; a test may stop a primary
(``RedisCluster.fail_over``) to see a replica take over.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

__all__ = ["RedisCluster", "RedisServer", "delete_namespace", "free_port", "missing_service", "namespace",
           "redis_cluster", "redis_url", "throwaway_redis"]


def missing_service(reason: str) -> None:
    """Skip, or fail when the run requires every service."""
    if os.environ.get("OTEL_CB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (OTEL_CB_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, below the ephemeral range."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer:
    """A ``redis-server`` process on loopback that a test may stop and start again."""

    def __init__(self, binary: str, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.port = _free_cluster_port() if "--cluster-enabled" in extra else free_port()
        self.directory = tempfile.mkdtemp(prefix="otel-cb-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.extra = extra

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory, "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def command(self, *args: str) -> str:
        """One command through a short-lived raw connection (no client library needed)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join(parts))
            data = sock.recv(65536)
        return data.decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _start_throwaway() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_service("no Redis: OTEL_CB_TEST_REDIS_URL is unset and redis-server is not installed")
        raise AssertionError("unreachable")
    server = RedisServer(binary)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL for tests that need a working Redis and leave it running."""
    url = os.environ.get("OTEL_CB_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = _start_throwaway()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def throwaway_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop, restart or flush."""
    server = _start_throwaway()
    try:
        yield server
    finally:
        server.close()


class RedisCluster:
    """Six ``redis-server`` processes in cluster mode on loopback: three primaries, three replicas."""

    def __init__(self, binary: str, cli: str) -> None:
        self.cli = cli
        # A short node timeout, so a replica takes over from a stopped primary within about a second.
        # Validity factor 0: a replica always stands for election, however long its primary was gone.
        options = ("--cluster-enabled", "yes", "--cluster-node-timeout", "500", "--cluster-config-file", "nodes.conf",
                   "--cluster-replica-validity-factor", "0")
        self.nodes = [RedisServer(binary, options) for _ in range(6)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_until_ok()

    def wait_until_ok(self, timeout: float = 20.0) -> None:
        """Until every running node reports the cluster ok with every slot served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [node.command("CLUSTER", "INFO") for node in self.nodes if node.process is not None]
            if all("cluster_state:ok" in info and "cluster_slots_ok:16384" in info for info in infos):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis cluster did not become ok")

    def primaries(self) -> list[RedisServer]:
        return [node for node in self.nodes
                if node.process is not None and "role:master" in node.command("INFO", "replication")]

    def primary_of(self, key: str) -> RedisServer:
        slot = int(self.nodes[0].command("CLUSTER", "KEYSLOT", key).strip(":\r\n"))
        for node in self.primaries():
            for line in node.command("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in line and "master" in line:
                    for spec in fields[8:]:
                        low, _, high = spec.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return node
        raise RuntimeError(f"no primary serves slot {slot}")

    def fail_over(self, node: RedisServer) -> None:
        """Stop a primary; a replica takes over (wait_until_ok() says when)."""
        node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this session's own; tests use namespaces of their own on it."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        missing_service("no Redis Cluster: redis-server and redis-cli are not installed")
        raise AssertionError("unreachable")
    cluster = RedisCluster(binary, cli)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


def delete_namespace(url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"otel_cb:{{{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
