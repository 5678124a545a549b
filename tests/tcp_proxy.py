"""A TCP proxy on loopback that a test can cut or blackhole, with counters.

It runs its own event loop in a daemon thread, so it keeps forwarding while
the test's own loop is blocked or busy. Modes:

- ``forward``: relay bytes both ways (the default);
- ``blackhole``: accept connections and swallow what clients send, answering
  nothing, like a network path that silently drops packets.

``cut()`` closes every open connection. The counters say what reached the
server: ``accepted`` (client connections), ``connections`` (upstream
connections made), ``bytes_from_client`` (everything clients sent, swallowed
or not) and ``bytes_to_server`` (what was forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["Mode", "TcpProxy"]

Mode = Literal["forward", "blackhole"]
T = TypeVar("T")


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``.

    Use as a context manager, or call ``start()`` and ``close()``.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "forward"
        self.port = 0
        self.accepted = 0
        self.connections = 0
        self.bytes_from_client = 0
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])

    def set_mode(self, mode: Mode) -> None:
        """Switch mode for new traffic; ``blackhole`` also freezes open connections."""
        self.mode = mode

    def cut(self) -> None:
        """Close every open connection, both sides."""
        async def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
        self._run(close_all())

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
        with contextlib.suppress(Exception):
            self._run(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if self.mode == "blackhole":
            await self._swallow(reader)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self.connections += 1
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, to_server=True),
            self._pipe(up_reader, writer, to_server=False),
        )

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                self.bytes_from_client += len(data)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if to_server:
                    self.bytes_from_client += len(data)
                if self.mode == "blackhole":
                    continue  # dropped on the floor: nothing reaches the other side
                if to_server:
                    self.bytes_to_server += len(data)
                else:
                    self.bytes_to_client += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
