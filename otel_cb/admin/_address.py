"""Admin endpoint addresses: parsing ``OTEL_CB_ADMIN_ADDRESS`` / ``--address`` for server and client alike.

An address is ``PORT``, ``HOST:PORT``, ``[IPV6]:PORT``, or a unix socket path
(``unix:/run/app.sock``, or any value holding a ``/``). ``{pid}`` anywhere is
replaced by the process id, so forked workers get addresses of their own.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from .._redact import shown

__all__ = ["Address", "parse_address"]


@dataclass(frozen=True, slots=True)
class Address:
    """Where the endpoint listens: a unix socket ``path``, or ``host`` and ``port``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_local(self) -> bool:
        """True for a unix socket or a loopback host: reachable from this machine only."""
        if self.path:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# A host name, an IPv4 address or an IPv6 address (brackets already stripped, zone allowed).
_HOST = re.compile(r"^[A-Za-z0-9.:%_-]{1,253}$")


def parse_address(value: str, *, pid: int | None = None) -> Address:
    """Parse an address, ``{pid}`` replaced by ``pid`` (default: this process's).

    Raises:
        ValueError: naming the value and what is allowed.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > 300:
        raise ValueError(f"admin address: {shown(value)} is not allowed; use PORT, HOST:PORT or a unix "
                         "socket path (unix:/path)")
    text = value.strip().replace("{pid}", str(os.getpid() if pid is None else pid))
    if text.startswith("unix:") or "/" in text:
        path = text[5:] if text.startswith("unix:") else text
        if not path or "\0" in path:
            raise ValueError(f"admin address: {shown(value)} is not allowed; a unix socket needs a path")
        return Address(path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not _HOST.match(host):
        raise ValueError(f"admin address: {shown(value)} is not allowed; the host must be a name or an IP address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"admin address: {shown(value)} is not allowed; the port must be 0 to 65535")
    return Address(host=host, port=int(port_text))
