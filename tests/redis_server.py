"""Redis for the tests: the one named by OTEL_CB_TEST_REDIS_URL, or a throwaway
``redis-server`` on a free loopback port, or a skip (a failure when
OTEL_CB_REQUIRE_SERVICES=1).

Tests that stop, restart or flush Redis always get a throwaway server of
their own, never the shared one.
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

__all__ = ["RedisServer", "delete_namespace", "free_port", "missing_service", "namespace", "redis_url",
           "throwaway_redis"]


def missing_service(reason: str) -> None:
    """Skip, or fail when the run requires every service."""
    if os.environ.get("OTEL_CB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (OTEL_CB_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` process on loopback that a test may stop and start again."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="otel-cb-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory, "--protected-mode", "no"],
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
