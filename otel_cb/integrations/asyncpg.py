"""asyncpg behind circuit breakers: a database outage fails fast instead of piling up queries.

Usage
-----

Automatically, with ``otel-cb-instrument python app.py`` (or
``otel_cb.instrument()`` before asyncpg is imported): every connection, pool
and prepared statement is protected, one breaker per database
(``host:port/dbname``), with no code change. By hand, with a pool wrapper::

    from otel_cb import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
    from otel_cb.integrations.asyncpg import ResilientPool

    breaker = CircuitBreaker("database_pool", CircuitBreakerConfig.preset("database"))
    pool = await ResilientPool.create("postgresql://app@db:5432/incidents", breaker=breaker,
                                      min_size=2, max_size=10, command_timeout=5)
    rows = await pool.fetch("SELECT id FROM incidents WHERE open")
    count = await pool.execute(lambda conn: conn.fetchval("SELECT count(*) FROM incidents"))
    await pool.transaction(lambda conn: conn.execute("UPDATE incidents SET open = false"))
    await pool.close()

What is protected
-----------------

- ``asyncpg.connect`` and pool start-up (``await create_pool(...)``): method ``connect``;
- taking a connection from a pool (``pool.acquire()``, also inside
  ``pool.fetch`` and friends): ``acquire``. A pool that cannot hand out a
  connection is a failure of the database, not of any query;
- the query methods of connections, pools and prepared statements:
  ``execute``, ``executemany``, ``fetch``, ``fetchrow``, ``fetchval``,
  ``fetchmany``, ``copy_from_table``, ``copy_from_query``, ``copy_to_table``,
  ``copy_records_to_table``, ``prepare``, ``explain``; and cursors (opening
  one, ``fetch``, ``fetchrow``, ``forward``, and each step of ``async for``).

One user-level call is one breaker call: ``pool.fetch`` takes a connection
and runs a query, and is judged once. While a breaker is open the call
raises ``otel_cb.CircuitOpenError`` before anything happens: no query is
sent and no connection is taken from the pool.

Transactions never get stuck: rolling back, committing at the end of an
``async with conn.transaction()`` block, and the reset a pool runs when a
connection is released always go through, so a breaker that opens in the
middle of a transaction rejects the next statement, the block rolls back and
the connection goes back to the pool.

Which breaker
-------------

Each call is described as ``Call(kind="db", target="host:port/dbname",
method=...)`` and routed by ``otel_cb.plugin.select_breaker``: the config
file's ``match: {db: [...]}`` rules (DSNs or ``host:port/dbname``; use
:func:`db_target` to turn a DSN into a target), else one automatic breaker
per database. Targets never hold a user name, password or query options.
A multi-host DSN is one destination for connecting and acquiring (its hosts
in order, each once, at most three named: ``a:5432,b:5432,c:5432,+2/app``);
queries go to the breaker of the server their connection reached. Arguments
asyncpg refuses before any I/O (a DSN scheme other than ``postgres`` /
``postgresql``, a port that is not a number) are not routed at all.

Call shapes
-----------

A patched method is called at once and returns the awaitable that runs it
under the breaker, so what asyncpg raises at call time (``InterfaceError``
from a prepared statement, cursor or transaction whose connection was
released or closed; ``TypeError`` for bad arguments) still raises at call
time. A call refused while open raises when awaited.

Classification
--------------

Failures of the database count against the breaker; errors the client caused
are ignored (neither failure nor success):

- failures: connection errors (SQLSTATE class 08), ``TooManyConnectionsError``
  and other insufficient resources (53), ``QueryCanceledError`` from a
  statement timeout, ``AdminShutdownError``, ``CrashShutdownError``,
  ``CannotConnectNowError`` (57), system errors (58), internal errors (XX),
  ``asyncio.TimeoutError`` and ``OSError``;
- ignored: every other SQL error (syntax, undefined table, unique or foreign-key
  violation, data errors, serialization failures), asyncpg's
  ``InterfaceError`` (misuse), bad arguments. Cancellation is no verdict.

Health check: a breaker a connect or pool start-up is routed to gets
``SELECT 1`` on a fresh connection made with the same arguments, within its
``health_check_timeout`` (``otel_cb.integrations._asyncpg_health``); a check
of your own wins.

Configuration, per breaker section of the config file::

    circuit_breakers:
      database_pool:
        preset: database
        match: {db: ["postgresql://db:5432/incidents"]}
        failure_sqlstates: ["08", "53", "57", "58", "XX", "40P01"]   # replaces the default list
        ignore_sqlstates: ["57014"]   # statement timeouts do not count

An ``otel_cb_classify`` plugin hook answering for a call decides first; a
breaker's own ``ignore_exceptions`` and ``is_failure`` come next; then the
SQLSTATE rules above. ``otel_cb_fallback`` can serve a value instead of an
error. For a :class:`ResilientPool` pass ``rules=FailureRules(...)``.

OpenTelemetry
-------------

With ``opentelemetry-instrumentation-asyncpg`` active, the breaker runs inside
its database client span, which then carries ``circuit_breaker.name`` and
``circuit_breaker.state`` and the breaker's events (rejections, transitions).
``otel-cb-instrument`` orders the two; by hand, call ``otel_cb.instrument()``
before ``AsyncPGInstrumentor().instrument()``.

Patches are applied when asyncpg is imported; code that did
``from asyncpg import connect`` before ``instrument()`` keeps the unpatched
function (as with OpenTelemetry's instrumentors), but its connections are
still protected. ``otel_cb.uninstrument()`` removes every patch.

API
---

- :class:`ResilientPool`: an asyncpg pool behind one breaker, for hand wiring.
- :class:`FailureRules` and ``DEFAULT_FAILURE_SQLSTATES``: the classification rules.
- :func:`db_target`: a DSN or connection arguments as ``host:port/dbname``.
- :func:`validate_settings`: checks a breaker's database config keys, without importing asyncpg.
- :func:`otel_cb_config_keys`, :func:`otel_cb_patches`: the plugin hooks (the two
  config keys; the patches).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .. import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState, registry
from ..plugin import (
    Call,
    Patch,
    RouteMemo,
    SectionValidator,
    Verdict,
    annotate_span,
    classify,
    classify_exception,
    destination_name,
    hookimpl,
    listening,
    log_once,
    section_settings,
    select_breaker,
    serve_fallback,
)
from ._asyncpg_health import connect_arguments, offer_health_check
from ._asyncpg_policy import (
    DEFAULT_FAILURE_SQLSTATES,
    FailureRules,
    connect_target,
    connection_target,
    db_target,
    validate_settings,
)

if TYPE_CHECKING:
    import asyncpg
    from asyncpg import Connection

__all__ = [
    "DEFAULT_FAILURE_SQLSTATES",
    "FailureRules",
    "ResilientPool",
    "db_target",
    "otel_cb_config_keys",
    "otel_cb_patches",
    "validate_settings",
]

T = TypeVar("T")
Wrapped = Callable[..., Awaitable[Any]]

# True while a protected database call (or a cleanup that must never be
# refused) runs in this task: the patched methods it calls in turn (pool.fetch
# -> acquire -> connection.fetch) pass straight through, so one user-level call
# is judged once.
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_cb.asyncpg.inside", default=False)
_DEFAULT_RULES = FailureRules()
_MAX_MEMO = 4096
_calls: dict[tuple[str, str], Call] = {}
_pool_targets: dict[tuple[object, ...], str | None] = {}
_conn_targets: dict[tuple[object, object], str] = {}


# -- the one protected-call path (patches and ResilientPool) ---------------------


def _parse_rules(breaker: CircuitBreaker, section: Mapping[str, Any]) -> FailureRules:
    return FailureRules.from_settings(breaker.name, section)


def _judge(call: Call, breaker: CircuitBreaker, rules: FailureRules | None, exc: BaseException) -> Verdict | None:
    """The verdict on what a database call raised; the end of a cursor is a success."""
    if isinstance(exc, StopAsyncIteration):
        return "success"
    if rules is None:
        rules = section_settings(breaker, _parse_rules, _DEFAULT_RULES)
    return classify_exception(call, breaker, exc, rules.verdict)


async def _protected(call: Call, breaker: CircuitBreaker, rules: FailureRules | None,
                     awaitable: Awaitable[Any], hooked: bool = True, judged: bool = True) -> Any:
    """Await ``awaitable`` (a database call already made, not yet run) as one call through ``breaker``.

    The caller makes the call first, so what the method itself does at call
    time (asyncpg's checks on a released or closed connection, argument
    binding) happens at call time as without otel-cb; a rejected call's
    coroutine is closed unrun. A memoised route already knows whether an
    ``otel_cb_classify`` hook listens (``hooked``) and whether the breaker
    judges returned values (``judged``); a plain success then skips both.
    """
    try:
        permit = breaker.acquire()
    except CircuitOpenError as exc:
        _discard(awaitable)
        annotate_span(breaker, exc.state)
        served = serve_fallback(call, breaker, exc)
        if served is None:
            raise
        return served
    annotate_span(breaker, permit.state)
    token = _INSIDE.set(True)
    try:
        result = await awaitable
    except BaseException as exc:
        verdict = _judge(call, breaker, rules, exc)
        permit.record(verdict)
        if verdict == "failure":
            served = serve_fallback(call, breaker, exc)
            if served is not None:
                return served
        raise
    finally:
        _INSIDE.reset(token)
    if hooked:
        hook_verdict = classify(call, result, None)
        if hook_verdict is not None:
            permit.record(hook_verdict)
            return result
    if judged:
        permit.record_result(result)
    else:
        permit.record_success()  # what record_result does without is_failure_result, one frame less
    return result


def _discard(awaitable: Awaitable[Any]) -> None:
    """Close a coroutine that will never run, so it warns of nothing."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


async def _inside(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` with the patched methods it calls passing straight through."""
    token = _INSIDE.set(True)
    try:
        return await awaitable
    finally:
        _INSIDE.reset(token)


# -- auto-patching ----------------------------------------------------------------


def _call(target: str, method: str) -> Call:
    key = (target, method)
    call = _calls.get(key)
    if call is None:
        if len(_calls) >= _MAX_MEMO:
            _calls.clear()
        call = _calls[key] = Call(kind="db", target=target, method=method)
    return call


def _connection_target(connection: Any) -> str:
    addr = connection._addr
    database = connection._params.database
    key = (addr, database)
    target = _conn_targets.get(key)
    if target is None:
        if len(_conn_targets) >= _MAX_MEMO:
            _conn_targets.clear()
        target = _conn_targets[key] = connection_target(addr, database)
    return target


def _arguments_target(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    dsn = args[0] if args else kwargs.get("dsn")
    host, port, database = kwargs.get("host"), kwargs.get("port"), kwargs.get("database")
    key = (dsn, repr(host), repr(port), repr(database))
    target = _pool_targets.get(key, _MISSING)
    if target is _MISSING:
        if len(_pool_targets) >= _MAX_MEMO:
            _pool_targets.clear()
        target = _pool_targets[key] = connect_target(dsn, host=host, port=port, database=database)
    return target  # type: ignore[no-any-return]


def _target_of_connect(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    return _arguments_target(args, kwargs)


def _target_of_pool(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    return _arguments_target(instance._connect_args, instance._connect_kwargs)


def _target_of_connection(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return _connection_target(instance)


def _target_of_resource(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return _connection_target(instance._connection)


TargetOf = Callable[[Any, tuple[Any, ...], dict[str, Any]], "str | None"]
_MISSING: Any = object()


Route = tuple[Call, CircuitBreaker]
Wrapper = Callable[[Wrapped, Any, tuple[Any, ...], dict[str, Any]], Any]


def _protecting(method: str, target_of: TargetOf) -> Wrapper:
    """A wrapt wrapper that routes one database call to its breaker.

    The wrapper is a plain function, as the methods it wraps are to their
    callers: it calls the method at once (so asyncpg's call-time
    ``InterfaceError`` on a released connection, or a ``TypeError`` for bad
    arguments, is raised at call time) and returns an awaitable that runs it
    under the breaker.
    """

    def wrapper(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _INSIDE.get():
            return wrapped(*args, **kwargs)
        found = _route_contained(method, target_of, instance, args, kwargs)
        awaitable = wrapped(*args, **kwargs)
        return awaitable if found is None else _protected(found[0], found[1], None, awaitable)

    return wrapper


def _route_contained(method: str, target_of: TargetOf, instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Route | None:
    try:
        return _route(method, target_of, instance, args, kwargs)
    except Exception:
        _routing_failed(method)
        return None


def _routing_failed(method: str) -> None:
    """Never let our bookkeeping break the application's query: log once, leave the call unprotected."""
    log_once(("asyncpg", method), "otel-cb: routing an asyncpg %s failed; call not protected",
             method, exc_info=True)


def _route(method: str, target_of: TargetOf, instance: Any, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> Route | None:
    # None: arguments asyncpg refuses before any I/O; no breaker is created or touched.
    target = target_of(instance, args, kwargs)
    if target is None:
        return None
    call = _call(target, method)
    breaker = select_breaker(call)
    if breaker is None:
        return None
    if method == "connect":
        offer_health_check(breaker, *connect_arguments(instance, args, kwargs))
    return call, breaker


# A connection method's memoised route: (call, breaker, hooked, judged). ``hooked``: an
# ``otel_cb_classify`` hook reads calls (true for the whole routing epoch the memo lives in);
# ``judged``: the breaker has an ``is_failure_result`` (fixed with its config). Without either, a
# returned value is a plain success, reported without asking anything. A plain tuple: the
# interpreter unpacks an exact tuple on its fast path.
_QueryRoute = tuple[Call, CircuitBreaker, bool, bool]


def _query_route(method: str, target_of: TargetOf, instance: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> _QueryRoute | None:
    found = _route(method, target_of, instance, args, kwargs)
    if found is None:
        return None
    call, breaker = found
    return call, breaker, listening("otel_cb_classify"), breaker.config.is_failure_result is not None


def _protecting_queries(method: str, *, of_resource: bool) -> Wrapper:
    """:func:`_protecting` for the methods of a connection (or, ``of_resource``, of a
    prepared statement or cursor, by its connection), with the route memoised.

    A repeat query costs one dict lookup by the connection's ``(address,
    database)`` instead of building its target, its ``Call`` and its route.
    The memo (the kit's ``RouteMemo``) is dropped whole when routing's memo is (``routing_epoch``: a
    new config, ``uninstrument()``, the pytest plugin's reset of automatic
    breakers), so it never answers other than ``select_breaker`` would; a
    connection whose address changes looks up another key; at most
    ``_MAX_MEMO`` keys are kept per method.
    """
    target_of = _target_of_resource if of_resource else _target_of_connection
    routes: RouteMemo[tuple[object, object], _QueryRoute | None] = RouteMemo(_MAX_MEMO)
    miss = RouteMemo.MISS

    def wrapper(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _INSIDE.get():
            return wrapped(*args, **kwargs)
        try:
            connection = instance._connection if of_resource else instance
            key = (connection._addr, connection._params.database)
            found = routes.get(key)
            if found is miss:
                found = routes.remember(key, lambda: _query_route(method, target_of, instance, args, kwargs))
        except Exception:
            _routing_failed(method)
            found = None
        awaitable = wrapped(*args, **kwargs)
        if found is None:
            return awaitable
        call, breaker, hooked, judged = found
        return _protected(call, breaker, None, awaitable, hooked, judged)

    return wrapper


def _never_refused(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Cleanup (rollback, commit at block exit, reset on release) runs unguarded, never rejected."""
    return _inside(wrapped(*args, **kwargs))


_QUERY_METHODS = ("execute", "executemany", "fetch", "fetchval", "fetchrow", "fetchmany",
                  "copy_from_table", "copy_from_query", "copy_to_table", "copy_records_to_table")
_PREPARED_METHODS = ("fetch", "fetchval", "fetchrow", "fetchmany", "executemany", "explain")


def _on_connection(method: str) -> Wrapper:
    """The wrapper of a ``Connection`` method."""
    return _protecting_queries(method, of_resource=False)


def _on_resource(method: str) -> Wrapper:
    """The wrapper of a prepared statement's or cursor's method (routed by its connection)."""
    return _protecting_queries(method, of_resource=True)


def _patches() -> list[Patch]:
    connect = _protecting("connect", _target_of_connect)  # one wrapper: both names are one function
    patches = [
        Patch("asyncpg", "connect", connect, "asyncpg"),
        Patch("asyncpg.connection", "connect", connect, "asyncpg"),
        Patch("asyncpg.pool", "Pool._initialize", _protecting("connect", _target_of_pool), "asyncpg"),
        Patch("asyncpg.pool", "Pool._acquire", _protecting("acquire", _target_of_pool), "asyncpg"),
        Patch("asyncpg.connection", "Connection.prepare", _on_connection("prepare"), "asyncpg"),
        Patch("asyncpg.cursor", "Cursor._init", _on_resource("cursor"), "asyncpg"),
        Patch("asyncpg.cursor", "CursorIterator.__anext__", _on_resource("cursor_fetch"), "asyncpg"),
    ]
    for name in _QUERY_METHODS:
        patches.append(Patch("asyncpg.pool", f"Pool.{name}", _protecting(name, _target_of_pool), "asyncpg"))
        patches.append(Patch("asyncpg.connection", f"Connection.{name}", _on_connection(name), "asyncpg"))
    for name in _PREPARED_METHODS:
        patches.append(Patch("asyncpg.prepared_stmt", f"PreparedStatement.{name}", _on_resource(name), "asyncpg"))
    for name in ("fetch", "fetchrow", "forward"):
        patches.append(Patch("asyncpg.cursor", f"Cursor.{name}", _on_resource(f"cursor_{name}"), "asyncpg"))
    for module, target in (("asyncpg.transaction", "Transaction.__aexit__"),
                           ("asyncpg.transaction", "Transaction.commit"),
                           ("asyncpg.transaction", "Transaction.rollback"),
                           ("asyncpg.connection", "Connection.reset")):
        patches.append(Patch(module, target, _never_refused, "asyncpg"))
    return patches


_PATCHES: list[Patch] = []


@hookimpl
def otel_cb_config_keys() -> Mapping[str, SectionValidator]:
    """The breaker-section keys of the asyncpg integration, checked without importing asyncpg."""
    return {"failure_sqlstates": validate_settings, "ignore_sqlstates": validate_settings}


@hookimpl
def otel_cb_patches() -> list[Patch]:
    """Patch asyncpg's connect, pools, connections, prepared statements and cursors."""
    # Built once, so the same patches compare equal on every instrument() and
    # the engine never applies one twice.
    if not _PATCHES:
        _PATCHES.extend(_patches())
    return list(_PATCHES)


# -- hand wiring --------------------------------------------------------------------


class ResilientPool:
    """An asyncpg pool whose every operation goes through one circuit breaker.

    Build it with :meth:`create`. Each operation takes a connection from the
    pool, runs, and gives the connection back; it is one breaker call. While
    the breaker is open, operations raise ``CircuitOpenError`` without taking
    a connection or sending anything.

    Args:
        pool: An initialised ``asyncpg.Pool``.
        breaker: The breaker guarding it.
        target: The database as ``host:port/dbname`` (what hooks see).
        rules: Which errors are failures; the breaker's config section (or the
            defaults) when None.
        acquire_timeout: Seconds to wait for a free connection; running out
            is a failure (None: wait as long as it takes).
    """

    def __init__(self, pool: asyncpg.Pool, *, breaker: CircuitBreaker, target: str,
                 rules: FailureRules | None = None, acquire_timeout: float | None = None) -> None:
        self._pool = pool
        self._breaker = breaker
        self._rules = rules
        self._acquire_timeout = acquire_timeout
        self.target = target

    @classmethod
    async def create(cls, dsn: str | None = None, *, breaker: CircuitBreaker | None = None,
                     rules: FailureRules | None = None, acquire_timeout: float | None = None,
                     **pool_kwargs: Any) -> ResilientPool:
        """Create and start an asyncpg pool guarded by ``breaker``.

        Args:
            dsn: As for ``asyncpg.create_pool``.
            breaker: The breaker to use. When None: the one ``otel-cb``'s
                routing picks for this database if instrumented, else the
                registry's breaker ``db://host:port/dbname`` (``database`` preset).
            rules: See the class.
            acquire_timeout: See the class.
            **pool_kwargs: Passed to ``asyncpg.create_pool`` (``min_size``,
                ``max_size``, ``command_timeout``, ``server_settings``...).

        Raises:
            CircuitOpenError: the breaker is open; no connection was attempted.
            Exception: whatever starting the pool raised (the breaker counts it).
        """
        import asyncpg

        target = db_target(dsn, host=pool_kwargs.get("host"), port=pool_kwargs.get("port"),
                           database=pool_kwargs.get("database"))
        if breaker is None:
            call = _call(target, "connect")
            breaker = select_breaker(call) or registry.get(destination_name(call)) or \
                registry.get_or_create(destination_name(call), CircuitBreakerConfig.preset("database"))
        pool = asyncpg.create_pool(dsn, **pool_kwargs)
        offer_health_check(breaker, *connect_arguments(pool, (), {}))

        async def start() -> asyncpg.Pool:
            return await pool

        await _protected(_call(target, "connect"), breaker, rules, start())
        return cls(pool, breaker=breaker, target=target, rules=rules, acquire_timeout=acquire_timeout)

    # -- CircuitProtected ---------------------------------------------------

    @property
    def circuit_breaker(self) -> CircuitBreaker:
        """The breaker guarding this pool."""
        return self._breaker

    @property
    def circuit_state(self) -> CircuitState:
        """That breaker's current state."""
        return self._breaker.state

    @property
    def is_healthy(self) -> bool:
        """True while the breaker is closed."""
        return self._breaker.is_closed

    @property
    def pool(self) -> asyncpg.Pool:
        """The underlying asyncpg pool (unprotected)."""
        return self._pool

    # -- operations -----------------------------------------------------------

    async def run(self, method: str, operation: Callable[[Connection[Any]], Awaitable[T]]) -> T:
        """Run ``operation(connection)`` as one breaker call named ``method`` (what hooks see)."""

        async def work() -> T:
            async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
                # A pool hands out a proxy that behaves as (and isinstance-checks as) a Connection.
                return await operation(cast("Connection[Any]", connection))

        result: T = await _protected(_call(self.target, method), self._breaker, self._rules, work())
        return result

    async def execute(self, operation: str | Callable[[Connection[Any]], Awaitable[T]], *args: Any,
                      timeout: float | None = None) -> Any:
        """Run SQL (``pool.execute("DELETE ...", *args)``) or a function of a connection.

        ``await pool.execute(lambda conn: conn.fetch("SELECT ..."))`` runs the
        function with a connection from the pool and returns what it returns.
        """
        if isinstance(operation, str):
            query = operation
            return await self.run("execute", lambda conn: conn.execute(query, *args, timeout=timeout))
        return await self.run("execute", operation)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        """``Connection.fetch`` through the breaker."""
        return await self.run("fetch", lambda conn: conn.fetch(query, *args, timeout=timeout))

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        """``Connection.fetchrow`` through the breaker."""
        return await self.run("fetchrow", lambda conn: conn.fetchrow(query, *args, timeout=timeout))

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        """``Connection.fetchval`` through the breaker."""
        return await self.run("fetchval", lambda conn: conn.fetchval(query, *args, column=column, timeout=timeout))

    async def transaction(self, operation: Callable[[Connection[Any]], Awaitable[T]], *,
                          isolation: str | None = None, readonly: bool = False, deferrable: bool = False) -> T:
        """Run ``operation(connection)`` inside a transaction, as one breaker call.

        The transaction commits when ``operation`` returns and rolls back when
        it raises; either way the connection goes back to the pool.
        """

        async def in_transaction(connection: Connection[Any]) -> T:
            async with connection.transaction(isolation=isolation, readonly=readonly,  # type: ignore[arg-type]
                                              deferrable=deferrable):
                return await operation(connection)

        return await self.run("transaction", in_transaction)

    async def close(self) -> None:
        """Close the pool gracefully (never refused by the breaker)."""
        token = _INSIDE.set(True)
        try:
            await self._pool.close()
        finally:
            _INSIDE.reset(token)
