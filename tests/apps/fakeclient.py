"""A stand-in client library (not otel-cb code): what the test plugin patches."""

from __future__ import annotations

__all__ = ["Client"]


class Client:
    """Calls a "remote host"; ``fail=True`` simulates the host being down."""

    def call(self, host: str, fail: bool = False) -> str:
        if fail:
            raise ConnectionError(f"{host} is down")
        return f"ok from {host}"
