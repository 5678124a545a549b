"""The integration kit (otel_cb.plugin): hook answers, guarded classification, fallbacks, settings, config keys."""

from __future__ import annotations

import ast
import asyncio
import logging
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import otel_cb
from otel_cb import CircuitBreaker, CircuitBreakerConfig, ConfigError, _plugins
from otel_cb._settings import load
from otel_cb.plugin import (
    Call,
    Refusal,
    classify,
    classify_exception,
    hookimpl,
    section_settings,
    serve_fallback,
)

from .conftest import FakeClock
from .test_plugins import no_entry_points  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
HTTP = Call("http", "http://api:80", method="GET", url="http://api/")


class Answer:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    @hookimpl
    def otel_cb_classify(self, call: Call, result: object, exception: BaseException | None) -> object:
        return self.answer


class Wrong(Answer):
    pass


@pytest.mark.usefixtures("no_entry_points")
@pytest.mark.parametrize("wrong", [["failure"], {"failure": 1}, "ignore", "none", 1, b"failure"])
def test_a_classify_answer_outside_the_vocabulary_is_no_answer(wrong: object,
                                                               caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_plugins, "_logged", set())  # each case logs its own first warning
    caplog.set_level(logging.DEBUG, logger="otel_cb")
    # Registered last, so asked first: its wrong answer must let the next plugin decide.
    otel_cb.instrument({}, plugins=[Answer("ignored"), Wrong(wrong)])
    for _ in range(3):
        assert classify(HTTP, None, ConnectionError()) == "ignored"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "plugin 'Wrong': otel_cb_classify returned" in warnings[0], warnings
    assert "counted as no answer" in warnings[0]


@pytest.mark.usefixtures("no_entry_points")
def test_a_wrong_classify_answer_never_disables_protection(clock: FakeClock) -> None:
    breaker = CircuitBreaker("guarded", CircuitBreakerConfig(failure_threshold=2), clock=clock)
    otel_cb.instrument({}, plugins=[Wrong(["failure"])])
    for _ in range(2):
        permit = breaker.acquire()
        permit.record(classify_exception(HTTP, breaker, ConnectionError("refused")))
    assert breaker.is_open


def _raising(exc: BaseException) -> bool:
    raise RuntimeError("predicate bug")


def test_a_raising_is_failure_predicate_is_contained(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    breaker = CircuitBreaker("pred", CircuitBreakerConfig(is_failure=_raising), clock=clock)
    assert classify_exception(HTTP, breaker, OSError("down")) == "failure"  # record_exceptions decides
    assert classify_exception(HTTP, breaker, OSError("down"), lambda exc: "ignored") == "ignored"  # the rule first
    assert classify_exception(HTTP, breaker, asyncio.CancelledError()) is None
    assert "is_failure of circuit breaker 'pred' raised RuntimeError" in caplog.text


def test_asyncpg_callers_get_their_own_exception_when_is_failure_raises(clock: FakeClock) -> None:
    from otel_cb.integrations import asyncpg as integration

    breaker = CircuitBreaker("db_pred", CircuitBreakerConfig(is_failure=_raising, failure_threshold=1), clock=clock)
    call = Call("db", "db:5432/app", method="fetch")

    async def query() -> None:
        raise ConnectionResetError("the database went away")

    with pytest.raises(ConnectionResetError, match="went away"):
        asyncio.run(integration._protected(call, breaker, None, query()))
    assert breaker.is_open  # OSError: a failure by the SQLSTATE-free rule


class Serving:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    @hookimpl
    def otel_cb_fallback(self, call: Call, error: BaseException) -> object:
        return self.answer


@pytest.mark.parametrize(("answer", "served", "counted"), [
    ("cached", "cached", "success"),
    (Refusal("not scanned"), "not scanned", "refused"),
    (Refusal(None), None, None),
    (42, None, None),  # not a str: the client could not return it
])
def test_serve_fallback_counts_what_it_serves(clock: FakeClock, answer: object,
                                              served: object, counted: str | None) -> None:
    breaker = CircuitBreaker("fb", clock=clock)
    otel_cb.instrument({}, plugins=[Serving(answer)])
    assert serve_fallback(HTTP, breaker, ConnectionError(), str) == served
    expected = {"success": 0, "failure": 0, "refused": 0}
    if counted is not None:
        expected[counted] = 1
    assert breaker.snapshot().fallbacks == expected


def test_refusal_is_a_frozen_value() -> None:
    refusal = Refusal("x")
    assert refusal == Refusal("x") and refusal.value == "x"
    with pytest.raises(AttributeError):
        refusal.value = "y"  # type: ignore[misc]


@pytest.mark.usefixtures("no_entry_points")
def test_section_settings_parse_once_per_section(clock: FakeClock,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    parsed: list[Mapping[str, Any]] = []

    def parse(breaker: CircuitBreaker, section: Mapping[str, Any]) -> int:
        parsed.append(section)
        if section.get("preset") == "aggressive":
            raise ValueError("preset: not for this integration")
        return len(section)

    breaker = CircuitBreaker("plain", clock=clock)
    assert section_settings(breaker, parse, -1) == -1  # not instrumented: the default, unparsed
    otel_cb.instrument({"circuit_breakers": {"defaults": {"failure_threshold": 3}, "bad": {"preset": "aggressive"}}})
    otel_cb.registry.add(breaker)
    try:
        assert [section_settings(breaker, parse, -1) for _ in range(3)] == [1, 1, 1]
        assert len(parsed) == 1
        bad = otel_cb.registry.get("bad")
        assert bad is not None
        assert [section_settings(bad, parse, -1) for _ in range(2)] == [-1, -1]
        assert len(parsed) == 2 and caplog.text.count("preset: not for this integration") == 1
    finally:
        otel_cb.registry.remove("plain")


class FakeEntryPoint:
    dist = None

    def __init__(self, name: str, plugin: object) -> None:
        self.name = name
        self.value = f"acme.{name}"
        self.plugin = plugin

    def load(self) -> object:
        return self.plugin


def _quota_settings(name: str, section: Mapping[str, Any]) -> None:
    value = section.get("quota")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"quota: {value!r} is not allowed; use a whole number >= 1")


def _buggy_settings(name: str, section: Mapping[str, Any]) -> None:
    raise TypeError("validator bug")


def test_a_plugin_declares_and_validates_its_own_section_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = types.ModuleType("acme_quota")
    plugin.otel_cb_config_keys = hookimpl(lambda: {"quota": _quota_settings, "quirk": _buggy_settings})  # type: ignore[attr-defined]
    monkeypatch.setattr(_plugins, "_entry_points", lambda: [FakeEntryPoint("quota", plugin)])
    settings = load({"circuit_breakers": {"api": {"quota": 5, "failure_threshold": 2}}})
    assert settings.breakers[0].raw["quota"] == 5
    with pytest.raises(ConfigError) as info:
        load({"circuit_breakers": {"api": {"quota": 0, "quirk": 1, "failure_statuses": [503]}}})
    problems = [str(p) for p in info.value.problems]
    assert "<mapping>: circuit_breakers.api.quota: 0 is not allowed; use a whole number >= 1" in problems
    assert any("circuit_breakers.api.quirk: 1 could not be checked (TypeError in plugin 'quota')" in p
               for p in problems), problems
    assert any("circuit_breakers.api.failure_statuses: unknown setting" in p for p in problems), problems


@pytest.mark.parametrize(("section", "expected"), [
    ({"fallback": {"type": {"x": 1}}}, "circuit_breakers.a.fallback: {'type': {'x': 1}} is not allowed"),
    ({"fallback": {"type": "static", "status": 99}}, "circuit_breakers.a.fallback.status: 99 is not allowed"),
    ({"failure_statuses": ["6xx"]}, "circuit_breakers.a.failure_statuses: '6xx' is not allowed"),
    ({"failure_codes": ["NOPE"]}, "circuit_breakers.a.failure_codes: 'NOPE' is not allowed"),
    ({"failure_sqlstates": ["8"]}, "circuit_breakers.a.failure_sqlstates: '8' is not allowed"),
])
def test_malformed_integration_sections_fail_the_check(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"circuit_breakers": {"a": section}})
    assert any(str(p).startswith(f"<mapping>: {expected}") for p in info.value.problems), info.value.problems


def test_integration_keys_are_checked_where_the_client_libraries_are_missing(tmp_path: Path) -> None:
    config = tmp_path / "otel-cb.yaml"
    config.write_text("circuit_breakers:\n  a: {failure_codes: [NOPE], failure_sqlstates: ['8'], "
                      "failure_statuses: [600]}\n")
    script = (
        "import sys\n"
        "for name in ('grpc', 'httpx', 'asyncpg'):\n"
        "    sys.modules[name] = None  # not installed\n"
        "import logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from otel_cb._settings import ConfigError, load\n"
        "try:\n"
        f"    load({str(config)!r})\n"
        "except ConfigError as error:\n"
        "    print('\\n'.join(map(str, error.problems)))\n"
        "import otel_cb\n"
        "otel_cb.instrument({})  # start-up without the client libraries: silent below INFO\n"
        "otel_cb.uninstrument()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "failure_codes: 'NOPE' is not allowed" in result.stdout, result
    assert "failure_sqlstates: '8' is not allowed" in result.stdout, result
    assert "failure_statuses: 600 is not allowed" in result.stdout, result
    assert "WARNING" not in result.stderr and "failed to import" not in result.stderr, result.stderr


def _imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, module, name) of every import in ``path``, relative ones resolved against its package."""
    package = ".".join(path.relative_to(ROOT if path.is_relative_to(ROOT / "otel_cb") else ROOT / "plugins")
                       .with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                yield node.lineno, module, alias.name


def _modules() -> list[Path]:
    return sorted([*(ROOT / "otel_cb" / "integrations").glob("*.py"),
                   *(ROOT / "plugins" / "otel_cb_services").glob("*.py")])


def test_integrations_and_plugins_import_no_private_name_of_another_package() -> None:
    offences = []
    for path in _modules():
        package = "otel_cb.integrations" if "integrations" in path.parts else "otel_cb_services"
        for line, module, name in _imports(path):
            if module == package or module.startswith(package + "."):
                continue  # its own package's private modules are its own business
            parts = [*module.split("."), *([name] if name else [])]
            if any(part.startswith("_") and part != "__future__" for part in parts):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {module} {name}".strip())
    assert _modules() and not offences, offences


def test_the_import_check_sees_private_names() -> None:
    # The check above must be able to fail: a private import is found and resolved.
    found = list(_imports(ROOT / "otel_cb" / "integrations" / "httpx.py"))
    assert ("otel_cb.plugin", "Patch") in {(m, n) for _, m, n in found}
    assert ("otel_cb.integrations._http_policy", "validate_settings") in {(m, n) for _, m, n in found}


def _runtime_imports(path: Path, package: str) -> set[str]:
    """Modules of otel_cb that ``path`` imports at run time (``TYPE_CHECKING`` blocks left out)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            if node.module:  # `from . import _scripts` needs the submodule, not its package's __init__
                found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("otel_cb")}


def test_otel_cb_has_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "otel_cb").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        graph[module] = _runtime_imports(path, module if is_package else ".".join(parts[:-1]))
    for module, imports in graph.items():
        # `from .. import CircuitBreaker` needs the package, not a cycle through everything it re-exports.
        graph[module] = {name for name in imports if name in graph and name != module and name != "otel_cb"}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module))]
    assert graph["otel_cb.plugin"] and not cycles, cycles[:3]


@pytest.mark.usefixtures("no_entry_points")
def test_asyncpg_serves_a_refusal_counted_refused(clock: FakeClock) -> None:
    from otel_cb.integrations import asyncpg as integration

    breaker = CircuitBreaker("db_refusal", clock=clock)
    otel_cb.instrument({}, plugins=[Serving(Refusal([]))])
    breaker.force_open()

    async def query() -> list[object]:
        raise AssertionError("a rejected call must not run")

    call = Call("db", "db:5432/app", method="fetch")
    assert asyncio.run(integration._protected(call, breaker, None, query())) == []
    assert breaker.snapshot().fallbacks == {"success": 0, "failure": 0, "refused": 1}


def test_config_check_rejects_a_malformed_integration_section(tmp_path: Path) -> None:
    config = tmp_path / "otel-cb.yaml"
    config.write_text("circuit_breakers:\n  catalog: {fallback: {type: {x: 1}}}\n")
    command = Path(sys.executable).parent / "otel-cb"
    result = subprocess.run([str(command), "config", "check", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert "circuit_breakers.catalog.fallback: {'type': {'x': 1}} is not allowed" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# -- attach_default_health_check -----------------------------------------------------


def test_a_default_health_check_is_made_once_per_breaker_and_never_replaces_the_users(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    from otel_cb.plugin import attach_default_health_check

    made: list[str] = []

    def default() -> bool:
        return True

    def make() -> Any:
        made.append("made")
        return default

    plain = CircuitBreaker("kit-default", CircuitBreakerConfig(), clock=clock)
    for _ in range(3):
        attach_default_health_check(plain, make)
    assert made == ["made"] and plain.health_check is default
    plain.attach_health_check(None)  # detached by the user: stays detached
    attach_default_health_check(plain, make)
    assert made == ["made"] and plain.health_check is None

    def mine() -> bool:
        return False

    own = CircuitBreaker("kit-own", CircuitBreakerConfig(), clock=clock, health_check=mine)
    attach_default_health_check(own, make)
    assert made == ["made"] and own.health_check is mine

    def broken() -> Any:
        raise RuntimeError("no")

    other = CircuitBreaker("kit-broken", CircuitBreakerConfig(), clock=clock)
    with caplog.at_level(logging.WARNING, logger="otel_cb"):
        attach_default_health_check(other, broken)
    assert other.health_check is None
    assert any("default health check of circuit breaker 'kit-broken'" in r.getMessage() for r in caplog.records)


# -- RouteMemo and listening ---------------------------------------------------------


def test_route_memo_routes_a_key_once_per_epoch_and_forgets_with_routing() -> None:
    from otel_cb.plugin import RouteMemo, routing_epoch

    otel_cb.instrument()
    try:
        memo: RouteMemo[str, int | None] = RouteMemo(limit=2)
        assert memo.get("a") is RouteMemo.MISS
        worked: list[str] = []
        assert memo.remember("a", lambda: worked.append("a") or 1) == 1
        assert memo.remember("b", lambda: None) is None
        assert memo.get("a") == 1 and memo.get("b") is None  # None is a route: unprotected
        assert worked == ["a"]
        memo.remember("c", lambda: 3)  # over the limit: starts afresh
        assert memo.get("a") is RouteMemo.MISS and memo.get("c") == 3
        epoch = routing_epoch()
        otel_cb.uninstrument()
        otel_cb.instrument()  # routing's memo, and so this one, forgotten
        assert routing_epoch() is not epoch
        assert memo.get("c") is RouteMemo.MISS
        memo.remember("c", lambda: 4)
        memo.clear()
        assert memo.get("c") is RouteMemo.MISS
    finally:
        otel_cb.uninstrument()
    assert memo.get("c") is RouteMemo.MISS


def test_listening_says_whether_a_per_call_hook_is_implemented() -> None:
    from otel_cb.plugin import hookimpl, listening

    assert not listening("otel_cb_classify")  # not instrumented

    class Classifier:
        @hookimpl
        def otel_cb_classify(self, call: object, result: object, exception: BaseException | None) -> str | None:
            return None

    otel_cb.instrument()
    try:
        classified = listening("otel_cb_classify")
    finally:
        otel_cb.uninstrument()
    otel_cb.instrument(plugins=[Classifier()])
    try:
        assert listening("otel_cb_classify") and not classified  # no installed plugin classifies
        assert not listening("otel_cb_select_breaker")  # not a per-call hook
    finally:
        otel_cb.uninstrument()


def test_routes_forget_a_breaker_removed_from_the_registry() -> None:
    # Routing memoises a breaker per destination, and integrations keep their
    # own route memos: a breaker removed by hand must not go on protecting
    # calls out of sight of the registry (the admin endpoint, telemetry).
    from otel_cb.plugin import RouteMemo, routing_epoch

    class Picker:
        @hookimpl
        def otel_cb_select_breaker(self, call: Call) -> str:
            return "picked"

    otel_cb.instrument({}, plugins=[Picker()])
    try:
        call = Call(kind="http", target="http://a:80", method="GET")
        first = _plugins.select_breaker(call)
        assert first is not None and otel_cb.registry.get("picked") is first
        memo: RouteMemo[str, CircuitBreaker | None] = RouteMemo()
        memo.remember("a", lambda: _plugins.select_breaker(call))
        epoch = routing_epoch()
        assert otel_cb.registry.remove("picked") is first
        assert routing_epoch() is not epoch and memo.get("a") is RouteMemo.MISS
        again = _plugins.select_breaker(call)
        assert again is not None and again is not first and otel_cb.registry.get("picked") is again
        epoch = routing_epoch()
        assert otel_cb.registry.remove("unknown") is None
        assert routing_epoch() is epoch  # nothing left: the routes stand
    finally:
        otel_cb.uninstrument()
    otel_cb.registry.add(CircuitBreaker("by_hand"))
    epoch = routing_epoch()
    otel_cb.registry.remove("by_hand")  # not instrumented: nothing to forget
    assert routing_epoch() is epoch
