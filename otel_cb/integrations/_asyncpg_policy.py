"""Database policy of the asyncpg integration, free of asyncpg itself.

Owns the credential-free destination of a database call (``host:port/dbname``
from a DSN, connection arguments or an open connection), the default rules
that tell a failure of the database from an error the client caused, and the
validation of the per-breaker config keys (``failure_sqlstates``,
``ignore_sqlstates``). Errors are told apart by their SQLSTATE, so nothing
here imports asyncpg; :mod:`otel_cb.integrations.asyncpg` applies it.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from ..plugin import parse_items

__all__ = [
    "DEFAULT_FAILURE_SQLSTATES",
    "FailureRules",
    "connect_target",
    "connection_target",
    "db_target",
    "validate_settings",
]

DbVerdict = Literal["failure", "ignored"]

DEFAULT_FAILURE_SQLSTATES = ("08", "53", "57", "58", "XX")
"""SQLSTATE classes that are failures of the database by default.

08 connection exceptions, 53 insufficient resources (``too_many_connections``),
57 operator intervention (``query_canceled`` by a statement timeout,
``admin_shutdown``, ``crash_shutdown``, ``cannot_connect_now``), 58 system
errors (I/O) and XX internal errors. Every other SQLSTATE (syntax errors,
undefined tables, constraint violations, data errors, serialization
failures...) was caused by the client's request and is ignored.
"""

_SQLSTATE = re.compile(r"^[0-9A-Z]{2}([0-9A-Z]{3})?$")
_SQLSTATES_ALLOWED = "a list of SQLSTATE codes ('57014') or two-character classes ('08')"
_DEFAULT_PORT = 5432
_MAX_HOSTS = 3  # hosts a multi-host target names; the rest are counted ("+2")
_DSN_SCHEMES = ("postgres", "postgresql")


def _parse_sqlstates(where: str, value: object) -> frozenset[str]:
    return parse_items(where, value, _sqlstate, _SQLSTATES_ALLOWED)


def _sqlstate(item: object) -> tuple[str] | None:
    return (item.upper(),) if isinstance(item, str) and _SQLSTATE.match(item.upper()) else None


@dataclass(frozen=True, slots=True)
class FailureRules:
    """Which exceptions of a database call are failures of the database.

    An exception with a SQLSTATE (every ``asyncpg.PostgresError``) is a
    failure when its code or its class is in ``failure_sqlstates`` and
    neither is in ``ignore_sqlstates``; else it is ignored. Without a
    SQLSTATE, ``OSError`` (refused, reset, unreachable) and
    ``asyncio.TimeoutError`` are failures; everything else (asyncpg's
    ``InterfaceError`` for misuse, ``ValueError`` for bad arguments) is
    ignored: it says nothing about the database.

    Attributes:
        failure_sqlstates: Codes (``"57014"``) or classes (``"08"``).
        ignore_sqlstates: Codes or classes that win over ``failure_sqlstates``,
            e.g. ``["57014"]`` not to count statement timeouts.
    """

    failure_sqlstates: frozenset[str] = frozenset(DEFAULT_FAILURE_SQLSTATES)
    ignore_sqlstates: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, name: str, section: Mapping[str, Any]) -> FailureRules:
        """Read ``failure_sqlstates`` / ``ignore_sqlstates`` of breaker ``name``'s config section.

        Raises:
            ValueError: naming the field, the bad value and what is allowed.
        """
        where = f"circuit_breakers.{name}"
        failure = frozenset(DEFAULT_FAILURE_SQLSTATES)
        ignore: frozenset[str] = frozenset()
        if section.get("failure_sqlstates") is not None:
            failure = _parse_sqlstates(f"{where}.failure_sqlstates", section["failure_sqlstates"])
        if section.get("ignore_sqlstates") is not None:
            ignore = _parse_sqlstates(f"{where}.ignore_sqlstates", section["ignore_sqlstates"])
        if failure == _DEFAULT_RULES.failure_sqlstates and not ignore:
            return _DEFAULT_RULES
        return cls(failure, ignore)

    def verdict(self, exc: BaseException) -> DbVerdict:
        """``"failure"`` when ``exc`` says the database is in trouble, else ``"ignored"``."""
        sqlstate = getattr(exc, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            klass = sqlstate[:2]
            if sqlstate in self.ignore_sqlstates or klass in self.ignore_sqlstates:
                return "ignored"
            if sqlstate in self.failure_sqlstates or klass in self.failure_sqlstates:
                return "failure"
            return "ignored"
        # asyncio.TimeoutError is TimeoutError (an OSError) from Python 3.11 on.
        if isinstance(exc, (OSError, TimeoutError)) or type(exc).__name__ == "TimeoutError":
            return "failure"
        return "ignored"


_DEFAULT_RULES = FailureRules()


def validate_settings(name: str, section: Mapping[str, Any]) -> None:
    """Check the database keys of breaker ``name``'s config section; the config loader calls this.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    FailureRules.from_settings(name, section)


# -- destinations ---------------------------------------------------------------


def _host_port(host: str, port: object) -> str:
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


def _split_hosts(netloc_hosts: str) -> list[tuple[str, str | None]]:
    """``"h1:5432,[::1]:5433,h3"`` -> [(host, port or None), ...]."""
    result = []
    for part in netloc_hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            end = part.find("]")
            host, rest = part[1:end], part[end + 1:]
            result.append((host, rest[1:] if rest.startswith(":") else None))
        elif part.count(":") == 1:
            host, _, port = part.partition(":")
            result.append((host, port or None))
        else:
            result.append((part, None))
    return result


def db_target(dsn: str | None = None, *, host: object = None, port: object = None,
              database: str | None = None) -> str:
    """The credential-free destination ``host:port/dbname`` of a database.

    Accepts what ``asyncpg.connect`` accepts: a ``postgres://`` /
    ``postgresql://`` DSN and ``host``/``port``/``database`` arguments, which
    win over the DSN as in asyncpg; missing parts come from ``PGHOST``,
    ``PGPORT``, ``PGDATABASE`` (the database defaults to the user name, as in
    libpq), else ``localhost:5432``. A string that is already a target
    (``"db:5432/incidents"``) is normalised and returned. User, password and
    query options never appear in the result. Several hosts (a multi-host
    DSN, tried in order by asyncpg) are one destination: kept in order,
    comma-separated, each once, the first three named and the others counted
    (``"a:5432,b:5432,c:5432,+2/app"``), so the name stays short and the same
    for the same DSN.

    Examples:
        >>> db_target("postgresql://svc:secret@DB.internal:6432/incidents?sslmode=require")
        'db.internal:6432/incidents'
        >>> db_target(host="10.0.0.5", database="app")
        '10.0.0.5:5432/app'
    """
    user: str | None = None
    hosts: list[tuple[str, str | None]] = []
    dsn_port: str | None = None
    dsn_database: str | None = None
    if dsn:
        if "://" not in dsn:
            dsn = "postgresql://" + dsn
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, netloc = netloc.rpartition("@")
            user = unquote(userinfo.partition(":")[0]) or None
        hosts = [(unquote(h), p) for h, p in _split_hosts(netloc)]
        dsn_database = unquote(parts.path.lstrip("/")) or None
        query = parse_qs(parts.query)
        if "host" in query:
            hosts = [(h, None) for h in query["host"][-1].split(",") if h]
        if "port" in query:
            dsn_port = query["port"][-1]
        for key in ("database", "dbname"):
            if key in query:
                dsn_database = query[key][-1]
        if "user" in query:
            user = query["user"][-1]
    if host is not None:
        names = [str(h) for h in host] if isinstance(host, (list, tuple)) else str(host).split(",")
        hosts = [(h, None) for h in names if h]
    if not hosts:
        hosts = [(h, None) for h in os.environ.get("PGHOST", "localhost").split(",") if h]
    ports: list[str]
    if port is not None:
        ports = [str(p) for p in port] if isinstance(port, (list, tuple)) else str(port).split(",")
    elif dsn_port is not None:
        ports = dsn_port.split(",")
    else:
        ports = os.environ.get("PGPORT", str(_DEFAULT_PORT)).split(",")
    endpoints: list[str] = []
    for index, (name, own_port) in enumerate(hosts):
        chosen = own_port if own_port and port is None else ports[min(index, len(ports) - 1)]
        endpoint = _host_port(name, chosen or _DEFAULT_PORT)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if len(endpoints) > _MAX_HOSTS:
        endpoints[_MAX_HOSTS:] = [f"+{len(endpoints) - _MAX_HOSTS}"]
    dbname = database or dsn_database or os.environ.get("PGDATABASE") or user or os.environ.get("PGUSER")
    if not dbname:
        try:
            dbname = getpass.getuser()
        except Exception:
            dbname = "postgres"
    return f"{','.join(endpoints)}/{dbname}"


def connect_target(dsn: object = None, *, host: object = None, port: object = None,
                   database: object = None) -> str | None:
    """The target of ``asyncpg.connect`` / ``create_pool`` arguments; None when asyncpg refuses them itself.

    asyncpg rejects a DSN whose scheme is not ``postgres``/``postgresql`` and
    a port that is not a number before any I/O (``ClientConfigurationError``,
    ``ValueError``): such a call names no destination, so no breaker is
    created or touched for it.
    """
    if dsn is not None:
        if not isinstance(dsn, str):
            return None
        if dsn:
            parts = urlsplit(dsn)
            if parts.scheme not in _DSN_SCHEMES:
                return None
            netloc_ports = [p for _, p in _split_hosts(parts.netloc.rpartition("@")[2]) if p]
            query_ports = parse_qs(parts.query).get("port", [""])[-1].split(",")
            if not all(p.strip().isdigit() for p in netloc_ports + [q for q in query_ports if q]):
                return None
    if port is not None:
        ports = list(port) if isinstance(port, (list, tuple)) else str(port).split(",")
        if not all(isinstance(p, int) or str(p).strip().isdigit() for p in ports):
            return None
    if database is not None and not isinstance(database, str):
        return None
    return db_target(dsn or None, host=host, port=port, database=database)


def connection_target(addr: object, database: object) -> str:
    """The destination of an open connection from its address and database name.

    Args:
        addr: asyncpg's ``Connection._addr``: ``(host, port)`` or a Unix socket path.
        database: The connection's database name.
    """
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{_host_port(str(addr[0]), addr[1])}/{database}"
    if isinstance(addr, str):
        # "/run/postgresql/.s.PGSQL.5432" -> "/run/postgresql:5432"
        directory, _, socket_name = addr.rpartition("/")
        port = socket_name.rpartition(".")[2] if socket_name.startswith(".s.PGSQL.") else ""
        return f"{directory}:{port or _DEFAULT_PORT}/{database}"
    return f"unknown/{database}"
