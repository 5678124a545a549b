"""The patched query methods memoise their route per connection address, and the memo is never stale.

Each patched ``Connection`` / ``PreparedStatement`` / ``Cursor`` method keeps
the ``Call`` and breaker of each ``(address, database)`` it has seen, valid
while routing's own memo is (``otel_cb.plugin.routing_epoch``). These tests
drive the wrappers with stand-in connections (no I/O) and once through a
real PostgreSQL connection: a new config, ``uninstrument()``, the pytest
plugin's reset of automatic breakers and an address that changes must each
route afresh, and the memo stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

import otel_cb
from otel_cb import CircuitBreaker
from otel_cb._plugins import reset_breakers
from otel_cb.integrations import asyncpg as integration
from otel_cb.integrations.asyncpg import db_target
from otel_cb.plugin import routing_epoch, select_breaker
from tests.postgres import postgres_cluster, postgres_dsn

__all__ = ["postgres_cluster", "postgres_dsn"]  # fixtures, re-exported for pytest


def _others() -> list[str]:
    return [ep.name for ep in entry_points(group="otel_cb") if ep.name != "asyncpg"]


def _config(routes: dict[str, list[str]], *, auto: bool = False) -> dict[str, Any]:
    return {"circuit_breakers": {name: {"match": {"db": targets}} for name, targets in routes.items()},
            "auto_breakers": {"enabled": auto}}


@contextlib.contextmanager
def breakers(*names: str) -> Iterator[dict[str, CircuitBreaker]]:
    made = {name: otel_cb.registry.add(CircuitBreaker(name)) for name in names}
    try:
        yield made
    finally:
        otel_cb.uninstrument()
        for name in names:
            otel_cb.registry.remove(name)


def connection(host: str = "10.0.0.1", port: int = 5432, database: str = "app") -> SimpleNamespace:
    """What the wrappers read of an asyncpg connection: its address and database."""
    return SimpleNamespace(_addr=(host, port), _params=SimpleNamespace(database=database))


async def _query(*args: Any) -> int:
    return 1


def run(wrapper: Any, instance: Any) -> int:
    """One query through ``wrapper`` (as wrapt calls it) on ``instance``."""
    async def main() -> int:
        return int(await wrapper(_query, instance, ("SELECT 1",), {}))
    return asyncio.run(main())


def successes(breaker: CircuitBreaker) -> int:
    return breaker.snapshot().calls["success"]


def memo_of(wrapper: Any) -> dict[object, object]:
    """The wrapper's current memo (its ``RouteMemo``'s ``(epoch, memo)``)."""
    cells = dict(zip(wrapper.__code__.co_freevars, wrapper.__closure__ or (), strict=True))
    current = cells["routes"].cell_contents._current
    assert isinstance(current[1], dict)
    return current[1]


def test_a_new_config_routes_the_same_connection_afresh() -> None:
    wrapper = integration._on_connection("fetchval")
    conn = connection()
    with breakers("memo_a", "memo_b") as made:
        otel_cb.instrument(_config({"memo_a": ["10.0.0.1:5432/app"]}), disabled=_others())
        run(wrapper, conn)
        run(wrapper, conn)
        assert successes(made["memo_a"]) == 2
        otel_cb.instrument(_config({"memo_b": ["10.0.0.1:5432/app"]}), disabled=_others())
        run(wrapper, conn)
        assert (successes(made["memo_a"]), successes(made["memo_b"])) == (2, 1)
        otel_cb.instrument(_config({"memo_b": ["elsewhere:5432/app"]}), disabled=_others())
        run(wrapper, conn)  # no longer routed: passes through untouched
        assert (successes(made["memo_a"]), successes(made["memo_b"])) == (2, 1)


def test_an_unrouted_destination_is_routed_once_the_config_names_it() -> None:
    wrapper = integration._on_connection("fetch")
    conn = connection(database="late")
    with breakers("memo_late") as made:
        otel_cb.instrument(_config({"memo_late": ["nowhere:1/x"]}), disabled=_others())
        run(wrapper, conn)
        otel_cb.instrument(_config({"memo_late": ["10.0.0.1:5432/late"]}), disabled=_others())
        run(wrapper, conn)
        assert successes(made["memo_late"]) == 1


def test_after_uninstrument_nothing_is_routed() -> None:
    wrapper = integration._on_connection("execute")
    conn = connection()
    with breakers("memo_off") as made:
        otel_cb.instrument(_config({"memo_off": ["10.0.0.1:5432/app"]}), disabled=_others())
        run(wrapper, conn)
        otel_cb.uninstrument()
        assert run(wrapper, conn) == 1
        assert successes(made["memo_off"]) == 1


def test_a_connection_whose_address_changes_goes_to_the_new_addresss_breaker() -> None:
    wrapper = integration._on_connection("fetchrow")
    conn = connection()
    with breakers("memo_first", "memo_second") as made:
        otel_cb.instrument(_config({"memo_first": ["10.0.0.1:5432/app"], "memo_second": ["10.0.0.2:5432/app"]}),
                           disabled=_others())
        run(wrapper, conn)
        conn._addr = ("10.0.0.2", 5432)
        run(wrapper, conn)
        conn._params.database = "other"  # no rule for it, no automatic breakers: untouched
        run(wrapper, conn)
        assert (successes(made["memo_first"]), successes(made["memo_second"])) == (1, 1)


def test_statements_and_cursors_route_by_their_connection() -> None:
    wrapper = integration._on_resource("fetch")
    statement = SimpleNamespace(_connection=connection(host="10.0.0.3"))
    with breakers("memo_resource") as made:
        otel_cb.instrument(_config({"memo_resource": ["10.0.0.3:5432/app"]}), disabled=_others())
        run(wrapper, statement)
        statement._connection = connection(host="10.0.0.4")
        run(wrapper, statement)
        assert successes(made["memo_resource"]) == 1


def test_an_automatic_breaker_the_reset_drops_is_not_served_again() -> None:
    """The pytest plugin's reset removes automatic breakers from the registry; the memo follows."""
    wrapper = integration._on_connection("fetchval")
    conn = connection(host="10.0.0.9", database="auto")
    name = "db://10.0.0.9:5432/auto"
    otel_cb.instrument(_config({}, auto=True), disabled=_others())
    try:
        run(wrapper, conn)
        first = otel_cb.registry.get(name)
        assert first is not None and successes(first) == 1
        epoch = routing_epoch()
        reset_breakers()
        assert routing_epoch() is not epoch
        assert otel_cb.registry.get(name) is None
        run(wrapper, conn)
        second = otel_cb.registry.get(name)
        assert second is not None and second is not first
        assert (successes(first), successes(second)) == (1, 1)
    finally:
        otel_cb.uninstrument()
        otel_cb.registry.remove(name)


def test_the_memo_answers_as_select_breaker_does() -> None:
    wrapper = integration._on_connection("fetch")
    conn = connection(host="10.0.0.5")
    with breakers("memo_same"):
        otel_cb.instrument(_config({"memo_same": ["10.0.0.5:5432/app"]}), disabled=_others())
        run(wrapper, conn)
        call, breaker, _, _ = memo_of(wrapper)[(("10.0.0.5", 5432), "app")]  # type: ignore[misc]
        assert call.target == "10.0.0.5:5432/app" and call.method == "fetch"
        assert breaker is select_breaker(call) is otel_cb.registry.get("memo_same")


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(integration, "_MAX_MEMO", 3)
    wrapper = integration._on_connection("fetchval")
    hosts = [f"10.0.1.{i}" for i in range(10)]
    with breakers("memo_bounded") as made:
        otel_cb.instrument(_config({"memo_bounded": [f"{host}:5432/app" for host in hosts[::2]]}),
                           disabled=_others())
        for _ in range(2):
            for host in hosts:
                run(wrapper, connection(host=host))
                assert len(memo_of(wrapper)) <= 3
        assert successes(made["memo_bounded"]) == 10  # the five routed hosts, twice each


def test_a_real_connection_follows_a_config_reload(postgres_dsn: str) -> None:
    target = db_target(postgres_dsn)

    async def main(conn: asyncpg.Connection[Any], config: dict[str, Any]) -> None:
        otel_cb.instrument(config, disabled=_others())
        assert await conn.fetchval("SELECT 1") == 1
        statement = await conn.prepare("SELECT 2")
        assert await statement.fetchval() == 2

    async def scenario() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await main(conn, _config({"memo_pg_a": [target]}))
            await main(conn, _config({"memo_pg_b": [target]}))
        finally:
            otel_cb.uninstrument()
            await conn.close()

    with breakers("memo_pg_a", "memo_pg_b") as made:
        asyncio.run(scenario())
        # fetchval, prepare, the statement's fetchval: three calls each
        assert (successes(made["memo_pg_a"]), successes(made["memo_pg_b"])) == (3, 3)


class _Classifier:
    """An ``otel_cb_classify`` hook that counts every returned value as a failure."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @otel_cb.hookimpl
    def otel_cb_classify(self, call: Any, result: object, exception: BaseException | None) -> str | None:
        self.calls.append(call.method)
        return "failure" if exception is None else None


def test_a_classify_hook_is_asked_about_memoised_routes_and_forgotten_with_them() -> None:
    """Whether a hook reads calls is memoised with the route; a new config without it stops asking."""
    wrapper = integration._on_connection("fetchrow")
    conn = connection(host="10.0.0.7")
    hook = _Classifier()
    with breakers("memo_hooked") as made:
        routes = _config({"memo_hooked": ["10.0.0.7:5432/app"]})
        otel_cb.instrument(routes, disabled=_others(), plugins=[hook])
        run(wrapper, conn)
        run(wrapper, conn)
        assert hook.calls == ["fetchrow", "fetchrow"]
        assert made["memo_hooked"].snapshot().calls["failure"] == 2
        otel_cb.instrument(routes, disabled=_others())
        run(wrapper, conn)
        assert len(hook.calls) == 2
        assert made["memo_hooked"].snapshot().calls["success"] == 1


def test_is_failure_result_judges_what_a_memoised_route_returns() -> None:
    wrapper = integration._on_connection("fetchval")
    conn = connection(host="10.0.0.8")
    judged = CircuitBreaker("memo_judged", otel_cb.CircuitBreakerConfig(is_failure_result=lambda value: value == 1))
    otel_cb.registry.add(judged)
    try:
        otel_cb.instrument(_config({"memo_judged": ["10.0.0.8:5432/app"]}), disabled=_others())
        assert run(wrapper, conn) == 1
        assert run(wrapper, conn) == 1
        calls = judged.snapshot().calls
        assert (calls["failure"], calls["success"]) == (2, 0)
    finally:
        otel_cb.uninstrument()
        otel_cb.registry.remove("memo_judged")
